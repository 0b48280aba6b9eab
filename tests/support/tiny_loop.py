"""The tiny active-learning loop of the stopping-rule and final-model tests: 20 low-energy ammonia structures
to train on, 8 higher ones to test on, a two-member ensemble of a tiny PaiNN trained for 2 epochs, the MD
sampler, EMT as the oracle, and a stopping rule of 3 exploration trajectories of 10 steps at 300 K."""

from __future__ import annotations

import numpy as np

from uqpot.data.io import write_extxyz


def tiny_loop_files(tmp_path, ammonia):
    """(train, test) extxyz files in ``tmp_path`` from the ammonia reference set."""
    e = ammonia.energies()
    write_extxyz(ammonia.subset(np.nonzero(e < 5.0)[0][:20]), tmp_path / "train.extxyz")
    write_extxyz(ammonia.subset(np.nonzero(e >= 5.0)[0][:8]), tmp_path / "test.extxyz")
    return tmp_path / "train.extxyz", tmp_path / "test.extxyz"


def tiny_loop_config(tmp_path, files, name, until):
    """The loop config (a mapping) in ``tmp_path/name``, two generations, with ``until``'s settings added."""
    return {"seed": 0, "out": str(tmp_path / name), "system": "ammonia", "methods": ["ensemble"], "generations": 2,
            "data": {"train": str(files[0]), "test": str(files[1]), "align_structures": 2},
            "model": {"features": 8, "interactions": 1, "rbf": 8, "readout_hidden": 8},
            "uq": {"ensemble": {"members": 2}},
            "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "progress": False},
            "attack": {"n_seeds": 2, "energy_cutoff": None}, "sampler": "md",
            "sampling": {"replicas": 2, "steps": 10, "frame_every": 5, "trust_lo": 0.0, "trust_hi": 1e6},
            "store": str(tmp_path / "labels.db"),
            "until": {"replicas": 3, "steps": 10, "frame_every": 5, "temperatures_K": [300.0], **until},
            "oracle": {"name": "ase", "options": {"calculator": "ase.calculators.emt.EMT"}}}
