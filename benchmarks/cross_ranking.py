"""Whose errors does each uncertainty rank?  Spearman ρ of every method's U against the test errors of its own
model, of one plain PaiNN and of the deep ensemble's mean, seed by seed, from a finished
``uq_methods.py`` grid:

    python benchmarks/cross_ranking.py runs/uq_ammonia [--plain gmm] [--ensemble ensemble]

The paper scores each method against its own model's errors, so the ensemble is scored on the errors of a
five-network mean and a single-model method on the errors of one network.  This separates the two parts of
the gap: how well U ranks (its column against one fixed error) and how rankable the errors are (one row
against the three columns).  The row ``energy above the minimum`` ranks by the reference energy relative to
the lowest structure of the data (ranks do not see the shift): a quantity no method has at inference, the
yardstick of how much of the error grows with the distance from the training basin.  Errors are the per-structure mean squared force
errors of ``test_per_structure.csv`` (what the metrics of Eq. 12 use); the plain PaiNN is the network of the
``--plain`` job (GMM, LLPR and descriptor distance wrap the same network for the same seed).  Mean ± std
over the seeds that every compared job has.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from uqpot.metrics.uq import spearman


def read_grid(dirs) -> dict:
    """{(spec, seed): {frame: (error, U, reference energy)}} of every finished job under ``dirs``."""
    out = {}
    for d in dirs:
        for f in sorted(Path(d).glob("*_s*/test_per_structure.csv")):
            spec, _, seed = f.parent.name.rpartition("_s")
            with f.open() as fh:
                rows = list(csv.DictReader(fh))
            if rows and "uncertainty" in rows[0]:
                out[(spec, int(seed))] = {int(r["frame"]): (float(r["forces_sq_error"]), float(r["uncertainty"]),
                                                            float(r["energy_true"])) for r in rows}
    return out


def cross_table(grid: dict, plain: str, ensemble: str) -> list[dict]:
    specs = sorted({s for s, _ in grid}, key=lambda s: (s != ensemble, s))
    seeds = sorted({k for _, k in grid})
    rows = []
    for spec in specs + ["energy above the minimum"]:
        cols = {"own": [], "plain": [], "ensemble": []}
        for k in seeds:
            src = grid.get((plain, k)) if spec == "energy above the minimum" else grid.get((spec, k))
            if src is None or (plain, k) not in grid or (ensemble, k) not in grid:
                continue
            frames = sorted(src)
            if spec == "energy above the minimum":
                u = np.array([src[f][2] for f in frames])
                own = None
            else:
                u = np.array([src[f][1] for f in frames])
                own = np.array([src[f][0] for f in frames])
            for col, target in (("own", own), ("plain", grid[(plain, k)]), ("ensemble", grid[(ensemble, k)])):
                if target is None:
                    continue
                e = target if isinstance(target, np.ndarray) else np.array([target[f][0] for f in frames])
                cols[col].append(spearman(u, e))
        rows.append({"U from": spec, "seeds": len(cols["plain"]),
                     **{c: (float(np.mean(v)), float(np.std(v))) if v else None for c, v in cols.items()}})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", nargs="+", help="uq_methods.py output directories")
    ap.add_argument("--plain", default="gmm", help="the job whose network is one plain PaiNN")
    ap.add_argument("--ensemble", default="ensemble")
    a = ap.parse_args()
    grid = read_grid(a.grid)
    if not any(s == a.plain for s, _ in grid) or not any(s == a.ensemble for s, _ in grid):
        print(f"cross_ranking: the grid needs finished '{a.plain}' and '{a.ensemble}' jobs", file=sys.stderr)
        return 2
    print("| U from | seeds | ρ vs its own model's errors | ρ vs one plain PaiNN's errors | "
          "ρ vs the ensemble's errors |")
    print("|---|---|---|---|---|")
    for r in cross_table(grid, a.plain, a.ensemble):
        cells = ["—" if r[c] is None else f"{r[c][0]:.3f} ± {r[c][1]:.3f}" for c in ("own", "plain", "ensemble")]
        print(f"| {r['U from']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
