"""Training losses.  Every loss takes outputs with a leading member axis (M networks; M = 1 for a single
model) and returns one loss per member, shape (M,), plus a dict of detached parts for logging; the trainer
minimises their sum, so members never influence each other.

``EnergyForceLoss`` is SI Eq. 1 per member:  L_m = w_E · MAE(E) + w_F · MAE(F), with MAE(E) over the
structures of a batch (kcal/mol) and MAE(F) over every force component (kcal/mol/Å); w_E = 0.1, w_F = 1.0.
"""

from __future__ import annotations

import torch

from .. import fields as F


def energy_mae(pred_energy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute energy error per member, (M, B) vs (B,) -> (M,), in float64 (absolute energies)."""
    return (pred_energy - target).abs().mean(-1)


def forces_mae(pred_forces: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all force components per member, (M, N, 3) vs (N, 3) -> (M,)."""
    return (pred_forces - target).abs().mean((-1, -2))


class EnergyForceLoss:
    def __init__(self, energy_weight: float = 0.1, forces_weight: float = 1.0):
        self.energy_weight = float(energy_weight)
        self.forces_weight = float(forces_weight)

    def __call__(self, pred: dict, batch) -> tuple[torch.Tensor, dict]:
        e_err = energy_mae(pred[F.ENERGY], batch.energy)
        f_err = forces_mae(pred[F.FORCES], batch.forces)
        loss = self.energy_weight * e_err.to(f_err.dtype) + self.forces_weight * f_err
        return loss, {"energy_mae": e_err.detach(), "forces_mae": f_err.detach()}
