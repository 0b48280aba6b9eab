"""The report's "Final models" section (a loop with ``until``; the models: :mod:`uqpot.loop.final`): a table
of every final model (method, labels, its split, the test metrics) and, per model, the paragraph "What this
potential is good for", generated from its record (``OUT/final.json``) by
:func:`uqpot.loop.final.good_for_text`: the conditions the stopping rule explored, the estimated fraction of
frames above the tolerance with its interval, the decision and the labels."""

from __future__ import annotations

import json
from pathlib import Path

from ..loop.final import good_for_text
from .page import Report

#: the test metrics of the table, where the test record has them
TEST_COLUMNS = ("forces_mae", "energy_mae", "spearman", "roc_auc_p20")


def final_rows(dirs: list[tuple[int, Path]]) -> list[tuple[int, str, dict]]:
    """(seed, method, record) of every final model of the loops in ``dirs`` (seed, loop directory)."""
    out = []
    for seed, d in dirs:
        path = Path(d) / "final.json"
        if path.is_file():
            out += [(seed, m, r) for m, r in json.loads(path.read_text())["methods"].items()]
    return out


def final_section(rep: Report, dirs: list[tuple[int, Path]]) -> None:
    """The section, when any loop in ``dirs`` has final models (nothing otherwise)."""
    found = final_rows(dirs)
    if not found:
        return
    seeds = len({s for s, _, _ in found}) > 1
    rows = []
    for seed, m, r in found:
        sp, t, gf = r["split"], r.get("test") or {}, r["good_for"]
        rows.append({"seed": seed, "method": m, "labels": sp["n_labels"], "labels_added": sp["n_added"],
                     "n_train": sp["n_train"], "n_val": sp["n_val"], "generation": r["generation"],
                     "stopped": gf["stopped_because"], **{k: t[k] for k in TEST_COLUMNS if t.get(k) is not None}})
    cols = ["seed"] * seeds + ["method", "labels", "labels_added", "n_train", "n_val", "generation", "stopped"]
    cols += [k for k in TEST_COLUMNS if any(k in r for r in rows)]
    rep.heading("Final models")
    fr = found[0][2]["split"]["fraction"]
    rep.paragraph(f"Once a method stopped, its final model was trained afresh (same method, model, training settings "
                  f"and seed as the loop) on every label the method gathered, {fr:.0%} of them held out (seeded) for "
                  "the best-epoch choice and the calibration σ² = a·U + b only, and scored on the loop's test set.")
    rep.table("final", rows, cols, caption="final models: labels (initial data and the loop's), their split, the "
                                           "test-set metrics (forces in kcal/mol/Å, energies in kcal/mol)")
    for seed, m, r in found:
        rep.heading(f"What this potential is good for: {m}" + (f" (seed {seed})" if seeds else ""), 3)
        rep.paragraph(good_for_text(r))
