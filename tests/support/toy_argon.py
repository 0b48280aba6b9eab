"""A toy system for tests: four argon atoms 3.8 Å apart (with 0.1 Å noise), labelled by whatever oracle the
test passes (ASE's Lennard-Jones in the tests).  Subclass :class:`ArgonClusters` with a name, a ``config``
(n_train, n_test, seed) and criteria, and register it for the test module."""

from __future__ import annotations

import json

import numpy as np

from uqpot.data.io import write_extxyz
from uqpot.data.sets._build import Labeller
from uqpot.data.store import open_store
from uqpot.data.structures import Structure, StructureDataset
from uqpot.systems import System

LJ = {"calculator": "ase.calculators.lj.LennardJones", "kwargs": {"sigma": 3.4, "epsilon": 0.0104}}


def argon_cluster(rng) -> Structure:
    x = np.array([[0, 0, 0], [3.8, 0, 0], [0, 3.8, 0], [0, 0, 3.8]], float) + rng.normal(0, 0.1, (4, 3))
    return Structure(numbers=np.full(4, 18), positions=x, cell=np.zeros((3, 3)), pbc=np.zeros(3, bool))


class ArgonClusters(System):
    """The build every toy argon system shares: ``config.n_train`` and ``config.n_test`` clusters labelled
    through the label store; a short, cold MD preset."""

    md_preset = dict(runs=2, temperatures_K=[50.0], duration_fs=20.0, timestep_fs=1.0, skin=1.0)
    energy_floor = False

    def build(self, out, *, config, oracle, store=None, executor=None, console=None, progress=True):
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(config.seed)
        lab = Labeller(oracle, open_store(store or out / "labels.db"), "toy", executor=executor)
        for part, n in (("train", config.n_train), ("test", config.n_test)):
            done, _ = lab([argon_cluster(rng) for _ in range(n)], part)
            write_extxyz(StructureDataset(done), out / f"{part}.extxyz")
        summary = {"dataset": self.name, "train": {"n": config.n_train}, "test": {"n": config.n_test}}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary
