"""Ensemble members with one shared batch order against members with their own orders.

uqpot trains an ensemble's M members as one stacked module.  With ``train.member_order: shared`` the stack
sees one permutation per epoch; M separately trained networks each shuffle with their own generator, and
``member_order: independent`` (the default for one molecule) gives the stacked members exactly those orders.
For every replicate seed s, on the same split, the variants (``--variants``):

* ``shared``: ``uq.method: ensemble``, member seeds s, ..., s+M-1, one batch order (seeded by s);
* ``stacked_independent``: the same with ``member_order: independent`` (member k shuffles with seed s+k);
* ``per_member_splits``: as ``stacked_independent``, and every member on its own train/val split of the pool
  (``uq.splits: per_member``, SI Sec. I), the split's sizes unchanged;
* ``separate``: M single networks with seeds s, ..., s+M-1 trained one by one, assembled into one ensemble
  (:meth:`uqpot.uq.ensemble.Ensemble.from_members`), calibrated on the same validation set.

Member k is initialised identically in every variant, so they differ only in the batch orders (and, between
the stacked and separate ones, in float rounding).  Prints Spearman and ROC-AUC per variant with 95%
t-intervals over seeds, and each variant's paired difference (by seed) to ``--baseline`` (default ``shared``).

    python benchmarks/ensemble_diversity.py --data ../shared/data/ammonia_public.extxyz --ood 5.0 \\
        --seeds 0,10,20 --epochs 500 --variants shared,separate --out runs/div_ammonia
    python benchmarks/ensemble_diversity.py --data ../shared/data/rmd17_ethanol_800.extxyz --split 200,100,300 \\
        --features 64 --seeds 0,10,20 --epochs 100 --variants shared,stacked_independent --out runs/div_ethanol
    python benchmarks/ensemble_diversity.py --data ../shared/data/ammonia_public.extxyz --ood 5.0 \
        --seeds 0,10,20,30,40 --epochs 500 --variants stacked_independent,per_member_splits \
        --baseline stacked_independent --out runs/div_splits
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from uqpot.core.determinism import member_seeds
from uqpot.data.io import read_structures
from uqpot.metrics.intervals import fmt, mean_interval, paired_difference
from uqpot.fit.grid import Job, run_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from uq_methods import splits  # noqa: E402  (the same splits as the UQ-method benchmark)

KEYS = ("spearman", "roc_auc_p20", "roc_auc_p50", "forces_mae", "miscalibration_area", "cnll")


def independent_metrics(member_jobs: list[Job], data, members_out: Path) -> dict:
    """The M single networks as one ensemble: calibration on the validation set, metrics on the test set."""
    import uqpot
    from uqpot.evaluation.evaluate import assess, fit_calibration
    from uqpot.uq.ensemble import Ensemble

    path = members_out / "metrics.json"
    if path.is_file():
        return json.loads(path.read_text())
    sets = {k: data.subset(np.asarray(v, dtype=int)) for k, v in member_jobs[0].indices.items()}
    ens = Ensemble.from_members([uqpot.load(Path(j.out) / "model.pt") for j in member_jobs])
    metrics, _ = assess(ens, sets["test"], 100, fit_calibration(ens, sets["val"], 100))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, default=float))
    return metrics


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="400,100,300")
    ap.add_argument("--ood", type=float, default=None)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seeds", default="0,10,20", help="replicate seeds (members use s..s+M-1: keep them apart)")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--compile", default="auto", choices=("auto", "true", "false"), help="train.compile")
    ap.add_argument("--variants", default="shared,stacked_independent,separate")
    ap.add_argument("--baseline", default="shared", help="the variant the paired differences are taken against")
    ap.add_argument("--executor", default="none")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    data = read_structures(a.data)
    idx = {k: v.tolist() for k, v in splits(a, len(data), data.energies(), a.split_seed).items()}
    seeds = [int(s) for s in a.seeds.split(",")]
    model = {"features": a.features}
    train = {"epochs": a.epochs, "lr": a.lr, "batch_size": a.batch, "lr_patience": a.patience, "val_batch_size": 100,
             "compile": {"auto": "auto", "true": True, "false": False}[a.compile]}
    out = Path(a.out)
    variants = a.variants.split(",")
    jobs, groups, variant_of = [], {}, {}
    for s in seeds:
        for v, order, extra in (("shared", "shared", {}), ("stacked_independent", "independent", {}),
                                 ("per_member_splits", "independent", {"splits": "per_member"})):
            if v in variants:  # the shared variant keeps its old directory name
                name = "stacked" if v == "shared" else v
                jobs.append(Job(name=f"{v}-s{s}", data=a.data, indices=idx, method="ensemble", seed=s,
                                out=str(out / f"{name}_s{s}"), model=model, uq={"members": a.members, **extra},
                                train={**train, "member_order": order}))
                variant_of[jobs[-1].name] = v
        if "separate" in variants:
            # the seeds the stacked ensemble of seed s gives its members
            groups[s] = [Job(name=f"single-s{ms}", data=a.data, indices=idx, method="none", seed=ms,
                             out=str(out / f"independent_s{s}" / f"member{k}"), model=model, train=train)
                         for k, ms in enumerate(member_seeds(s, a.members))]
            jobs += groups[s]
    executor = None
    if a.executor != "none":
        from uqpot.core.executor import get_executor

        executor = get_executor(a.executor)
    try:
        results = run_grid(jobs, executor, progress=lambda k, n, j: print(f"[{k}/{n}] {j.name}", flush=True))
    finally:
        if executor is not None:
            executor.close()
    res = {v: {} for v in variants}
    for j, r in zip(jobs, results):
        if j.name in variant_of:
            res[variant_of[j.name]][j.seed] = r["test"]
    for s in groups:
        res["separate"][s] = independent_metrics(groups[s], data, out / f"independent_s{s}")
    print(f"\n{len(idx['train'])} train / {len(idx['val'])} val / {len(idx['test'])} test; {a.members} members, "
          f"{a.features} features, epochs ≤ {a.epochs}, lr {a.lr}, batch {a.batch}; seeds {seeds}")
    rows = []
    for k in KEYS:
        vals = {v: [res[v][s].get(k) for s in seeds] for v in variants}
        row = {"metric": k, **{v: mean_interval(vals[v]) for v in variants},
               "per_seed": {v: dict(zip(map(str, seeds), vals[v])) for v in variants}}
        base = a.baseline
        if base in variants:
            row.update({f"{v}_minus_{base}": paired_difference(vals[v], vals[base]) for v in variants if v != base})
        rows.append(row)
        print(f"{k:>20s} | " + " | ".join(f"{v} {fmt(row[v])}" for v in variants) + "".join(
            f" | {v} − {base} {fmt(row[f'{v}_minus_{base}'])}" for v in variants if f"{v}_minus_{base}" in row))
    for r in rows:
        print(json.dumps(r, default=float))


if __name__ == "__main__":
    main()
