"""Shared fixtures.  Reference data sets live in ``../shared/data`` beside the checkout; tests that need
them skip with a clear reason where that folder is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ETHANOL = SHARED_DATA / "rmd17_ethanol_800.extxyz"
AMMONIA = SHARED_DATA / "ammonia_public.extxyz"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"reference data {path.name} not found in {path.parent} (the shared data folder beside "
                    "the checkout)")
    return path


@pytest.fixture(scope="session")
def ethanol_path() -> Path:
    return need(ETHANOL)


@pytest.fixture(scope="session")
def ammonia_path() -> Path:
    return need(AMMONIA)


@pytest.fixture(scope="session")
def ethanol(ethanol_path):
    from uqpot.data.io import read_structures

    return read_structures(ethanol_path)


@pytest.fixture(scope="session")
def ammonia(ammonia_path):
    from uqpot.data.io import read_structures

    return read_structures(ammonia_path)


def silica_like(n_cells=(1, 1, 1), seed=0, rattle=0.05):
    """α-quartz-like SiO2 cell (9 atoms, a = 4.91 Å, c = 5.40 Å), repeated and rattled: a periodic test
    system whose cell is smaller than twice the 5 Å cutoff."""
    from ase.spacegroup import crystal

    quartz = crystal(["Si", "O"], basis=[(0.4697, 0.0, 2.0 / 3.0), (0.4135, 0.2669, 0.1191 - 1.0 / 3.0)],
                     spacegroup=154, cellpar=[4.916, 4.916, 5.405, 90, 90, 120])
    atoms = quartz.repeat(n_cells)
    atoms.rattle(rattle, seed=seed)
    return atoms


@pytest.fixture
def rng():
    return np.random.default_rng(0)
