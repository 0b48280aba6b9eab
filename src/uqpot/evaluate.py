"""Errors and uncertainty metrics of a model on a labelled data set (``uqpot evaluate MODEL DATA``).

Per-structure force error ε(x) = mean over atoms and Cartesian components of (F̂ − F)², in (kcal/mol/Å)²;
it is what Spearman and ROC-AUC rank against the uncertainty U(x).  Calibration (miscalibration area, cNLL)
treats every force component of a structure as a Gaussian residual with variance σ²(x) = a·U(x) + b, with
(a, b) fitted on the validation set when the model was trained (stored in the model file), or on the
evaluated data themselves when the file has none (then flagged in metrics.json).

Outputs (``metrics.json`` is written last: its presence marks a complete evaluation):
- ``per_structure.csv``: frame, atoms, reference and predicted energy, energy error, force MAE, ε and U;
- for a UQ model: ``hexbin.png`` (U against ε, log axes; a GMM's NLL shifted to be positive, as the paper
  does), ``calibration.png`` and ``roc.png``;
- ``metrics.json``: energy/force MAE and RMSE and, for a UQ model, Spearman ρ, ROC-AUC at the 20th and 50th
  error percentiles, miscalibration area and cNLL.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from . import fields as F
from .models import load
from .data.io import ReadOptions, read_structures
from .data.structures import StructureDataset
from .metrics import uq as uqm
from .metrics.errors import error_summary, per_structure_force_error
from .predict import predict
from .provenance import write_json, write_text

CSV_COLUMNS = ("index", "frame", "n_atoms", "energy_true", "energy_pred", "energy_error", "forces_mae",
               "forces_sq_error", "uncertainty")

ERROR_DEFINITION = ("per-structure force error ε = mean over atoms and components of (F_pred - F_ref)^2, "
                    "(kcal/mol/Å)^2; calibration: every force component is a Gaussian residual with "
                    "variance a*U + b fitted on the validation set")


def is_uq(model) -> bool:
    return str(getattr(model, "kind", "")).startswith("uq.")


def predictions(model, data: StructureDataset, batch_size: int = 64) -> dict:
    keys = (F.ENERGY, F.FORCES, F.UNCERTAINTY) if is_uq(model) else (F.ENERGY, F.FORCES)
    return predict(model, data, batch_size=batch_size, keys=keys)


def residuals(pred: dict, data: StructureDataset) -> list[np.ndarray]:
    return [p - s.forces for p, s in zip(pred[F.FORCES], data)]


def fit_calibration(model, val: StructureDataset, batch_size: int = 64) -> dict:
    """σ² = a·U + b fitted on a validation set (Eq. 13), with the floor below which it is not extrapolated,
    and the split-conformal quantiles of |r|/σ for 68% and 95% coverage (``conformal``: components pooled,
    per-component finite-sample correction, and the per-structure one when all structures have the same
    size; see :func:`uqpot.metrics.uq.fit_conformal`)."""
    pred = predictions(model, val, batch_size)
    res = residuals(pred, val)
    a, b, floor = uqm.fit_calibration_with_floor(pred[F.UNCERTAINTY], res)
    sigma = np.sqrt(uqm.calibrated_variance(pred[F.UNCERTAINTY], a, b, floor=floor))
    sizes = {r.size for r in res}
    conformal = uqm.fit_conformal(res, sigma, group_size=sizes.pop() if len(sizes) == 1 else 1)
    return {"a": a, "b": b, "floor": floor, "n_structures": len(val), "conformal": conformal}


def assess(model, data: StructureDataset, batch_size: int = 64, calibration: dict | None = None,
           percentiles=(20, 50)) -> tuple[dict, dict]:
    """(metrics, per-structure arrays) of ``model`` on ``data``."""
    pred = predictions(model, data, batch_size)
    e_true = data.energies()
    f_true = [s.forces for s in data]
    metrics = error_summary(pred[F.ENERGY], e_true, pred[F.FORCES], f_true)
    eps = per_structure_force_error(pred[F.FORCES], f_true)
    table = {"frame": np.array([s.frame if s.frame is not None else -1 for s in data]),
             "n_atoms": np.array([s.n_atoms for s in data]), "energy_true": e_true,
             "energy_pred": pred[F.ENERGY], "energy_error": pred[F.ENERGY] - e_true,
             "forces_mae": np.array([np.mean(np.abs(p - t)) for p, t in zip(pred[F.FORCES], f_true)]),
             "forces_sq_error": eps,
             "forces_true": f_true, "forces_pred": pred[F.FORCES]}  # per structure (for parity plots)
    if is_uq(model):
        u = np.asarray(pred[F.UNCERTAINTY], dtype=float)
        table["uncertainty"] = u
        table["residuals"] = residuals(pred, data)  # per structure, for the calibration curve
        cal = None if calibration is None else (calibration["a"], calibration["b"], calibration["floor"])
        m = uqm.uq_metrics(u, eps, table["residuals"], percentiles=percentiles, calibration=cal)
        # interval coverage of the scaled σ (Gaussian intervals) and of the conformal intervals ±q·σ
        sigma = np.sqrt(uqm.calibrated_variance(u, m["calibration_a"], m["calibration_b"], m["calibration_floor"]))
        m.update(uqm.coverage_metrics(table["residuals"], sigma, (calibration or {}).get("conformal")))
        m["method"] = model.method
        m["uncertainty"] = model.uncertainty_description
        m["reduction"] = model.reduction
        metrics.update(m)
    metrics.update(n_structures=len(data), error_definition=ERROR_DEFINITION)
    return metrics, table


def write_table(table: dict, path) -> None:
    cols = [c for c in CSV_COLUMNS if c == "index" or c in table]
    buf = io.StringIO()
    buf.write(",".join(cols) + "\n")
    n = len(table["energy_true"])
    for k in range(n):
        row = [str(k)] + [f"{table[c][k]:.10g}" if c not in ("frame", "n_atoms") else str(int(table[c][k]))
                          for c in cols[1:]]
        buf.write(",".join(row) + "\n")
    write_text(path, buf.getvalue())


def write_predictions(table: dict, path) -> None:
    """Every prediction of an assessment as arrays (parity plots, reports): energies and per-structure
    values per structure, forces concatenated over structures (n_atoms gives the boundaries)."""
    import os

    path = Path(path)
    arrays = {k: np.asarray(v) for k, v in table.items()
              if k not in ("forces_true", "forces_pred", "residuals")}
    arrays["forces_true"] = np.concatenate([np.asarray(f).reshape(-1, 3) for f in table["forces_true"]])
    arrays["forces_pred"] = np.concatenate([np.asarray(f).reshape(-1, 3) for f in table["forces_pred"]])
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def select_indices(spec: str, n: int):
    """Indices from ``FILE`` (one per line) or ``split.json:NAME`` (a split saved by ``uqpot train``)."""
    from .data.splits import load_split, read_index_file
    from .errors import DataError

    path, _, name = spec.rpartition(":") if spec.endswith((":train", ":val", ":test")) else (spec, "", "")
    if name:
        try:
            idx = load_split(path)[name]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(path, f"cannot read split '{name}': {exc}") from None
        if len(idx) and idx.max() >= n:
            raise DataError(path, f"split '{name}' refers to structure {idx.max()} but the data has {n}")
        return idx
    return read_index_file(path, n)


def evaluate(model_path, data_path, out_dir, options: ReadOptions | None = None, batch_size: int = 64,
             device=None, indices: str | None = None, calibration_data=None) -> dict:
    from . import modelfile

    model = load(model_path, device=device)
    stored = modelfile.read(model_path).get("extra", {}).get("calibration")
    data = read_structures(data_path, options or ReadOptions())
    if indices:
        data = data.subset(select_indices(indices, len(data)))
    calibration = stored
    if is_uq(model) and calibration_data is not None:
        calibration = fit_calibration(model, read_structures(calibration_data, options or ReadOptions()), batch_size)
    metrics, table = assess(model, data, batch_size, calibration)
    metrics.update(model=str(model_path), data=str(data_path), units={"energy": "kcal/mol", "forces": "kcal/mol/Å"})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out / "per_structure.csv")
    write_predictions(table, out / "predictions.npz")
    if is_uq(model):
        from .plots import uq_figures

        uq_figures(table, metrics, model, out)
    write_json(out / "metrics.json", metrics)
    return metrics
