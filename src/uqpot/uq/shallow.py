"""Shallow ensemble (Kellner & Ceriotti 2024): K readout heads on one shared PaiNN backbone.

Architecture.  Head 0 is the potential's own readout; heads 1..K−1 are readouts of the same shape
(F → H → 1, activation as the potential), each initialised from its own seed.  Every head k gives atomic
energies e_k,i = s·MLP_k(ξ_i) from the same features ξ (s: the potential's force scale), energies
E_k = Σ_i e_k,i + e_ref and forces F_k = −∂E_k/∂r.  The heads are a head axis on the readout only (the
backbone runs once); their K force fields come from K vector-Jacobian products through the backbone, one
per head for the whole batch (:func:`uqpot.uq.vjp.position_grads`).

Prediction: Ē = mean_k E_k, F̄ = mean_k F_k.  Uncertainty: the variance of the forces over heads with the
1/(K−1) estimator, averaged over the Cartesian components per atom,

    U_i = ⅓ Σ_a Var_k(F_k,ia),   U(x) = reduction over atoms   (in (kcal/mol/Å)², like the ensemble's σ²_F).

Loss (per member, M = 1): a Gaussian NLL of every force component under the heads' mean and spread, plus
the energy MAE of the mean energy,

    σ²_ia = Var_k(F_k,ia) + σ²_min,
    NLL_F = mean_ia [½ log(2π σ²_ia) + (F_ia − F̄_ia)² / (2σ²_ia)],
    L     = w_E · MAE(Ē) + w_F · NLL_F,

with w_E, w_F the config's energy/force weights (0.1, 1) and σ²_min = ``min_variance`` (kcal/mol/Å)².  The
force-aware NLL makes the heads disagree where the forces are poorly predicted (an energy-only NLL leaves the
force spread uncalibrated).

Cost: one backbone forward; the backward for the forces carries K cotangents instead of one, so a training
step costs roughly what the backward part of K single models costs (no K-fold forward, no K-fold
parameters); the measured ratio is reported by ``benchmarks/uq_methods.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import fields as F
from ..nn.layers import activation
from ..nn.stacked import StackedLinear, init_members
from ..train.losses import energy_mae
from .base import UQMethod, register_method
from .vjp import position_grads

HEAD_SEED_OFFSET = 3_000_017


class ExtraHeads(nn.Module):
    """n heads F → H → 1 evaluated together: one F → n·H layer and a block-diagonal n·H → n layer.

    Parameters carry the leading member axis of size 1 (the trainer's per-member optimiser); each head is
    initialised like PyTorch's default Linear (U(±1/√n_in) for weights and biases)."""

    def __init__(self, n_heads: int, n_in: int, hidden: int, act: str):
        super().__init__()
        self.n_heads, self.hidden = n_heads, hidden
        self.lin1 = StackedLinear(1, n_in, n_heads * hidden)
        self.act = activation(act)
        self.weight2 = nn.Parameter(torch.empty(1, n_heads, hidden))
        self.bias2 = nn.Parameter(torch.empty(1, n_heads))

    def init_member(self, m: int, generator: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(self.hidden)
        with torch.no_grad():
            w = torch.rand(self.n_heads, self.hidden, generator=generator, dtype=torch.float64) * 2 - 1
            b = torch.rand(self.n_heads, generator=generator, dtype=torch.float64) * 2 - 1
            self.weight2[m].copy_(w * bound)
            self.bias2[m].copy_(b * bound)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(1, N, F) → (1, N, n_heads)."""
        h = self.act(self.lin1(features))
        h = h.view(*h.shape[:-1], self.n_heads, self.hidden)
        return torch.einsum("mnkh,mkh->mnk", h, self.weight2) + self.bias2.unsqueeze(1)


@register_method("shallow_ensemble")
class ShallowEnsemble(UQMethod):
    uncertainty_description = "force variance over the heads of a shallow ensemble, (kcal/mol/Å)²"
    needs_forces_for_uncertainty = True

    def __init__(self, potential: dict, reduction: str = "mean", heads: int = 8, min_variance: float = 1e-4):
        super().__init__(potential, reduction)
        if self.members != 1:
            raise ValueError("a shallow ensemble shares one backbone (members = 1); its size is uq.heads")
        if int(heads) < 2:
            raise ValueError("a shallow ensemble needs at least 2 heads")
        p = self.potential.hparams
        self.heads, self.min_variance = int(heads), float(min_variance)
        self.extra_heads = ExtraHeads(self.heads - 1, p["features"], p["readout_hidden"], p["activation"])
        init_members(self.extra_heads, [p["seeds"][0] + HEAD_SEED_OFFSET])

    def method_hparams(self) -> dict:
        return {"heads": self.heads, "min_variance": self.min_variance}

    def forward_members(self, batch, compute_forces=True, create_graph=None, retain_graph=None) -> dict:
        """Outputs with the member axis (M = 1): mean energy (1, B) and forces (1, N, 3), and per head
        ``energy_heads`` (1, K, B), ``forces_heads`` (1, K, N, 3), ``atomic_energy_heads`` (1, K, N)."""
        create_graph = self.training if create_graph is None else create_graph
        pos = batch.positions
        with torch.enable_grad() if compute_forces or pos.requires_grad else torch.no_grad():
            if compute_forces and not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
                batch = batch.with_positions(pos)
            out = self.potential.forward_members(batch, compute_forces=False)
            s = out[F.FEATURES]  # (1, N, F)
            e_extra = self.extra_heads(s) * self.potential.energy_scale  # (1, N, K-1)
            e_atom = torch.cat([out[F.ATOMIC_ENERGY].unsqueeze(-1), e_extra], dim=-1).transpose(1, 2)  # (1, K, N)
            e_res = e_atom.new_zeros(1, self.heads, batch.num_structures).index_add(2, batch.batch, e_atom)
            ref = self.potential.reference_energy(batch)
            res = {F.FEATURES: s, "atomic_energy_heads": e_atom, F.ATOMIC_ENERGY: e_atom.mean(1),
                   "energy_heads": e_res.to(torch.float64) + ref, "energy_residual": e_res.mean(1)}
            res[F.ENERGY] = res["energy_heads"].mean(1)
            if compute_forces:
                forces = -position_grads(e_res[0], pos, create_graph=create_graph)  # (K, N, 3)
                res["forces_heads"] = forces.unsqueeze(0)
                res[F.FORCES] = res["forces_heads"].mean(1)
        return res

    def make_loss(self, train_cfg):
        return ShallowEnsembleLoss(train_cfg.energy_weight, train_cfg.forces_weight, self.min_variance)

    def combine(self, out: dict, batch) -> dict:
        res = {k: v.squeeze(0) for k, v in out.items()}
        res[F.ENERGY_VARIANCE] = res["energy_heads"].var(0, correction=1)
        if "forces_heads" in res:
            res[F.UNCERTAINTY_ATOM] = res["forces_heads"].var(0, correction=1).mean(-1)
        else:  # without forces, the spread of the atomic energies
            res[F.UNCERTAINTY_ATOM] = res["atomic_energy_heads"].var(0, correction=1)
        return res


class ShallowEnsembleLoss:
    """w_E · MAE(Ē) + w_F · NLL_F with the heads' mean and variance per force component (module docstring)."""

    def __init__(self, energy_weight: float = 0.1, forces_weight: float = 1.0, min_variance: float = 1e-4):
        self.energy_weight, self.forces_weight = float(energy_weight), float(forces_weight)
        self.min_variance = float(min_variance)

    def __call__(self, pred: dict, batch) -> tuple[torch.Tensor, dict]:
        fk = pred["forces_heads"]  # (M, K, N, 3)
        mu = fk.mean(1)
        var = fk.var(1, correction=1) + self.min_variance
        nll = (0.5 * torch.log(2 * math.pi * var) + (batch.forces - mu).pow(2) / (2 * var)).mean((-1, -2))
        e_err = energy_mae(pred[F.ENERGY], batch.energy)
        loss = self.energy_weight * e_err.to(nll.dtype) + self.forces_weight * nll
        return loss, {"energy_mae": e_err.detach(), "forces_nll": nll.detach()}
