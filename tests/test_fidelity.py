"""The study follows the paper where uqpot used to depart from it silently: every method of a study trains on
the same labels (SI Eq. 1), the attack starts from the initial data and measures Eq. 16 against it,
ammonia's MD floor is the optimised minimum, and the MD starts from every initial structure (silica: the
2500 K frames, loudly otherwise)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.optimize import BFGS

from uqpot.data.io import write_extxyz
from uqpot.data.store import Store
from uqpot.data.structures import Structure, StructureDataset
from uqpot.core.errors import ConfigError
from uqpot.md.analytic import MorseCalculator, MorsePotential
from uqpot.md.neb import nh3_pyramid
from uqpot.oracle.ase import ASEOracle
from uqpot.loop.active_learning import ActiveLearning, LoopConfig
from uqpot.loop.md import nh3_minimum, run_campaign_for_loop, start_structures
from uqpot.loop.replicates import run_loop

from conftest import silica_like

LJ = {"calculator": "ase.calculators.lj.LennardJones", "kwargs": {"sigma": 2.0, "epsilon": 0.3, "rc": 4.0}}


def _labelled_cells(path, n, seed):
    oracle = ASEOracle(LJ["calculator"], LJ["kwargs"])
    cells = [Structure.from_atoms(silica_like(seed=seed + k, rattle=0.08)) for k in range(n)]
    res = oracle.label(cells)
    assert all(s is not None and s.stress is not None for s in res.structures)
    write_extxyz(StructureDataset(res.structures), path)
    return path


@pytest.fixture(scope="module")
def stress_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stress")
    return _labelled_cells(d / "train.extxyz", 10, 0), _labelled_cells(d / "test.extxyz", 4, 100)


def _loop(tmp_path, files, methods, **train):
    return LoopConfig.model_validate({
        "seed": 0, "out": str(tmp_path / "loop"), "methods": list(methods), "generations": 1,
        "data": {"train": str(files[0]), "test": str(files[1]), "align_energies": False},
        "model": {"features": 8, "interactions": 1, "rbf": 6, "readout_hidden": 4, "cutoff": 4.0},
        "uq": {"ensemble": {"members": 2}, "gmm": {"candidates": [1]}},
        "train": {"epochs": 1, "batch_size": 4, "progress": False, **train},
        "oracle": {"name": "ase", "options": LJ}})


def _targets(out, method):
    return json.loads((out / "gen1" / method / "train" / "summary.json").read_text())["training"]["loss_targets"]


def test_every_method_of_a_study_trains_on_the_same_labels(tmp_path, stress_files):
    """Stress-carrying cells: with MVE in the study nobody trains on the stress (SI Eq. 1); without a method
    that cannot, everybody does; a stress weight that MVE cannot honour is refused before anything is written."""
    run_loop(ActiveLearning(_loop(tmp_path / "a", stress_files, ["ensemble", "mve", "gmm"])))
    out = tmp_path / "a" / "loop"
    targets = {m: _targets(out, m) for m in ("ensemble", "mve", "gmm")}
    assert len({tuple(t) for t in targets.values()}) == 1, targets
    assert targets["ensemble"] == ["energy", "forces"]
    run = json.loads((out / "run.json").read_text())
    assert run["stress_weight"] == 0.0 and "cannot train on it" in run["objective"] and "mve" in run["objective"]

    run_loop(ActiveLearning(_loop(tmp_path / "b", stress_files, ["ensemble", "gmm"])))
    out = tmp_path / "b" / "loop"
    assert _targets(out, "ensemble") == _targets(out, "gmm") == ["energy", "forces", "stress"]

    with pytest.raises(ConfigError, match="mve cannot train on a stress"):
        run_loop(ActiveLearning(_loop(tmp_path / "c", stress_files, ["ensemble", "mve"], stress_weight=1.0)))
    assert not (tmp_path / "c" / "loop").exists()


def test_attack_pool_is_the_initial_data_unless_asked(tmp_path, stress_files):
    """Sec. 2.4 / Eq. 16: starting structures and partition function from the initial training data (all of
    it, training and validation pools), not from a generation's split with earlier samples in it."""
    al = ActiveLearning(_loop(tmp_path, stress_files, ["ensemble"]))
    al.prepare()
    train0, val0, *_ = al.initial_data()
    grown = train0 + StructureDataset([train0[0]])  # a later generation's split
    pool = al.attack_pool(grown)
    assert len(pool) == len(train0) + len(val0) == 10
    assert sorted(s.frame for s in pool) == sorted(s.frame for s in train0 + val0)
    current = ActiveLearning(_loop(tmp_path, stress_files, ["ensemble"]).model_copy(
        update={"attack": _loop(tmp_path, stress_files, ["ensemble"]).attack.model_copy(
            update={"seed_pool": "current"})}))
    assert current.attack_pool(grown) is grown


# ------------------------------------------------------------------------- ammonia's ground state
def _morse_minimum() -> float:
    atoms = nh3_pyramid()
    atoms.calc = MorseCalculator()
    BFGS(atoms, logfile=None).run(fmax=1e-5)
    return float(atoms.get_potential_energy()) * 23.060547830619026  # eV -> kcal/mol


def test_nh3_minimum_is_the_optimised_minimum(tmp_path):
    oracle = ASEOracle("uqpot.md.analytic.MorseCalculator", {})
    rec = nh3_minimum(oracle, Store(tmp_path / "labels.db"))
    assert rec["energy"] == pytest.approx(_morse_minimum(), abs=2e-3)
    assert 0.95 < rec["r_NH"] < 1.08 and rec["oracle_labels"] > 5
    calls = oracle.calls
    assert nh3_minimum(oracle, Store(tmp_path / "labels.db"))["energy"] == rec["energy"]
    assert oracle.calls == calls  # the second time every point comes from the store


def test_md_floor_is_the_optimised_minimum_not_the_training_split(tmp_path):
    """A split without the minimum put the floor above it: a correct (exact) NH3 potential at 300 K then
    'falls below the ground state'.  With the optimised minimum no trajectory of the exact potential fails."""
    model = MorsePotential()
    e_min = _morse_minimum()
    starts = []
    for k in range(4):  # displaced geometries only: the lowest lies well above the minimum
        a = nh3_pyramid()
        a.calc = MorseCalculator()
        a.rattle(0.05, seed=k)
        starts.append(Structure.from_atoms(a, energy=float(a.get_potential_energy()) * 23.060547830619026))
    assert min(s.energy for s in starts) > e_min + 0.3
    md = {"runs": 4, "temperatures_K": [300.0], "duration_fs": 300.0, "check_every": 10, "record_every": 10}
    good = run_campaign_for_loop(model, starts, md, "ammonia", tmp_path / "opt", ground_state=e_min)
    assert good["fraction_stable"] == 1.0 and good["ground_state_energy"] == e_min, good["per_temperature"]
    old = run_campaign_for_loop(model, starts, {**md, "ground_state_energy": "min_start"}, "ammonia",
                                tmp_path / "split")
    reasons = old["per_temperature"]["300"]["failure_reasons"]
    assert reasons.get("below_ground_state", 0) >= 1, old["per_temperature"]
    with pytest.raises(ValueError, match="optimised minimum"):
        run_campaign_for_loop(model, starts, md, "ammonia", tmp_path / "none")


def test_md_starts_from_every_initial_structure_and_silica_falls_back_loudly():
    mols = [Structure.from_atoms(nh3_pyramid(), energy=0.0) for _ in range(5)]
    starts, pool = start_structures(mols, "ammonia")
    assert len(starts) == 5 and "every initial structure (5)" in pool
    cells = [Structure.from_atoms(silica_like(seed=k)) for k in range(4)]
    cells[1].info["condition"] = "2500 K"
    starts, pool = start_structures(cells, "silica")
    assert starts == [cells[1]] and "2500 K" in pool
    for c in cells:
        c.info.pop("condition", None)
    starts, pool = start_structures(cells, "silica")
    assert len(starts) == 4 and pool.startswith("warning: no initial structure carries the 2500 K label")


def test_trial_attack_directions_do_not_depend_on_the_chunking(tmp_path, stress_files):
    """The silica test set's trial adversarial runs attack their seeds in chunks of at most
    ``max_atoms_per_batch`` atoms (memory); each seed's ascent is its own, so the directions are those of
    one batch, to float rounding."""
    from uqpot.data.io import read_structures
    from uqpot.systems.silica.trial_attack import TrialAttack, adversarial_directions

    train = list(read_structures(stress_files[0]))
    small = dict(epochs=1, n_seeds=4, iterations=5, features=8, members=2, batch_size=4)
    one = adversarial_directions(train, tmp_path / "one", TrialAttack(**small, max_atoms_per_batch=10_000))
    each = adversarial_directions(train, tmp_path / "each", TrialAttack(**small, max_atoms_per_batch=9))
    assert [k for k, _ in one] == [k for k, _ in each] and len(one) == 4
    for (_, a), (_, b) in zip(one, each):
        assert np.abs(a).max() > 1e-4 and np.allclose(a, b, atol=1e-5)
