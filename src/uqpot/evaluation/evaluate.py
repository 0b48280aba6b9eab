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

Everything is checked before the first file is written (model file, data, indices, device, output folder,
at least :data:`MIN_UQ_STRUCTURES` structures for a UQ model's metrics, ``calibration_data`` only for a UQ
model) and the predictions must be finite: a NaN is never reported as a result (:class:`PredictionError`).
A ``metrics.json`` of an earlier evaluation in the same folder is removed first, so the folder never pairs
old metrics with new tables.  When the data look like another energy unit than declared, ``warnings``
says so (:mod:`uqpot.core.unit_hints`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..core import fields as F
from .models import load
from ..data.io import ReadOptions, read_structures
from ..data.structures import StructureDataset
from ..metrics import uq as uqm
from ..metrics.errors import error_summary, per_structure_force_error
from ..metrics.registry import names as metric_names
from .predict import predict
from ..core.errors import ConfigError, DataError, PredictionError
from ..core.provenance import atomic_write, remove_stale_temps, write_json, write_text

#: the UQ metrics (Spearman, ROC-AUC, calibration) rank and compare structures: at least two
MIN_UQ_STRUCTURES = 2
#: what ``evaluate`` writes into its output folder
EVAL_FILES = ("metrics.json", "per_structure.csv", "predictions.npz", "hexbin.png", "calibration.png", "roc.png")

CSV_COLUMNS = ("index", "frame", "n_atoms", "energy_true", "energy_pred", "energy_error", "forces_mae",
               "forces_sq_error", "uncertainty")

ERROR_DEFINITION = ("per-structure force error ε = mean over atoms and components of (F_pred - F_ref)^2, "
                    "(kcal/mol/Å)^2; calibration: every force component is a Gaussian residual with "
                    "variance a*U + b fitted on the validation set")


def is_uq(model) -> bool:
    return str(getattr(model, "kind", "")).startswith("uq.")


def gives_stress(model) -> bool:
    return getattr(model, "kind", "") == "potential" or bool(getattr(model, "gives_stress", False))


def has_stress(data: StructureDataset) -> bool:
    return len(data) > 0 and all(getattr(s, "stress", None) is not None for s in data.structures)


def predictions(model, data: StructureDataset, batch_size: int = 64) -> dict:
    keys = (F.ENERGY, F.FORCES, F.UNCERTAINTY) if is_uq(model) else (F.ENERGY, F.FORCES)
    if has_stress(data) and gives_stress(model):
        keys = keys + (F.STRESS,)
    return predict(model, data, batch_size=batch_size, keys=keys)


def residuals(pred: dict, data: StructureDataset) -> list[np.ndarray]:
    return [p - s.forces for p, s in zip(pred[F.FORCES], data)]


def check_finite(pred: dict, data: StructureDataset, what: str = "the data") -> None:
    """PredictionError when any prediction is NaN/inf: such numbers must never become metrics."""
    bad = [k for k in range(len(data))
           if not (np.isfinite(pred[F.ENERGY][k]) and np.all(np.isfinite(pred[F.FORCES][k]))
                   and (F.UNCERTAINTY not in pred or np.all(np.isfinite(pred[F.UNCERTAINTY][k]))))]
    if bad:
        s = data[bad[0]]
        frames = [data[k].frame for k in bad[:10]]
        raise PredictionError(f"{s.source or what}: the model's predictions are non-finite (NaN/inf) for {len(bad)} of "
                              f"{len(data)} structure(s) (frames {frames}); no metrics were computed: the model file "
                              "may be broken, or these structures lie far outside what it was trained on")


def fit_calibration(model, val: StructureDataset, batch_size: int = 64) -> dict:
    """σ² = a·U + b fitted on a validation set (Eq. 13), with the floor below which it is not extrapolated,
    and the split-conformal quantiles of |r|/σ for 68% and 95% coverage (``conformal``: components pooled,
    per-component finite-sample correction, and the per-structure one when all structures have the same
    size; see :func:`uqpot.metrics.uq.fit_conformal`)."""
    pred = predictions(model, val, batch_size)
    check_finite(pred, val, "the calibration data")
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
    check_finite(pred, data)
    e_true = data.energies()
    f_true = [s.forces for s in data]
    metrics = error_summary(pred[F.ENERGY], e_true, pred[F.FORCES], f_true)
    if F.STRESS in pred:  # stress MAE over every component, kcal/mol/Å³ (periodic structures with a stress)
        s_err = np.abs(np.asarray(pred[F.STRESS]) - np.stack([s.stress for s in data]))
        metrics["stress_mae"] = float(s_err.mean())
        metrics["stress_rmse"] = float(np.sqrt((s_err ** 2).mean()))
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
    path = Path(path)
    arrays = {k: np.asarray(v) for k, v in table.items()
              if k not in ("forces_true", "forces_pred", "residuals")}
    arrays["forces_true"] = np.concatenate([np.asarray(f).reshape(-1, 3) for f in table["forces_true"]])
    arrays["forces_pred"] = np.concatenate([np.asarray(f).reshape(-1, 3) for f in table["forces_pred"]])
    with atomic_write(path, suffix=".npz") as tmp:  # np.savez appends .npz to a name without it
        np.savez_compressed(tmp, **arrays)


def select_indices(spec: str, n: int):
    """Indices from ``FILE`` (one per line) or ``split.json:NAME`` (a split saved by ``uqpot train``)."""
    from ..data.splits import load_split, read_index_file

    path, _, name = spec.rpartition(":") if spec.endswith((":train", ":val", ":test")) else (spec, "", "")
    if name:
        try:
            idx = load_split(path)[name]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(path, f"cannot read split '{name}': {exc}") from None
        if len(idx) == 0:
            raise DataError(path, f"split '{name}' is empty: no structure to evaluate")
        if idx.max() >= n:
            raise DataError(path, f"split '{name}' refers to structure {idx.max()} but the data has {n}")
        return idx
    return read_index_file(path, n, "--indices")


def evaluate(model_path, data_path, out_dir, options: ReadOptions | None = None, batch_size: int = 64,
             device=None, indices: str | None = None, calibration_data=None) -> dict:
    """Metrics of ``model_path`` on ``data_path``, written to ``out_dir`` (see the module docstring);
    every input is checked before anything is written.  Returns the metrics (with ``warnings``)."""
    from ..nn import modelfile
    from ..core.devices import resolve_device
    from ..core.rundir import check_out_dir

    options = options or ReadOptions()
    if int(batch_size) < 1:
        raise ConfigError(None, f"--batch-size: must be >= 1, got {batch_size}")
    out = check_out_dir(out_dir, "--out", {"model file": model_path, "data file": data_path}, writes=EVAL_FILES)
    dev = resolve_device(device, "--device") if device is not None else None
    model = load(model_path, device=dev)
    stored = modelfile.read(model_path).get("extra", {}).get("calibration")
    if calibration_data is not None and not is_uq(model):
        raise ConfigError(None, f"--calibration: {model_path} is a plain potential (kind '{model.kind}'), without an "
                                "uncertainty to calibrate; leave --calibration out, or evaluate a UQ model")
    data = read_structures(data_path, options)
    if indices:
        data = data.subset(select_indices(indices, len(data)))
    if is_uq(model) and len(data) < MIN_UQ_STRUCTURES:
        raise DataError(data_path, f"{len(data)} structure(s) to evaluate, and the UQ metrics of the "
                                   f"'{model.method}' model (Spearman, ROC-AUC, calibration) need at least "
                                   f"{MIN_UQ_STRUCTURES}")
    calibration = stored
    if is_uq(model) and calibration_data is not None:
        cal_data = read_structures(calibration_data, options)
        if len(cal_data) < MIN_UQ_STRUCTURES:
            raise DataError(calibration_data, f"{len(cal_data)} structure(s): a calibration needs at least "
                                              f"{MIN_UQ_STRUCTURES}")
        calibration = fit_calibration(model, cal_data, batch_size)
    metrics, table = assess(model, data, batch_size, calibration)
    headline = metric_names(headline=True)  # printed and reported: each must be finite
    bad = [k for k in metrics if k in headline and not np.isfinite(metrics[k])]
    if bad:
        raise PredictionError(f"{data_path}: the metrics {', '.join(bad)} are not finite (e.g. a constant uncertainty "
                              f"over all {len(data)} structures leaves Spearman undefined); nothing was written")
    from ..core.unit_hints import energy_unit_hint

    hint = energy_unit_hint(table["energy_pred"], table["energy_true"], table["forces_pred"], table["forces_true"],
                            options.energy_unit)
    metrics["warnings"] = [f"{data_path}: {hint}"] if hint else []
    metrics.update(model=str(model_path), data=str(data_path), units={"energy": "kcal/mol", "forces": "kcal/mol/Å"})
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # written last: until then the folder holds no result
    remove_stale_temps(out)
    try:
        write_table(table, out / "per_structure.csv")
        write_predictions(table, out / "predictions.npz")
        if is_uq(model):
            from .plots import uq_figures

            uq_figures(table, metrics, model, out)
        write_json(out / "metrics.json", metrics)
    except BaseException:  # a full disk, Ctrl-C: no table without its metrics.json is left behind
        _remove_partial(out, created)
        raise
    return metrics


def _remove_partial(out: Path, created: bool) -> None:
    """Removes what an evaluation that failed while writing left in ``out`` (its files only; the folder too if
    this evaluation created it and it is empty again)."""
    import contextlib

    for name in EVAL_FILES:
        with contextlib.suppress(OSError):
            (out / name).unlink()
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()
