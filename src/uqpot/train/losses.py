"""Training losses.

``EnergyForceLoss`` is SI Eq. 1 for one model:  L = w_E · MAE(E) + w_F · MAE(F), with MAE(E) over the
structures of a batch (kcal/mol) and MAE(F) over every force component (kcal/mol/Å); w_E = 0.1, w_F = 1.0.
A loss returns the scalar to minimise and a dict of detached parts for logging.
"""

from __future__ import annotations

import torch

from .. import fields as F


class EnergyForceLoss:
    def __init__(self, energy_weight: float = 0.1, forces_weight: float = 1.0):
        self.energy_weight = float(energy_weight)
        self.forces_weight = float(forces_weight)

    def __call__(self, pred: dict, batch) -> tuple[torch.Tensor, dict]:
        e_err = (pred[F.ENERGY] - batch.energy).abs().mean()
        f_err = (pred[F.FORCES] - batch.forces).abs().mean()
        loss = self.energy_weight * e_err.to(f_err.dtype) + self.forces_weight * f_err
        return loss, {"energy_mae": e_err.detach(), "forces_mae": f_err.detach()}
