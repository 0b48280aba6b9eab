"""``uqpot evaluate MODEL DATA``: errors of a trained model on a labelled structure file.

Writes ``per_structure.csv`` (one row per structure: file frame, atoms, reference and predicted energy,
energy error, force MAE and the per-structure squared force error ε = mean (F̂ − F)²) and then
``metrics.json`` (energy/force MAE and RMSE).  ``metrics.json`` is written last, so its presence marks a
complete evaluation.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from . import load
from .data.io import ReadOptions, read_structures
from .metrics.errors import error_summary, per_structure_force_error
from .predict import predict
from .provenance import write_json, write_text

CSV_COLUMNS = ("index", "frame", "n_atoms", "energy_true", "energy_pred", "energy_error", "forces_mae",
               "forces_sq_error")


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
             device=None, indices: str | None = None) -> dict:
    model = load(model_path, device=device)
    data = read_structures(data_path, options or ReadOptions())
    if indices:
        data = data.subset(select_indices(indices, len(data)))
    pred = predict(model, data, batch_size=batch_size)
    e_true = data.energies()
    f_true = [s.forces for s in data]
    metrics = error_summary(pred["energy"], e_true, pred["forces"], f_true)
    metrics.update(n_structures=len(data), model=str(model_path), data=str(data_path),
                   units={"energy": "kcal/mol", "forces": "kcal/mol/Å"})
    eps = per_structure_force_error(pred["forces"], f_true)
    buf = io.StringIO()
    buf.write(",".join(CSV_COLUMNS) + "\n")
    for k, s in enumerate(data):
        f_mae = float(np.mean(np.abs(pred["forces"][k] - s.forces)))
        buf.write(f"{k},{s.frame},{s.n_atoms},{e_true[k]:.8f},{pred['energy'][k]:.8f},"
                  f"{pred['energy'][k] - e_true[k]:.8f},{f_mae:.8f},{eps[k]:.8f}\n")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "per_structure.csv", buf.getvalue())
    write_json(out / "metrics.json", metrics)
    return metrics
