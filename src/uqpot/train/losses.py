"""Training losses.  Every loss takes outputs with a leading member axis (M networks; M = 1 for a single
model) and returns one loss per member, shape (M,), plus a dict of detached parts for logging; the trainer
minimises their sum, so members never influence each other.

``EnergyForceLoss`` is SI Eq. 1 per member:  L_m = w_E · MAE(E) + w_F · MAE(F), with MAE(E) over the
structures of a batch (kcal/mol) and MAE(F) over every force component (kcal/mol/Å); w_E = 0.1, w_F = 1.0.
With stress labels (periodic cells) and ``w_S > 0`` it adds w_S · MAE(V·σ/N): the stress error of every
component times the volume per atom, i.e. the energy per atom a unit strain would mis-predict (kcal/mol per
atom; ``stress_mae``), so that the term has the scale of per-atom energy errors whatever the cell's size.
"""

from __future__ import annotations

import torch

from ..core import fields as F
from ..core.errors import ConfigError


def energy_mae(pred_energy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute energy error per member, (M, B) vs (B,) -> (M,), in float64 (absolute energies)."""
    return (pred_energy - target).abs().mean(-1)


def forces_mae(pred_forces: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all force components per member, (M, N, 3) vs (N, 3) -> (M,)."""
    return (pred_forces - target).abs().mean((-1, -2))


def stress_mae(pred_stress: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all stress components per member, (M, B, 3, 3) vs (B, 3, 3) -> (M,)."""
    return (pred_stress - target).abs().mean((-1, -2, -3))


def virial_per_atom_mae(pred_stress: torch.Tensor, batch) -> torch.Tensor:
    """MAE of V·σ/N per member (kcal/mol per atom): the stress error weighted by each cell's volume per atom."""
    vol = torch.linalg.det(batch.cell.to(pred_stress.dtype)).abs() / batch.n_atoms.to(pred_stress.dtype)
    return ((pred_stress - batch.stress) * vol.view(-1, 1, 1)).abs().mean((-1, -2, -3))


class EnergyForceLoss:
    def __init__(self, energy_weight: float = 0.1, forces_weight: float = 1.0, stress_weight: float = 0.0):
        self.energy_weight = float(energy_weight)
        self.forces_weight = float(forces_weight)
        self.stress_weight = float(stress_weight)

    @property
    def needs_stress(self) -> bool:
        return self.stress_weight > 0

    @property
    def targets(self) -> tuple[str, ...]:
        """The labels this loss trains on (a study compares methods only on equal targets)."""
        return ("energy", "forces", "stress") if self.needs_stress else ("energy", "forces")

    def __call__(self, pred: dict, batch) -> tuple[torch.Tensor, dict]:
        e_err = energy_mae(pred[F.ENERGY], batch.energy)
        f_err = forces_mae(pred[F.FORCES], batch.forces)
        loss = self.energy_weight * e_err.to(f_err.dtype) + self.forces_weight * f_err
        parts = {"energy_mae": e_err.detach(), "forces_mae": f_err.detach()}
        if self.needs_stress:
            s_err = virial_per_atom_mae(pred[F.STRESS], batch)
            loss = loss + self.stress_weight * s_err
            parts["stress_mae"] = stress_mae(pred[F.STRESS], batch.stress).detach()
        return loss, parts


#: ``train.stress_weight`` when it is not set and every training structure carries a stress
DEFAULT_STRESS_WEIGHT = 1.0


def study_stress_weight(train_cfg, train, trains_stress: dict[str, bool]):
    """``(train_cfg, note)`` with one ``stress_weight`` for every method of a study (``trains_stress``: method ->
    whether it can train on a stress), so that all are trained on the same labels: a comparison of UQ
    methods must give each the same objective.  Unset, it is :data:`DEFAULT_STRESS_WEIGHT` where every training
    structure carries a stress and every method can train on it, else 0 (SI Eq. 1: energy and forces); a
    weight > 0 with a method that cannot train on a stress is an error naming it.  ``note`` says which."""
    without = sorted(m for m, ok in trains_stress.items() if not ok)
    has = len(train) > 0 and all(getattr(s, "stress", None) is not None for s in train.structures)
    w = train_cfg.stress_weight
    if w is not None and w > 0 and without:
        raise ConfigError(None, f"train.stress_weight: {w:g}, but {', '.join(without)} cannot train on a stress; "
                                "every method of a study trains on the same labels: set it to 0 or leave it unset")
    if w is None:
        w = DEFAULT_STRESS_WEIGHT if has and not without else 0.0
    resolved = resolve_stress_weight(train_cfg.model_copy(update={"stress_weight": w}), train, True)
    if resolved.stress_weight > 0:
        note = f"every method trains on energy, forces and stress (stress_weight {resolved.stress_weight:g})"
    elif has and without:
        note = (f"every method trains on energy and forces only (SI Eq. 1): the structures carry a stress, but "
                f"{', '.join(without)} cannot train on it")
    else:
        note = "every method trains on energy and forces (SI Eq. 1)"
    return resolved, note


def resolve_stress_weight(train_cfg, train, gives_stress: bool = True):
    """``train_cfg`` with ``stress_weight`` resolved for the training set ``train``: unset, it is
    :data:`DEFAULT_STRESS_WEIGHT` where every training structure carries a stress and the model gives one
    (plain potentials and ensembles), 0 otherwise; a weight > 0 for data without stress is an error."""
    has = len(train) > 0 and all(getattr(s, "stress", None) is not None for s in train.structures)
    w = train_cfg.stress_weight
    if w is None:
        w = DEFAULT_STRESS_WEIGHT if has and gives_stress else 0.0
    elif w > 0 and not has:
        raise ConfigError(None, f"train.stress_weight: {w:g}, but the training structures carry no stress (every "
                                "one needs it: a periodic cell with a stress or virial label)")
    elif w > 0 and not gives_stress:
        raise ConfigError(None, f"train.stress_weight: {w:g}, but this UQ method gives no stress; use a plain "
                                "potential, a post-hoc method or the ensemble, or set it to 0")
    return train_cfg.model_copy(update={"stress_weight": float(w)})
