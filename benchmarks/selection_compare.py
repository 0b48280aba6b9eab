"""Two finished multi-seed loops compared per generation: test force MAE and stable-MD fraction of one method,
each as a mean over seeds with its 95% t-interval (the seed is the unit), and the paired difference B − A
(paired on the seed: within a seed both loops share the initial split, the MD starts and the attack's
starting structures) with its t-interval; also the labels each loop had added before the generation, so that
an equal label budget can be checked.  Written for the md sampler's candidate selection
(``sampling: {selection: geometric}`` against ``features``; issue: feature-space selection at equal labels)
but it compares any two loops of the same seeds.

    python benchmarks/selection_compare.py runs/sel_geometric runs/sel_features --method ensemble
    python benchmarks/selection_compare.py A B --json compare.json

Sources: ``seedS/summary.json`` (``generations[g][method]``: ``test.forces_mae``, ``md.fraction_stable``)
and ``seedS/genG/METHOD/attack/label.json`` (``n_added``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from uqpot.metrics.intervals import mean_interval, paired_difference

QUANTITIES = (("forces_mae", ("test", "forces_mae"), (0.0, None)),
              ("fraction_stable", ("md", "fraction_stable"), (0.0, 1.0)))


def _seeds(run: Path) -> dict[int, dict]:
    out = {}
    for d in sorted(run.glob("seed*")):
        if d.name[4:].isdigit() and (d / "summary.json").is_file():
            out[int(d.name[4:])] = json.loads((d / "summary.json").read_text())
    return out


def _value(summary: dict, g: int, method: str, path: tuple) -> float:
    rec = summary.get("generations", {}).get(str(g), {}).get(method, {})
    for key in path:
        rec = rec.get(key, {}) if isinstance(rec, dict) else {}
    return float(rec) if isinstance(rec, (int, float)) else float("nan")


def _labels_before(run: Path, seed: int, g: int, method: str) -> int:
    n = 0
    for h in range(1, g):
        p = run / f"seed{seed}" / f"gen{h}" / method / "attack" / "label.json"
        if p.is_file():
            n += int(json.loads(p.read_text()).get("n_added", 0))
    return n


def compare(a: Path, b: Path, method: str) -> list[dict]:
    sa, sb = _seeds(a), _seeds(b)
    seeds = sorted(set(sa) & set(sb))
    gens = sorted({int(g) for s in seeds for g in sa[s].get("generations", {})}
                  & {int(g) for s in seeds for g in sb[s].get("generations", {})})
    rows = []
    for g in gens:
        row = {"generation": g, "seeds": seeds,
               "labels_a": [_labels_before(a, s, g, method) for s in seeds],
               "labels_b": [_labels_before(b, s, g, method) for s in seeds]}
        for name, path, bounds in QUANTITIES:
            va = [_value(sa[s], g, method, path) for s in seeds]
            vb = [_value(sb[s], g, method, path) for s in seeds]
            row[name] = {"a": va, "b": vb, "mean_a": mean_interval(va, bounds=bounds),
                         "mean_b": mean_interval(vb, bounds=bounds), "b_minus_a": paired_difference(vb, va)}
        rows.append(row)
    return rows


def _fmt(iv) -> str:
    m, lo, hi = iv
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="the first loop's output (seed0, seed1, ...)")
    ap.add_argument("b", type=Path, help="the second loop's output, same seeds")
    ap.add_argument("--method", default="ensemble")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = compare(args.a, args.b, args.method)
    print(f"A = {args.a}, B = {args.b}, method {args.method}; mean over seeds [95% t-interval], B − A paired on "
          f"the seed")
    for r in rows:
        print(f"gen {r['generation']} (seeds {r['seeds']}; labels added before: A {r['labels_a']}, B {r['labels_b']})")
        for name, *_ in QUANTITIES:
            q = r[name]
            print(f"  {name:16s} A {_fmt(q['mean_a'])}   B {_fmt(q['mean_b'])}   B − A {_fmt(q['b_minus_a'])}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
