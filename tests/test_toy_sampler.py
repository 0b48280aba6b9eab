"""A new sampler is one file: this module defines and registers a toy sampler (random displacements of
structures of the pool, with its own settings) and runs an active-learning loop with it (config
``sampler: toy_random``), with no other file of uqpot changed: the loop labels its candidates with a real
oracle (ASE's EMT), stores them and trains the next generation on them.  Then the contract every registered
sampler keeps."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from pydantic import Field

from uqpot.data.io import ReadOptions, read_structures, write_extxyz
from uqpot.data.store import Store
from uqpot.data.structures import Structure, StructureDataset
from uqpot.md.analytic import MorsePotential
from uqpot.md.neb import nh3_pyramid
from uqpot.core.provenance import write_json
from uqpot.sample import (SAMPLERS, AttackSettings, Proposal, Sampler, SamplingContext, SamplingSettings,
                          register_sampler, sampler_names)
from uqpot.sample.trust import Calibration
from uqpot.core.schema import Strict
from uqpot.loop.active_learning import ActiveLearning
from uqpot.loop.config import LoopConfig
from uqpot.loop.replicates import run_loop


# ------------------------------------------------------------------------------------------- the sampler
class ToySettings(Strict):
    n_candidates: int = Field(3, ge=1)
    scale: float = Field(0.03, gt=0.0)  # Å, the standard deviation of each displacement component


class ToyRandom(Sampler):
    """``n_candidates`` structures of the pool, each displaced by Gaussian noise of ``scale`` Å (no model)."""

    settings = ToySettings

    def propose(self, ctx: SamplingContext) -> Proposal:
        cfg = ctx.settings
        rng = np.random.default_rng(ctx.seed)
        idx = rng.choice(len(ctx.pool), size=min(cfg.n_candidates, len(ctx.pool)), replace=False)
        out, shifts = [], []
        for k in idx:
            s = ctx.pool[int(k)]
            d = rng.normal(0.0, cfg.scale, s.positions.shape)
            t = Structure(s.numbers.copy(), s.positions + d, s.cell.copy(), s.pbc.copy())
            t.info = {"sampler": "toy_random", "source_frame": s.frame if s.frame is not None else -1}
            out.append(t)
            shifts.append(float(np.abs(d).max()))
        return Proposal(out, {"sampler": "toy_random", "n_candidates": len(out), "pool_size": len(ctx.pool)},
                        {"max_displacement": np.array(shifts)}, f"toy_random gave {len(out)} candidates")


@pytest.fixture(autouse=True)
def toy_registered():
    """``@register_sampler("toy_random")`` for the tests of this module (taken out again after each, so that
    other tests see the built-in samplers only)."""
    register_sampler("toy_random")(ToyRandom)
    yield
    SAMPLERS.pop("toy_random", None)


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def ammonia_files(tmp_path, ammonia):
    e = ammonia.energies()
    write_extxyz(ammonia.subset(np.nonzero(e < 5.0)[0][:20]), tmp_path / "train.extxyz")
    write_extxyz(ammonia.subset(np.nonzero(e >= 5.0)[0][:8]), tmp_path / "test.extxyz")
    return tmp_path / "train.extxyz", tmp_path / "test.extxyz"


def test_a_loop_with_the_toy_sampler(tmp_path, ammonia_files):
    raw = {"seed": 0, "out": str(tmp_path / "loop"), "system": "ammonia", "methods": ["ensemble"], "generations": 2,
           "data": {"train": str(ammonia_files[0]), "test": str(ammonia_files[1]), "align_structures": 2},
           "model": {"features": 8, "interactions": 1, "rbf": 8, "readout_hidden": 8},
           "uq": {"ensemble": {"members": 2}},
           "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "progress": False},
           "attack": {"n_seeds": 4, "energy_cutoff": None},
           "sampler": "toy_random",
           "oracle": {"name": "ase", "options": {"calculator": "ase.calculators.emt.EMT"}}}
    cfg = LoopConfig.model_validate(raw)
    al = ActiveLearning(cfg)
    summary = run_loop(al)
    att, lab = summary["generations"][1]["ensemble"]["attack"], summary["generations"][1]["ensemble"]["label"]
    assert att == {"sampler": "toy_random", "n_candidates": 3, "pool_size": 20}  # the toy's own record
    d = tmp_path / "loop" / "gen1" / "ensemble" / "attack"
    cand = read_structures(d / "candidates.extxyz", ReadOptions(require_energy=False, require_forces=False,
                                                                min_distance=0.0))
    assert len(cand) == 3 and {s.info["sampler"] for s in cand} == {"toy_random"}
    assert np.load(d / "history.npz")["max_displacement"].shape == (3,)
    # labelled by the oracle, through the store, and trained on in generation 2
    assert lab["n_candidates"] == 3 and lab["n_added"] == 3 and lab["n_failed"] == 0
    added = read_structures(d / "labelled.extxyz")
    assert len(added) == 3 and {s.info["sampler"] for s in added} == {"toy_random"}
    assert Store(tmp_path / "loop" / "labels.db").count(status="ok") == al.oracle.calls
    g1, g2 = summary["generations"][1]["ensemble"], summary["generations"][2]["ensemble"]
    assert g2["n_train"] + g2["n_val"] == g1["n_train"] + g1["n_val"] + 3
    assert "toy_random gave 3 candidates" in (tmp_path / "loop" / "loop.log").read_text()
    # a rerun repeats nothing
    al2 = ActiveLearning(LoopConfig.model_validate(raw))
    run_loop(al2)
    assert al2._oracle is None or al2.oracle.calls == 0


# ------------------------------------------------------------------------------------------- the contract
@dataclass
class _Context(SamplingContext):
    def calibration(self):  # no model file: σ² = U
        return Calibration(1.0, 0.0)


#: small settings for the built-in samplers (a sampler not named here runs with its defaults)
SMALL = {"adversarial": AttackSettings(iterations=3, n_seeds=2, lr=0.01, energy_cutoff=None),
         "md": SamplingSettings(trust_lo=0.0, trust_hi=1e9, replicas=2, steps=20, frame_every=5, max_candidates=2),
         "biased_md": SamplingSettings(trust_lo=0.0, trust_hi=1e9, replicas=2, steps=20, frame_every=5,
                                       max_candidates=2, bias_strength=1.0, bias_width=10.0)}


def _pool(n=5):
    out = []
    for k in range(n):
        a = nh3_pyramid()
        a.rattle(0.05, seed=k)
        s = Structure.from_atoms(a)
        s.energy, s.frame = -1.0 * k, k
        out.append(s)
    return StructureDataset(out)


def _context(name: str) -> SamplingContext:
    model = MorsePotential(with_uncertainty=True)
    model.signed_uncertainty, model.needs_forces_for_uncertainty = False, True
    return _Context(model=model, model_file=None, method="ensemble", pool=_pool(), seed=3,
                    settings=SMALL.get(name) or SAMPLERS[name].settings(), energy_cutoff=None, budget=2, kT=0.7,
                    md_preset={"temperatures_K": [300.0], "timestep_fs": 0.5})


@pytest.mark.parametrize("name", list(dict.fromkeys([*sampler_names(), "toy_random"])))
def test_sampler_contract(name, tmp_path):
    """Every registered sampler: settings a Strict model with defaults, kept in a loop config section of
    that type (or none); ``propose`` gives unlabelled structures with ``info``, a JSON-able record, arrays for
    the history, one log line, and the same candidates for the same context."""
    cls = SAMPLERS[name]
    assert cls.name == name and issubclass(cls.settings, Strict)
    cls.settings()  # every setting has a default
    if cls.section is not None:
        assert LoopConfig.model_fields[cls.section].annotation is cls.settings
    a, b = (cls().propose(_context(name)) for _ in range(2))
    assert isinstance(a, Proposal) and isinstance(a.record, dict) and isinstance(a.message, str) and a.message
    assert all(isinstance(s, Structure) and isinstance(s.info, dict) and s.info for s in a.candidates)
    assert all(s.energy is None and s.forces is None for s in a.candidates)
    write_json(tmp_path / "record.json", a.record)
    assert isinstance(json.loads((tmp_path / "record.json").read_text()), dict)
    np.savez(tmp_path / "history.npz", **a.history)
    assert len(a.candidates) == len(b.candidates)
    for s, t in zip(a.candidates, b.candidates):
        assert np.array_equal(s.positions, t.positions)
