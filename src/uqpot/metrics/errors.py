"""Prediction errors as pure functions of arrays.

Per-structure force error ε(x) = mean over atoms and Cartesian components of (F̂ − F)², in
(kcal/mol/Å)²; this is what the paper's hexbins plot against the uncertainty and what Spearman and ROC-AUC
rank.  Aggregate errors: energy MAE/RMSE over structures (kcal/mol), force MAE/RMSE over all force
components (kcal/mol/Å).  Registered as metrics (``forces_mae``, ``energy_mae``, ``stress_mae`` and the
RMSEs; the stress ones computed by :func:`uqpot.evaluation.evaluate.assess` where the data have a stress).
"""

from __future__ import annotations

import numpy as np

from .registry import Metric, register_metric


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


# in the tables' order: forces, energy, stress
for _q, _unit in (("forces", "kcal/mol/Å"), ("energy", "kcal/mol"), ("stress", "kcal/mol/Å³")):
    register_metric(Metric(f"{_q}_mae", None, False, f"{_q} MAE ({_unit})", ".4f", kind="error",
                           headline=_q != "stress", table=True, optional=_q == "stress", bounds=(0.0, None),
                           claim=_q != "stress"))
for _q, _unit in (("forces", "kcal/mol/Å"), ("energy", "kcal/mol"), ("stress", "kcal/mol/Å³")):
    register_metric(Metric(f"{_q}_rmse", None, False, f"{_q} RMSE ({_unit})", ".4f", kind="error",
                           headline=_q != "stress", bounds=(0.0, None) if _q != "stress" else (None, None),
                           claim=False))
