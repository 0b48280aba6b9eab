"""A loop study's results as the claims checker reads them (:class:`uqpot.report.claims.Observations`): per
method, generation and seed, each quantity's value, the stable-MD counts, the test set's (U, ε) for the
one-seed bootstrap, and each trajectory's outcome by its start for the one-seed paired comparison."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from . import claims as claims_mod
from .page import _load_npz


def uq_predictions(rec: dict):
    """The test set's (U, squared force error) of one seed, generation and method; None without them."""
    p = _load_npz(Path(rec["dir"]) / f"gen{rec['generation']}" / rec["method"] / "train" / "test_predictions.npz")
    if p is None or "uncertainty" not in p:
        return None
    return np.asarray(p["uncertainty"], dtype=float), np.asarray(p["forces_sq_error"], dtype=float)


def observations(recs: list[dict]) -> claims_mod.Observations:
    obs = claims_mod.Observations(last_generation=max((r["generation"] for r in recs), default=1))
    by_key = {(r["method"], r["generation"], r["seed"]): r for r in recs}
    for r in recs:
        for q in claims_mod.quantities():
            if r.get(q) is not None:
                obs.values.setdefault((r["method"], r["generation"], q), {})[r["seed"]] = float(r[q])
        if r.get("md_runs"):
            obs.counts.setdefault((r["method"], r["generation"]), {})[r["seed"]] = (r["md_stable"], r["md_runs"])
    obs.predictions = lambda m, g, s: uq_predictions(by_key[(m, g, s)]) if (m, g, s) in by_key else None
    obs.outcomes = lambda m, g, s: _outcomes(by_key[(m, g, s)]) if (m, g, s) in by_key else None
    return obs


def _outcomes(rec: dict) -> dict | None:
    """Each MD trajectory's stability (1 or 0) by its start (start structure, temperature, MD seed), from the
    campaign's ``md/replicas.csv``; None without one."""
    path = Path(rec["dir"]) / f"gen{rec['generation']}" / rec["method"] / "md" / "replicas.csv"
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return {(r["start"], r["temperature_K"], r["seed"]): int(r["stable"]) for r in rows}
    except (OSError, KeyError, ValueError):
        return None
