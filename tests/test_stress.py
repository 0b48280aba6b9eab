"""Stress σ = (1/V) ∂E/∂ε from the strain derivative, against ASE's finite-difference stress, for a trained
potential in float64 on an orthorhombic and a triclinic cell; the ensemble's committee stress variance; and
the methods without a stress say so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.lj import LennardJones
from conftest import silica_like

from uqpot.core import fields as F
from uqpot.train.config import TrainConfig
from uqpot.data.batch import collate
from uqpot.data.structures import Structure, StructureDataset
from uqpot.md.calculator import UQPotCalculator
from uqpot.nn.potential import Potential
from uqpot.train.trainer import Trainer
from uqpot.uq import build_method
from uqpot.uq.options import parse_uq

HP = dict(features=16, interactions=2, rbf=8, cutoff=4.0, readout_hidden=8)


def _labelled(n=16, seed=0):
    """Rattled, strained quartz cells labelled by ASE's Lennard-Jones (a real periodic reference)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        at = silica_like(seed=seed + k)
        at.set_cell(at.cell @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), scale_atoms=True)
        at.calc = LennardJones(sigma=2.0, epsilon=0.3, rc=4.0, smooth=True)
        s = Structure.from_atoms(at)
        s.energy, s.forces = float(at.get_potential_energy()), at.get_forces()
        out.append(s)
    return StructureDataset(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = _labelled()
    model = Potential(**HP, seeds=[0])
    model.fit_reference(data)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=5e-3, dtype="float64", progress=False, device="cpu")
    Trainer(model, data.subset(range(12)), data.subset(range(12, 16)), cfg, tmp_path_factory.mktemp("t")).fit()
    return model.to(torch.float64).eval()


def _cells():
    rng = np.random.default_rng(3)
    ortho = Atoms(numbers=[14] * 3 + [8] * 6, scaled_positions=rng.uniform(0, 1, (9, 3)),
                  cell=np.diag([5.1, 5.4, 5.8]), pbc=True)
    tri = silica_like(seed=5)
    tri.set_cell(np.array([[4.9, 0.0, 0.0], [-2.2, 4.3, 0.0], [0.4, 0.3, 5.4]]), scale_atoms=True)
    return {"orthorhombic": ortho, "triclinic": tri}


@pytest.mark.parametrize("cell", ["orthorhombic", "triclinic"])
def test_stress_equals_ase_finite_differences(trained, cell):
    atoms = _cells()[cell]
    atoms.calc = UQPotCalculator(trained)
    analytic = atoms.get_stress()
    numeric = atoms.calc.calculate_numerical_stress(atoms, d=1e-5)
    assert np.abs(numeric).max() > 1e-4  # a stress worth checking
    assert np.abs(analytic - numeric).max() <= 1e-4 * np.abs(numeric).max()
    # the forces of the stress pass are the forces
    b = collate([Structure.from_atoms(atoms)], cutoff=trained.cutoff, dtype=torch.float64)
    torch.testing.assert_close(trained(b, compute_stress=True)[F.FORCES], trained(b)[F.FORCES], rtol=1e-12,
                               atol=1e-12)


def test_ensemble_gives_committee_stress_and_variance(trained):
    ens = build_method(parse_uq({"method": "ensemble", "members": 3}), {**HP, "members": 3, "seeds": [0, 1, 2]})
    ens = ens.to(torch.float64).eval()
    ens.fit_reference(_labelled(4))
    atoms = _cells()["triclinic"]
    b = collate([Structure.from_atoms(atoms)], cutoff=4.0, dtype=torch.float64)
    out = ens(b, compute_stress=True)
    members = out[F.STRESS_MEMBERS][:, 0]
    torch.testing.assert_close(out[F.STRESS][0], members.mean(0))
    torch.testing.assert_close(out[F.STRESS_VARIANCE][0], members.var(0, correction=1))
    assert float(out[F.STRESS_VARIANCE].max()) > 0
    atoms.calc = UQPotCalculator(ens)
    atoms.calc.calculate(atoms, ["energy", "forces", "stress"])
    assert atoms.calc.results[F.STRESS_VARIANCE].shape == (6,)


def test_methods_without_stress_say_so(trained, tmp_path):
    gmm = build_method(parse_uq({"method": "mve"}), {**HP, "members": 1, "seeds": [0]}).to(torch.float64).eval()
    atoms = _cells()["orthorhombic"]
    atoms.calc = UQPotCalculator(gmm)
    with pytest.raises(PropertyNotImplementedError, match="mve gives no stress"):
        atoms.get_stress()
    mol = Atoms("SiO2", positions=[[0, 0, 0], [1.6, 0, 0], [-1.6, 0, 0]])
    mol.calc = UQPotCalculator(trained)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        mol.get_stress()


# ------------------------------------------------------------------ reading stress: units, virials, bad input
def _frame(stress=None, pbc=True, info=None):
    from ase.calculators.singlepoint import SinglePointCalculator

    a = silica_like()
    if not pbc:
        a.pbc, a.cell = False, np.zeros((3, 3))
    kw = {"energy": -10.0, "forces": np.zeros((9, 3))}
    if stress is not None:
        kw["stress"] = stress
    a.calc = SinglePointCalculator(a, **kw)
    a.info.update(info or {})
    return a


def test_stress_is_read_in_kcal_per_mol_per_cubic_angstrom(tmp_path):
    from ase.io import write

    from uqpot.data.io import ReadOptions, read_structures
    from uqpot.core.units import EV_TO_KCAL_PER_MOL

    voigt = np.array([0.1, 0.2, 0.3, 0.01, 0.02, 0.03])  # eV/Å³, ASE's order xx yy zz yz xz xy
    virial = _frame()
    virial.info["virial"] = np.diag([5.0, 6.0, 7.0]).ravel()  # eV: W = −σV
    write(tmp_path / "s.extxyz", [_frame(voigt), virial])
    d = read_structures(tmp_path / "s.extxyz", ReadOptions(energy_unit="eV"))
    expect = np.array([[0.1, 0.03, 0.02], [0.03, 0.2, 0.01], [0.02, 0.01, 0.3]]) * EV_TO_KCAL_PER_MOL
    np.testing.assert_allclose(d[0].stress, expect, rtol=1e-12)
    vol = abs(np.linalg.det(virial.cell.array))
    np.testing.assert_allclose(np.diag(d[1].stress), -np.array([5.0, 6.0, 7.0]) / vol * EV_TO_KCAL_PER_MOL,
                               rtol=1e-12)
    back = d[0].to_atoms()  # and written back in ASE's Voigt order
    np.testing.assert_allclose(back.calc.results["stress"], voigt * EV_TO_KCAL_PER_MOL, rtol=1e-12)


@pytest.mark.parametrize("case, message", [
    ("nan", "field 'stress': non-finite stress (NaN/inf) in component(s) yy"),
    ("molecule", "field 'stress': stress on a frame without a periodic cell"),
    ("shape", "field 'my_stress': stress has shape (4,); expected 3x3, or 6 (Voigt) or 9 values"),
])
def test_bad_stress_is_one_line_naming_file_frame_field(tmp_path, case, message):
    from ase.io import write
    from support.badinput import assert_user_error, cli

    good = _frame(np.zeros(6))
    bad = {"nan": lambda: _frame(np.array([0.1, np.nan, 0.3, 0.0, 0.0, 0.0])),
           "molecule": lambda: _frame(np.zeros(6), pbc=False),
           "shape": lambda: _frame(info={"my_stress": np.array([1.0, 2.0, 3.0, 4.0])})}[case]()
    path = tmp_path / "bad.extxyz"
    write(path, [good, bad] + [good] * 23)
    if case == "shape":
        from uqpot.data.io import ReadOptions, read_structures
        from uqpot.core.errors import DataError

        with pytest.raises(DataError) as exc:
            read_structures(path, ReadOptions(energy_unit="eV", stress_key="my_stress"))
        assert f"{path}: frame 1: {message}" in str(exc.value)
        return
    r = cli("data", "check", str(path), "--energy-unit", "eV")
    assert_user_error(r, f"{path}: frame 1: {message}", lines=2)  # the problem, and the count of problems
    from support.badinput import tiny_config

    r = cli("train", tiny_config(tmp_path, path))  # training: the one line, nothing written
    assert_user_error(r, f"{path}: frame 1: {message}", nothing_in=tmp_path / "run")


def test_ase_npt_runs_a_uqpot_potential(trained):
    """ASE's MTK barostat (full cell fluctuations) drives the cell of a uqpot potential through its stress."""
    from ase import units
    from ase.md.nose_hoover_chain import MTKNPT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = silica_like(n_cells=(1, 1, 1), seed=2)
    atoms.calc = UQPotCalculator(trained)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    v0 = atoms.get_volume()
    dyn = MTKNPT(atoms, timestep=0.5 * units.fs, temperature_K=300, pressure_au=1.0 * units.GPa,
                 tdamp=50 * units.fs, pdamp=500 * units.fs)
    dyn.run(20)
    assert np.isfinite(atoms.positions).all() and np.isfinite(atoms.get_stress()).all()
    assert atoms.get_volume() != pytest.approx(v0, rel=1e-9)  # the barostat moved the cell


def test_training_on_stress_reports_stress_mae(tmp_path):
    """Stress labels: the default weight trains on them (resolved to 1 and recorded), and the summary has the
    stress MAE; an explicit weight for data without stress is refused."""
    from uqpot.nn.painn import PaiNNOptions as ModelConfig
    from uqpot.core.errors import ConfigError
    from uqpot.train.losses import resolve_stress_weight
    from uqpot.fit.run import fit_model

    data = _labelled(12)
    for s in data.structures:  # a stress from the same reference (ASE's LJ gives it)
        at = s.to_atoms()
        at.calc = LennardJones(sigma=2.0, epsilon=0.3, rc=4.0, smooth=True)
        s.stress = at.get_stress(voigt=False)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=5e-3, progress=False, device="cpu")
    assert resolve_stress_weight(cfg, data).stress_weight == 1.0
    summary = fit_model(ModelConfig(**{k: v for k, v in HP.items()}), parse_uq({"method": "none"}), cfg, 0,
                        data.subset(range(8)), data.subset(range(8, 10)), data.subset(range(10, 12)), tmp_path / "r")
    assert np.isfinite(summary["test"]["stress_mae"]) and summary["test"]["stress_mae"] > 0
    for s in data.structures:
        s.stress = None
    with pytest.raises(ConfigError, match="train.stress_weight: 2, but the training structures carry no stress"):
        resolve_stress_weight(cfg.model_copy(update={"stress_weight": 2.0}), data)
    assert resolve_stress_weight(cfg, data).stress_weight == 0.0


def test_oracle_stress_is_labelled_stored_and_reloaded(tmp_path):
    """An ASE oracle whose calculator gives a stress labels periodic structures with it (kcal/mol/Å³); the
    store keeps it; molecules get none."""
    from ase.build import molecule

    from uqpot.data.store import Store
    from uqpot.oracle.ase import ASEOracle
    from uqpot.core.units import EV_TO_KCAL_PER_MOL

    oracle = ASEOracle("ase.calculators.lj.LennardJones", {"sigma": 2.0, "epsilon": 0.3, "rc": 4.0},
                       method="lj-test")
    cell = silica_like(seed=9)
    ref = cell.copy()
    ref.calc = LennardJones(sigma=2.0, epsilon=0.3, rc=4.0)
    store = Store(tmp_path / "labels.db")
    res = oracle.label([Structure.from_atoms(cell), Structure.from_atoms(molecule("H2O"))], store=store)
    periodic, mol = res.structures
    np.testing.assert_allclose(periodic.stress, ref.get_stress(voigt=False) * EV_TO_KCAL_PER_MOL, rtol=1e-10)
    assert mol.stress is None
    again = Store(tmp_path / "labels.db").get(Structure.from_atoms(cell), "lj-test")
    np.testing.assert_allclose(again.stress, periodic.stress, rtol=1e-12)
    calls = oracle.calls
    oracle.label([Structure.from_atoms(cell)], store=store)  # from the store, stress included, no new call
    assert oracle.calls == calls


def test_llpr_stress_variance_equals_its_formula(trained):
    """LLPR's σ²_σ,ab = α²·(∂f/∂ε_ab)ᵀ Σ (∂f/∂ε_ab) / V², with ∂f/∂ε by central differences of the summed
    last-layer features under the symmetric strain (ASE's deformation)."""
    from uqpot.uq import METHODS
    from uqpot.fit.wrap import fit_and_calibrate

    data = _labelled(12, seed=3)
    llpr = METHODS["llpr"].wrap(trained, parse_uq({"method": "llpr"}))
    fit_and_calibrate(llpr, data.subset(range(8)), data.subset(range(8, 12)), batch_size=4)
    llpr.eval()
    atoms = _cells()["triclinic"]
    s = Structure.from_atoms(atoms)
    b = collate([s], cutoff=4.0, dtype=torch.float64)
    out = llpr(b, compute_stress=True)
    torch.testing.assert_close(out[F.STRESS], trained(b, compute_stress=True)[F.STRESS])

    def f_of(x):
        st = Structure(s.numbers, s.positions @ x, s.cell @ x, s.pbc)
        bb = collate([st], cutoff=4.0, dtype=torch.float64)
        o = {k: v.squeeze(0) for k, v in trained.forward_members(bb, compute_forces=False).items()}
        return llpr.last_layer_features(o).sum(0).detach().double()

    sigma = llpr.llpr_alpha2 * llpr.llpr_inverse
    vol = abs(np.linalg.det(s.cell))
    d = 1e-5
    expect = np.zeros((3, 3))
    for a in range(3):
        for c in range(3):
            e = np.zeros((3, 3))
            e[a, c] += d / 2
            e[c, a] += d / 2
            df = (f_of(np.eye(3) + e) - f_of(np.eye(3) - e)) / (2 * d)
            expect[a, c] = float(df @ sigma @ df) / vol ** 2
    np.testing.assert_allclose(out[F.STRESS_VARIANCE][0].detach().numpy(), expect, rtol=1e-5)
    assert expect.max() > 0


def test_npt_campaign_moves_the_cell_towards_the_set_pressure(trained):
    """`ensemble: npt` runs the stability campaign on ASE's MTK barostat (the engine chosen for it); a cell
    under +5 GPa ends smaller than the same start under -5 GPa, and the pressure/volume traces are recorded
    in bar and Å³; the batched engine and non-periodic starts are refused."""
    from uqpot.md.campaign import CampaignConfig, run_campaign

    start = silica_like(n_cells=(1, 1, 1), seed=2)
    base = dict(system="custom", runs=1, temperatures_K=[300.0], duration_fs=60.0, timestep_fs=0.5,
                record_every=5, ensemble="npt", tdamp_fs=20.0, pdamp_fs=40.0, dtype="float64")
    res = {}
    for p in (5e4, -5e4):
        res[p] = run_campaign(CampaignConfig(**base, pressure_bar=p), trained, [start])
        assert res[p].engine == "ase"
    rec_hi, rec_lo = res[5e4].replicas[0], res[-5e4].replicas[0]
    assert len(rec_hi.pressure) == len(rec_hi.record_steps) == 25 and len(rec_hi.volume) == 25
    assert rec_hi.volume[0] == pytest.approx(start.get_volume())
    assert rec_hi.volume[-1] < rec_hi.volume[0] < rec_lo.volume[-1]
    npt = res[5e4].summary()["npt"]
    assert npt["target_bar"] == 5e4 and npt["volume_change_percent"] < 0 and npt["samples"] == 13
    d = res[5e4].to_dict()["replicas"][0]
    assert len(d["pressure_bar"]) == 25 and d["volume_A3"][0] == pytest.approx(start.get_volume())
    with pytest.raises(ValueError, match="runs on the 'ase' engine"):
        run_campaign(CampaignConfig(**base), trained, [start], engine="batched")
    molecule = start.copy()
    molecule.pbc = False
    with pytest.raises(ValueError, match="periodic in all three"):
        run_campaign(CampaignConfig(**base), trained, [molecule])
