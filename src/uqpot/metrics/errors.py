"""Prediction errors as pure functions of arrays.

Per-structure force error ε(x) = mean over atoms and Cartesian components of (F̂ − F)², in
(kcal/mol/Å)²; this is what the paper's hexbins plot against the uncertainty and what Spearman and ROC-AUC
rank.  Aggregate errors: energy MAE/RMSE over structures (kcal/mol), force MAE/RMSE over all force
components (kcal/mol/Å).
"""

from __future__ import annotations

import numpy as np


def mae(pred, true) -> float:
    return float(np.mean(np.abs(np.asarray(pred) - np.asarray(true))))


def rmse(pred, true) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(true)) ** 2)))


def per_structure_force_error(pred_forces: list, true_forces: list) -> np.ndarray:
    """ε(x) = mean_{atoms, xyz} (F̂ − F)² for every structure."""
    return np.array([np.mean((np.asarray(p) - np.asarray(t)) ** 2) for p, t in zip(pred_forces, true_forces)])


def error_summary(energy_pred, energy_true, forces_pred: list, forces_true: list) -> dict:
    out = {}
    if energy_true is not None and len(energy_true):
        out["energy_mae"] = mae(energy_pred, energy_true)
        out["energy_rmse"] = rmse(energy_pred, energy_true)
    if forces_true is not None and len(forces_true):
        fp = np.concatenate([np.asarray(f).ravel() for f in forces_pred])
        ft = np.concatenate([np.asarray(f).ravel() for f in forces_true])
        out["forces_mae"] = mae(fp, ft)
        out["forces_rmse"] = rmse(fp, ft)
    return out
