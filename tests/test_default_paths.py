"""The default config, as a new user runs it: ``uqpot train`` with nothing but epochs and a batch size on a
molecule of at most 32 atoms, on a periodic cell, and on a molecule of more than 32 atoms (the dense layout's
limit).  ``train.compile: auto`` and ``train.layout: auto`` must resolve on every kind of input; a check that
reads the unresolved "auto" as "compile" refused the last two (issue: default-config regression)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.io import write


def _lj(atoms):
    atoms.calc = LennardJones(sigma=3.4, epsilon=0.0103, rc=6.0)
    atoms.get_potential_energy()
    atoms.get_forces()
    return atoms


def argon_cells(n=12, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))  # 32 atoms, periodic
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
        frames.append(_lj(a))
    return frames


def argon_cluster(n=12, atoms=40, seed=0):
    """A 40-atom argon cluster (no cell): a molecule above the dense layout's 32 atoms."""
    rng = np.random.default_rng(seed)
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(3)], float)[:atoms] * 3.8
    return [_lj(Atoms("Ar" * atoms, positions=grid + rng.normal(0.0, 0.05, grid.shape))) for _ in range(n)]


@pytest.mark.parametrize("kind", ["periodic_cell", "molecule_over_32_atoms"])
def test_default_config_trains(tmp_path, kind):
    frames = argon_cells() if kind == "periodic_cell" else argon_cluster()
    write(tmp_path / "data.extxyz", frames)
    cfg = {"out": str(tmp_path / "run"), "data": {"path": str(tmp_path / "data.extxyz"), "energy_unit": "eV"},
           "train": {"epochs": 2, "batch_size": 4}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "uqpot", "train", str(tmp_path / "cfg.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["training"]["compiled"] is False
    assert "edge list" in summary["training"]["compile_reason"]
    assert np.isfinite(summary["val"]["forces_mae"])
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["train"]["compile"] == "auto" and resolved["model"]["features"] == 128


def test_python_dash_m_and_short_help():
    for args in (["-h"], ["train", "-h"], ["data", "check", "-h"], ["--help"]):
        proc = subprocess.run([sys.executable, "-m", "uqpot", *args], capture_output=True, text=True)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stdout.startswith("Usage: uqpot"), args
