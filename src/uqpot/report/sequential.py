"""The report's account of a ``--seeds auto`` study (:mod:`uqpot.studies.sequential`): where it stopped,
why, and every look (``table_sequential.csv``), read from ``OUT/sequential.json``."""

from __future__ import annotations

import json
from pathlib import Path


def sequential_record(run: Path, seeds: list[int]) -> dict | None:
    """``OUT/sequential.json`` of a ``--seeds auto`` study when its last look's seeds are the ones reported
    (else None: the directory's seeds changed since, and the record no longer describes them)."""
    path = Path(run) / "sequential.json"
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    return rec if rec.get("looks") and sorted(rec["looks"][-1]["seeds"]) == sorted(seeds) else None


SEQUENTIAL_COLUMNS = ["look", "seeds", "n_seeds", "information_fraction", "alpha", "alpha_spent", "n_resolved",
                      "n_unresolved", "n_undecidable", "decision", "reason"]


def sequential_section(rep, seq: dict) -> None:
    """Where a ``--seeds auto`` study stopped and why, and its looks (``table_sequential.csv``)."""
    last = seq["looks"][-1]
    where = (f"It stopped at look {seq['stopped_at']} of at most {len(seq['planned_looks'])}, with {last['n_seeds']} "
             f"seeds: {seq['reason']}." if seq.get("stopped_at") else
             f"It has run {len(seq['looks'])} of at most {len(seq['planned_looks'])} looks ({last['n_seeds']} seeds) "
             "and has not stopped yet (interrupted: rerun the command to go on).")
    rep.heading("Seeds added until the claims are resolved (--seeds auto)", 3)
    rep.paragraph(f"--seeds {seq['option']}: the study started with the preset's seeds {seq['first_seeds']} and "
                  f"added batches of seeds up to MAX {seq['max_seeds']}, checking the claims after each batch. "
                  f"{where} Correction for the repeated looks: {seq['spending']}, alpha {seq['alpha']:g} spent over "
                  f"the planned looks (information fraction: seeds / MAX); each look's Holm verdicts use its own "
                  f"alpha, and the claims table below uses the last look's, {last['alpha']:.3g}.")
    rows = [{**{c: lk.get(c) for c in SEQUENTIAL_COLUMNS}, "seeds": " ".join(map(str, lk["seeds"]))}
            for lk in seq["looks"]]
    rep.table("sequential", rows, SEQUENTIAL_COLUMNS,
              caption="one row per look: its seeds, its level alpha (O'Brien-Fleming-type spending), the alpha spent "
                      "so far, claims resolved (Holm verdict reproduced or contradicted at that alpha), unresolved "
                      "(inconclusive) and undecidable by more seeds (not contradicted, not measured), the decision")
