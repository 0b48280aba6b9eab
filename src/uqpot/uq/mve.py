"""Mean-variance estimation (MVE; SI Eq. 2-4).

A variance head on the per-atom features ξ predicts an isotropic force variance per atom,
σ²_i = s² · softplus(h(ξ_i)) + σ²_min, with s the force scale of the potential (the RMS of the training
forces), so the head works with O(1) numbers.  Loss per member:

    L = w_E · MAE(E) + w_F · NLL_F,   NLL_F = mean over atoms and components of
        ½ log(2π σ²_i) + (F_ic − μ_F,ic)² / (2 σ²_i)

with μ_F = −∂E/∂r from the energy.  Uncertainty U_i = σ²_i in (kcal/mol/Å)² (output ``forces_variance``,
isotropic: one value per atom).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from ..core import fields as F
from ..nn.stacked import StackedMLP, init_members, per_member
from ..train.losses import energy_mae
from .base import UQMethod, register_method
from .options import UQOptions

HEAD_SEED_OFFSET = 1_000_003


class MVEOptions(UQOptions):
    """``uq: {method: mve, head_hidden, min_variance}``."""

    method: Literal["mve"] = "mve"
    head_hidden: int = Field(64, ge=1, description="hidden units of the variance head")
    min_variance: float = Field(1e-4, gt=0.0, description="floor σ²_min of the predicted variance, (kcal/mol/Å)²")


@register_method("mve")
class MVE(UQMethod):
    md_compiles = True
    colour = "#ff7f0e"
    options = MVEOptions
    uncertainty_description = "predicted force variance σ²_F, (kcal/mol/Å)² (MVE)"

    def __init__(self, potential: dict, reduction: str = "mean", head_hidden: int = 64,
                 min_variance: float = 1e-4):
        super().__init__(potential, reduction)
        p = self.potential.hparams
        self.head = StackedMLP(self.members, p["features"], head_hidden, 1, p["activation"])
        init_members(self.head, [s + HEAD_SEED_OFFSET for s in p["seeds"]])
        self.head_hidden, self.min_variance = head_hidden, float(min_variance)

    def method_hparams(self) -> dict:
        return {"head_hidden": self.head_hidden, "min_variance": self.min_variance}

    def forward_members(self, batch, compute_forces=True, create_graph=None, retain_graph=None) -> dict:
        out = self.potential.forward_members(batch, compute_forces, create_graph, retain_graph)
        raw = self.head(out[F.FEATURES]).squeeze(-1)  # (M, N)
        out[F.FORCES_VARIANCE] = (per_member(torch.nn.functional.softplus, raw) * self.potential.member_scale() ** 2
                                  + self.min_variance)
        return out

    def make_loss(self, train_cfg):
        return MVELoss(train_cfg.energy_weight, train_cfg.forces_weight)

    def combine(self, out: dict, batch) -> dict:
        res = {k: v.squeeze(0) for k, v in out.items()}
        res[F.UNCERTAINTY_ATOM] = res[F.FORCES_VARIANCE]
        return res


class MVELoss:
    """SI Eq. 2-4, per member."""

    #: the labels this loss trains on (no stress term)
    targets = ("energy", "forces")

    def __init__(self, energy_weight: float = 0.1, forces_weight: float = 1.0):
        self.energy_weight, self.forces_weight = float(energy_weight), float(forces_weight)

    def __call__(self, pred: dict, batch) -> tuple[torch.Tensor, dict]:
        var = pred[F.FORCES_VARIANCE].unsqueeze(-1)  # (M, N, 1)
        forces = batch.forces if batch.forces.dim() == 3 else batch.forces.unsqueeze(0)  # members' own, or shared

        def nll_of(v, f, t):  # one member's (per_member: the same rounding alone or in any stack)
            return (0.5 * torch.log(2 * math.pi * v) + (f - t).pow(2) / (2 * v)).mean((-1, -2))

        nll = per_member(nll_of, var, pred[F.FORCES], forces)
        e_err = energy_mae(pred[F.ENERGY], batch.energy)
        loss = self.energy_weight * e_err.to(nll.dtype) + self.forces_weight * nll
        return loss, {"energy_mae": e_err.detach(), "forces_nll": nll.detach()}
