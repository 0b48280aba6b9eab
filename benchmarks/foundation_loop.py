"""Active learning from a foundation model against from scratch, per generation, at the labels each had.

Reads finished ``uqpot loop`` runs: ``--foundation DIR`` (loops with ``init_model``, e.g. SevenNet-0 from
``uqpot convert 7net-0``; one ``DIR/seed<s>`` per seed, or DIR itself for one seed) and ``--scratch DIR`` (the
same system, oracle and label store, trained from random weights, e.g. ``uqpot reproduce ammonia --preset
quick``), for one UQ method (``--method``), and prints per generation and side: the training structures (the
labels the model had: the initial set plus the oracle's labels of the earlier generations' samples), the test
force MAE and the Spearman ρ of U against the force error (means over seeds, 95% t-intervals), and the
stable-MD fraction with the seed as the unit (:func:`uqpot.metrics.intervals.seed_proportion`).  Then the
first generation of the foundation model whose force MAE is at most the from-scratch model's last one.

    python benchmarks/foundation_loop.py --foundation runs/fl --scratch runs/ammonia_quick --method gmm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from uqpot.metrics.intervals import fmt, mean_interval, paired_difference, seed_proportion


def _summaries(root: Path) -> list[tuple[str, dict]]:
    dirs = sorted(p for p in root.glob("seed*") if (p / "summary.json").is_file())
    dirs = dirs or ([root] if (root / "summary.json").is_file() else [])
    return [(d.name, json.loads((d / "summary.json").read_text())) for d in dirs]


def table(root: Path, method: str) -> list[dict]:
    """Per generation: n_train (per seed), force MAE, Spearman, stable counts (per seed)."""
    runs = _summaries(root)
    gens = sorted({int(g) for _, r in runs for g in r.get("generations", {})})
    rows = []
    for g in gens:
        pairs = [(name, r["generations"][str(g)][method]) for name, r in runs
                 if method in r.get("generations", {}).get(str(g), {})]
        pairs = [(name, x) for name, x in pairs if "test" in x]
        if not pairs:
            continue
        got = [x for _, x in pairs]
        md = [(round(x["md"]["fraction_stable"] * x["md"]["runs"]), x["md"]["runs"]) for x in got if "md" in x]
        rows.append({"generation": g, "seeds": len(got), "n_train": [x["n_train"] for x in got],
                     "forces_mae": [x["test"]["forces_mae"] for x in got],
                     "spearman": [x["test"]["spearman"] for x in got], "md": md,
                     "by_seed": {name: x["test"]["forces_mae"] for name, x in pairs}})
    return rows


def _cell(values) -> str:
    return fmt(mean_interval(values)) if len(values) > 1 else f"{values[0]:.3f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--foundation", type=Path, required=True)
    ap.add_argument("--scratch", type=Path, required=True)
    ap.add_argument("--method", default="gmm")
    a = ap.parse_args(argv)
    sides = {"foundation model": table(a.foundation, a.method), "from scratch": table(a.scratch, a.method)}
    print(f"method {a.method}; means over seeds [95% t-interval]; stable MD with the seed as the unit")
    print("| start | generation | seeds | training structures | force MAE (kcal/mol/Å) | Spearman | stable MD |")
    print("|---|---|---|---|---|---|---|")
    for side, rows in sides.items():
        for r in rows:
            n = r["n_train"]
            labels = f"{min(n)}" if min(n) == max(n) else f"{min(n)}-{max(n)}"
            (p, lo, hi), label = seed_proportion(r["md"])
            md = f"{p:.3f} [{lo:.3f}, {hi:.3f}] ({label})" if r["md"] else ""
            print(f"| {side} | {r['generation']} | {r['seeds']} | {labels} | {_cell(r['forces_mae'])} | "
                  f"{_cell(r['spearman'])} | {md} |")
    scratch, found = sides["from scratch"], sides["foundation model"]
    paired = []
    for f, s in zip(found, scratch):
        common = sorted(set(f["by_seed"]) & set(s["by_seed"]))
        if len(common) >= 2:
            d = paired_difference([f["by_seed"][k] for k in common], [s["by_seed"][k] for k in common])
            paired.append(f"generation {f['generation']}: {fmt(d)} over {len(common)} seeds")
    if paired:
        print("\nforce MAE, foundation model − from scratch, paired on the seed (its initial split): "
              + "; ".join(paired))
    if scratch and found:
        final = float(np.mean(scratch[-1]["forces_mae"]))
        hit = next((r for r in found if np.mean(r["forces_mae"]) <= final), None)
        n = hit["n_train"] if hit else [0]
        where = (f"generation {hit['generation']} ({min(n)}{'' if min(n) == max(n) else f'-{max(n)}'} training structures)"
                 if hit else "none of its generations")
        print(f"\nfrom scratch, last generation ({scratch[-1]['generation']}): force MAE {final:.3f}; the foundation "
              f"model reaches it at {where}")


if __name__ == "__main__":
    main()
