"""The descriptor-distance method: its descriptor against the formula, its distances, periodic images."""

import math

import numpy as np
import pytest
import torch

from conftest import silica_like
from support import contract as C
from uqpot.core import fields as F
from uqpot.data.batch import collate
from uqpot.data.structures import Structure, StructureDataset


def _radial(s: Structure, i: int, elements, n_radial: int, rc: float) -> np.ndarray:
    """G_i,(e,k) of a molecule written out pair by pair."""
    mu = np.linspace(0.0, rc, n_radial)
    w = rc / (n_radial - 1)
    out = np.zeros((len(elements), n_radial))
    for j in range(s.n_atoms):
        r = np.linalg.norm(s.positions[j] - s.positions[i])
        if j != i and r < rc:
            fc = 0.5 * (math.cos(math.pi * r / rc) + 1)
            out[elements.index(int(s.numbers[j]))] += np.exp(-((r - mu) / w) ** 2) * fc
    return out.ravel()


@pytest.fixture(scope="module")
def fitted(ammonia):
    return C.generic_factory("descriptor_distance", ammonia[:30], ammonia[30:36], n_radial=12)


def test_descriptor_is_the_element_resolved_radial_density(fitted, ammonia):
    s = ammonia[40]
    g = fitted.descriptors(collate([s], cutoff=fitted.cutoff, dtype=torch.float64)).numpy()
    assert fitted.element_list == [1, 7]
    for i in range(s.n_atoms):
        np.testing.assert_allclose(g[i], _radial(s, i, fitted.element_list, 12, fitted.cutoff), rtol=1e-10, atol=1e-12)


def test_training_atoms_are_at_zero_and_distortion_moves_away(fitted, ammonia):
    s = ammonia[3]  # a training structure: every atom is its own nearest reference
    stretched = []
    for f in (1.0, 1.05, 1.2, 1.5):
        pos = s.positions.copy()
        h = int(np.nonzero(s.numbers == 1)[0][0])
        n = int(np.nonzero(s.numbers == 7)[0][0])
        pos[h] = pos[n] + f * (pos[h] - pos[n])  # one N-H bond stretched by the factor f
        stretched.append(Structure(s.numbers, pos, s.cell, s.pbc))
    out = fitted(collate(stretched, cutoff=fitted.cutoff, dtype=torch.float64), compute_forces=False)
    u = out[F.UNCERTAINTY].detach().numpy()
    assert u[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(u) > 0), u
    assert out[F.UNCERTAINTY_ATOM].min() >= 0


def test_more_neighbours_average_farther_ones(ammonia):
    one = C.generic_factory("descriptor_distance", ammonia[:30], ammonia[30:36], neighbors=1)
    five = C.generic_factory("descriptor_distance", ammonia[:30], ammonia[30:36], neighbors=5)
    b = collate(ammonia[50:60], cutoff=one.cutoff, dtype=torch.float64)
    u1, u5 = (m(b, compute_forces=False)[F.UNCERTAINTY_ATOM].detach() for m in (one, five))
    assert torch.all(u5 >= u1 - 1e-12) and torch.any(u5 > u1)


def test_periodic_images_are_neighbours():
    """Atom 0 of a quartz cell smaller than twice the cutoff has the neighbourhood of atom 0 of the 2x2x2
    supercell: the descriptor counts the periodic images."""
    small, big = (Structure.from_atoms(a, energy=0.0, forces=np.zeros((len(a), 3)))
                  for a in (silica_like(n, rattle=0.0) for n in ((1, 1, 1), (2, 2, 2))))
    model = C.generic_factory("descriptor_distance", StructureDataset([small]), None)
    assert model.element_list == [8, 14]
    g_small = model.descriptors(collate([small], cutoff=model.cutoff, dtype=torch.float64))
    g_big = model.descriptors(collate([big], cutoff=model.cutoff, dtype=torch.float64))
    assert g_small[0].abs().sum() > 0
    torch.testing.assert_close(g_small[0], g_big[0], rtol=1e-9, atol=1e-9)
    # the supercell's atoms are images of the training cell's: all at distance zero
    u = model(collate([big], cutoff=model.cutoff, dtype=torch.float64), compute_forces=False)[F.UNCERTAINTY_ATOM]
    assert float(u.max()) == pytest.approx(0.0, abs=1e-8)
