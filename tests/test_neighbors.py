"""Neighbour lists (vesin) against ASE's reference implementation."""

import numpy as np
import pytest
from ase.neighborlist import neighbor_list as ase_nl

from uqpot.data.neighbors import neighbor_list, pair_vectors
from conftest import silica_like


def _pairs(i, j, S):
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, np.asarray(S).tolist())))


@pytest.mark.parametrize("repeat", [(1, 1, 1), (2, 2, 2), (1, 1, 2)])
def test_periodic_lists_match_ase(repeat):
    atoms = silica_like(repeat, seed=1)
    assert min(atoms.cell.lengths()) < 2 * 5.0 or repeat == (2, 2, 2)
    i, j, S = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    ai, aj, aS = ase_nl("ijS", atoms, 5.0)
    assert _pairs(i, j, S) == _pairs(ai, aj, aS)
    d = np.linalg.norm(pair_vectors(atoms.positions, atoms.cell.array, i, j, S), axis=1)
    assert d.max() < 5.0 and d.min() > 0.5


def test_small_cell_sees_own_images():
    atoms = silica_like((1, 1, 1))
    i, j, S = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    self_images = (i == j)
    assert self_images.any() and np.all(np.abs(S[self_images]).sum(1) > 0)
    ai, aj, aS = ase_nl("ijS", atoms, 5.0)
    assert len(i) == len(ai)


def test_molecule_full_list_and_no_self_pairs(ethanol):
    s = ethanol[0]
    i, j, S = neighbor_list(s.positions, s.cell, s.pbc, 5.0)
    assert len(i) == 9 * 8  # every pair of ethanol's atoms lies within 5 Å
    assert not np.any(i == j) and not S.any()
    d = np.linalg.norm(s.positions[:, None] - s.positions[None], axis=-1)
    expected = {(a, b) for a in range(9) for b in range(9) if a != b and d[a, b] < 5.0}
    assert set(zip(i.tolist(), j.tolist())) == expected
