"""Deep evidential regression on forces (paper Eq. 6-9; SI Eq. 5-9).

Heads on the per-atom features ξ predict the normal-inverse-gamma parameters of each atom's forces:
ν = softplus(h₁) + ν_min, α = softplus(h₂) + 1 + α_min, β = s² · softplus(h₃) + β_min (s: the force scale
of the potential), shared by the three Cartesian components; γ_F = −∂E/∂r comes from the energy.  Loss per
member, averaged over atoms and components (Ω = 2β(1 + ν)):

    NLL = ½ log(π/ν) − α log Ω + (α + ½) log((F − γ)² ν + Ω) + log Γ(α) − log Γ(α + ½)
    L   = w_E · MAE(E) + w_F · [NLL + λ |F − γ| (2ν + α)],   λ = 0.2

Aleatoric E[σ²] = β/(α − 1) (Eq. 8); epistemic Var[μ] = β/(ν(α − 1)) (Eq. 9), used as U.

Numerical guards (the paper reports ν, α − 1, β → 0): the floors ν_min, α_min, β_min keep every logarithm
and ratio finite; a non-finite loss is caught by the trainer, which rolls back to the last checkpoint and
cuts the learning rate (or fails with the epoch and batch), so a NaN never reaches a saved model.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from .. import fields as F
from ..nn.stacked import StackedMLP, init_members
from ..train.losses import energy_mae
from .base import UQMethod, register_method
from .options import UQOptions

HEAD_SEED_OFFSET = 2_000_003

NU = F.register("nu", True, "", "evidential: ν of the normal-inverse-gamma distribution of an atom's forces")
ALPHA = F.register("alpha", True, "", "evidential: α (> 1) of the normal-inverse-gamma distribution")
BETA = F.register("beta", True, "(kcal/mol/Å)^2", "evidential: β of the normal-inverse-gamma distribution")
ALEATORIC = F.register("aleatoric", True, "(kcal/mol/Å)^2", "evidential: aleatoric variance β/(α−1) (Eq. 8)")
EPISTEMIC = F.register("epistemic", True, "(kcal/mol/Å)^2", "evidential: epistemic variance β/(ν(α−1)) (Eq. 9)")


class EvidentialOptions(UQOptions):
    """``uq: {method: evidential, head_hidden, lam, min_nu, min_alpha, min_beta}``."""

    method: Literal["evidential"] = "evidential"
    head_hidden: int = Field(64, ge=1, description="hidden units of the evidential head")
    lam: float = Field(0.2, ge=0.0, description="evidential regulariser weight λ")
    min_nu: float = Field(1e-4, gt=0.0)
    min_alpha: float = Field(1e-4, gt=0.0)
    min_beta: float = Field(1e-4, gt=0.0)


@register_method("evidential")
class Evidential(UQMethod):
    options = EvidentialOptions
    #: the SI attacks evidential models for fewer iterations (AttackSettings.iterations_evidential)
    attack_iterations = "iterations_evidential"
    uncertainty_description = "epistemic variance β/(ν(α−1)), (kcal/mol/Å)² (evidential, Eq. 9)"

    def __init__(self, potential: dict, reduction: str = "mean", head_hidden: int = 64, lam: float = 0.2,
                 min_nu: float = 1e-4, min_alpha: float = 1e-4, min_beta: float = 1e-4):
        super().__init__(potential, reduction)
        p = self.potential.hparams
        self.head = StackedMLP(self.members, p["features"], head_hidden, 3, p["activation"])
        init_members(self.head, [s + HEAD_SEED_OFFSET for s in p["seeds"]])
        self.head_hidden, self.lam = head_hidden, float(lam)
        self.min_nu, self.min_alpha, self.min_beta = float(min_nu), float(min_alpha), float(min_beta)

    def method_hparams(self) -> dict:
        return {"head_hidden": self.head_hidden, "lam": self.lam, "min_nu": self.min_nu,
                "min_alpha": self.min_alpha, "min_beta": self.min_beta}

    def forward_members(self, batch, compute_forces=True, create_graph=None, retain_graph=None) -> dict:
        out = self.potential.forward_members(batch, compute_forces, create_graph, retain_graph)
        h = self.head(out[F.FEATURES])  # (M, N, 3)
        sp = torch.nn.functional.softplus
        out[NU] = sp(h[..., 0]) + self.min_nu
        out[ALPHA] = sp(h[..., 1]) + 1.0 + self.min_alpha
        out[BETA] = sp(h[..., 2]) * self.potential.energy_scale ** 2 + self.min_beta
        return out

    def make_loss(self, train_cfg):
        return EvidentialLoss(train_cfg.energy_weight, train_cfg.forces_weight, self.lam)

    def combine(self, out: dict, batch) -> dict:
        res = {k: v.squeeze(0) for k, v in out.items()}
        nu, alpha, beta = res[NU], res[ALPHA], res[BETA]
        res[ALEATORIC] = beta / (alpha - 1)
        res[EPISTEMIC] = beta / (nu * (alpha - 1))
        res[F.UNCERTAINTY_ATOM] = res[EPISTEMIC]
        return res


class EvidentialLoss:
    """SI Eq. 5-9, per member."""

    def __init__(self, energy_weight: float = 0.1, forces_weight: float = 1.0, lam: float = 0.2):
        self.energy_weight, self.forces_weight, self.lam = float(energy_weight), float(forces_weight), float(lam)

    def __call__(self, pred: dict, batch) -> tuple[torch.Tensor, dict]:
        nu, alpha, beta = (pred[k].unsqueeze(-1) for k in (NU, ALPHA, BETA))  # (M, N, 1)
        err = pred[F.FORCES] - batch.forces
        omega = 2 * beta * (1 + nu)
        nll = (0.5 * torch.log(math.pi / nu) - alpha * torch.log(omega)
               + (alpha + 0.5) * torch.log(err.pow(2) * nu + omega)
               + torch.lgamma(alpha) - torch.lgamma(alpha + 0.5))
        reg = err.abs() * (2 * nu + alpha)
        f_term = (nll + self.lam * reg).mean((-1, -2))
        e_err = energy_mae(pred[F.ENERGY], batch.energy)
        loss = self.energy_weight * e_err.to(f_term.dtype) + self.forces_weight * f_term
        return loss, {"energy_mae": e_err.detach(), "forces_nll": nll.mean((-1, -2)).detach()}
