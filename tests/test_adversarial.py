"""Adversarial sampling (Eq. 15-16) on a toy potential whose energy and uncertainty are known in closed
form: the attack climbs U, the Boltzmann factor bounds the energy at the analytic optimum, and no overflow
occurs for energies of 1e5 kcal/mol or absolute DFT energies."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from uqpot.core import fields as F
from uqpot.data.structures import Structure
from uqpot.sample.adversarial import AttackConfig, BoltzmannReference, attack, draw_seeds


class ToyUQ(nn.Module):
    """E = E0 + k Σ_i |r_i − r_i⁰|², U = u0 + Σ_i |r_i − r_i⁰|² (per structure), a real torch module with the
    UQ-method interface.  With n atoms, the maximiser of log p + log U over d² = Σ|r − r⁰|² is
    d² = n·kT/k − u0 (d/dd² [−k d²/(n kT) + log(u0 + d²)] = 0)."""

    cutoff = 5.0
    needs_forces_for_uncertainty = False
    signed_uncertainty = False

    def __init__(self, ref_positions: torch.Tensor, k: float, e0: float = 0.0, u0: float = 1e-3):
        super().__init__()
        self.register_buffer("ref", ref_positions.double())
        self.k, self.e0, self.u0 = k, e0, u0

    @property
    def dtype(self):
        return torch.float64

    @property
    def device(self):
        return self.ref.device

    def forward(self, batch, compute_forces=False, create_graph=False):
        d2 = (batch.positions - self.ref).pow(2).sum(-1)
        per = torch.zeros(batch.num_structures, dtype=torch.float64).index_add(0, batch.batch, d2)
        return {F.ENERGY: self.e0 + self.k * per, F.UNCERTAINTY: self.u0 + per}


def _seeds(n_struct=3, n_atoms=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_struct):
        pos = rng.normal(size=(n_atoms, 3)) * 1.5
        out.append(Structure(np.full(n_atoms, 7), pos, np.zeros((3, 3)), np.zeros(3, bool), frame=k))
    return out


def _toy(seeds, k, e0=0.0):
    return ToyUQ(torch.as_tensor(np.concatenate([s.positions for s in seeds])), k, e0)


def test_attack_climbs_uncertainty_to_the_boltzmann_optimum():
    seeds = _seeds()
    # start slightly off the reference so the gradient is non-zero
    for s in seeds:
        s.positions = s.positions.copy()
    toy = _toy(seeds, k=2.0)
    toy.ref += 0.01
    ref = BoltzmannReference.from_energies([0.0, 0.0], [4, 4], kT=0.7)
    cfg = AttackConfig(kT=0.7, iterations=400, lr=0.01, energy_cutoff=None, n_seeds=3)
    res = attack(toy, seeds, ref, cfg)
    u = res.history["uncertainty"]
    assert np.all(u[-1] > 10 * u[0])  # U climbed
    d2_opt = 4 * 0.7 / 2.0 - 1e-3  # closed-form maximiser of log p + log U
    np.testing.assert_allclose(u[-1] - 1e-3, d2_opt, rtol=0.02)
    e = res.history["energy"][-1]
    assert np.all(e < 2.0 * 4 * 0.7 * 1.05)  # the energy stays bounded at k·d² ≈ n·kT
    assert len(res.samples) == 3
    assert all(s.info["rmsd_from_seed"] > 0 for s in res.samples)


def test_displacement_applied_once_not_accumulated():
    """log U linear in the coordinates and no energy: the gradient is constant, so Adam moves every
    coordinate by exactly lr per step and the final displacement is lr·n.  Re-adding δ to already moved
    coordinates (the original code's update) would give lr·n(n+1)/2."""
    seeds = _seeds(2)

    class Tilted(ToyUQ):
        def forward(self, batch, compute_forces=False, create_graph=False):
            z = torch.zeros(batch.num_structures, dtype=torch.float64)
            lin = z.index_add(0, batch.batch, batch.positions.sum(-1))
            return {F.ENERGY: z, F.UNCERTAINTY: torch.exp(lin)}

    toy = Tilted(torch.as_tensor(np.concatenate([s.positions for s in seeds])), 0.0)
    n, lr = 10, 0.01
    res = attack(toy, seeds, BoltzmannReference.from_energies([0.0], [4], 0.7),
                 AttackConfig(iterations=n, lr=lr, energy_cutoff=None))
    for s0, s in zip(seeds, res.samples):
        np.testing.assert_allclose(s.positions - s0.positions, lr * n, rtol=1e-6)


def test_no_overflow_for_huge_energies():
    seeds = _seeds(2)
    toy = _toy(seeds, k=2.0, e0=1e5)  # 1e5 kcal/mol above the training minimum
    toy.ref += 0.01
    ref = BoltzmannReference.from_energies([0.0, 1.0], [4, 4], kT=0.7)
    res = attack(toy, seeds, ref, AttackConfig(iterations=5, lr=0.01, energy_cutoff=100.0))
    assert np.all(np.isfinite(res.history["objective"]))
    assert all("above the cut-off" in r["reason"] for r in res.rejected) and not res.samples
    # absolute DFT-like energies in the reference: log-space, finite
    big = BoltzmannReference.from_energies(-97000 + np.arange(5.0), [9] * 5, kT=0.7)
    lp = big.log_p(torch.tensor([-97000.0 - 50.0, -96000.0], dtype=torch.float64), torch.tensor([9, 9]))
    assert torch.isfinite(lp).all() and lp[0] > 0 > lp[1]


def test_boltzmann_reference_matches_eq16():
    e = np.array([1.0, 2.5, 4.0]) * 9
    ref = BoltzmannReference.from_energies(e, [9, 9, 9], kT=0.7)
    z = np.sum(np.exp(-(e / 9 - 1.0) / 0.7))
    p = ref.log_p(torch.tensor([9 * 1.7], dtype=torch.float64), torch.tensor([9])).exp().item()
    assert p == pytest.approx(math.exp(-(1.7 - 1.0) / 0.7) / z, rel=1e-12)


def test_periodic_positions_wrapped_and_duplicates_removed():
    cell = np.eye(3) * 6.0
    s0 = Structure(np.array([14, 8]), np.array([[0.1, 0.1, 0.1], [5.95, 3.0, 3.0]]), cell, np.ones(3, bool))
    seeds = [s0, Structure(s0.numbers, s0.positions.copy(), cell, np.ones(3, bool))]
    toy = _toy(seeds, k=0.5)
    toy.ref += 0.05
    res = attack(toy, seeds, BoltzmannReference.from_energies([0.0], [2], 0.7),
                 AttackConfig(iterations=30, lr=0.05, energy_cutoff=None))
    assert len(res.samples) == 1 and "near-duplicate" in res.rejected[0]["reason"]
    frac = np.linalg.solve(cell.T, res.samples[0].positions.T).T
    assert np.all((frac >= 0) & (frac < 1))


def test_draw_seeds_reproducible(ethanol):
    a = draw_seeds(ethanol[:50], 5, seed=3)
    b = draw_seeds(ethanol[:50], 5, seed=3)
    assert [s.frame for s in a] == [s.frame for s in b] and len({s.frame for s in a}) == 5
