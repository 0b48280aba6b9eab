"""Train every UQ method on one data set and print the paper's metrics side by side.

In-domain (random split, e.g. rMD17 ethanol 400 / 100 / 300):

    python benchmarks/uq_methods.py --data ETHANOL.extxyz --split 400,100,300 --out runs/uq_ethanol

Out of domain (train on structures below an energy threshold, relative to the lowest one; test above it;
validation = 20% of the low-energy structures), e.g. ammonia below 5 kcal/mol:

    python benchmarks/uq_methods.py --data AMMONIA.extxyz --ood 5.0 --out runs/uq_ammonia

Options: --methods ensemble,mve,evidential,gmm  --seeds 0,1,2  --epochs 300  --lr 5e-4  --batch 16
--members 5  --executor none|local.  Finished jobs are skipped on a rerun.  Prints a table (mean ± std over
seeds) and one JSON line per method.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from uqpot.data.io import read_structures
from uqpot.workflow.benchmark import PAPER_TABLE_S2, Job, format_table, run_grid, table


def splits(args, n, energies, seed):
    rng = np.random.default_rng(seed)
    if args.ood is not None:
        rel = energies - energies.min()
        low, high = np.nonzero(rel < args.ood)[0], np.nonzero(rel >= args.ood)[0]
        low = rng.permutation(low)
        n_val = int(round(0.2 * len(low)))
        return {"train": np.sort(low[n_val:]), "val": np.sort(low[:n_val]), "test": high}
    a, b, c = (int(x) for x in args.split.split(","))
    perm = rng.permutation(n)
    return {"train": np.sort(perm[:a]), "val": np.sort(perm[a:a + b]), "test": np.sort(perm[a + b:a + b + c])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="400,100,300")
    ap.add_argument("--ood", type=float, default=None, help="energy threshold (kcal/mol) for an OOD split")
    ap.add_argument("--methods", default="ensemble,mve,evidential,gmm")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--max-hours", type=float, default=None)
    ap.add_argument("--executor", default="none")
    ap.add_argument("--out", required=True)
    ap.add_argument("--molecule", default=None, help="name for the paper's Table S2 column (e.g. ethanol)")
    a = ap.parse_args()

    data = read_structures(a.data)
    idx = splits(a, len(data), data.energies(), a.split_seed)
    jobs = []
    for method in a.methods.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            uq = {"members": a.members} if method == "ensemble" else {}
            train = {"epochs": a.epochs, "lr": a.lr, "batch_size": a.batch, "lr_patience": a.patience,
                     "val_batch_size": 100, "max_hours": a.max_hours}
            jobs.append(Job(name=f"{method}-s{seed}", data=str(a.data), indices={k: v.tolist() for k, v in idx.items()},
                            method=method, seed=seed, out=str(Path(a.out) / f"{method}_s{seed}"), uq=uq, train=train))
    executor = None
    if a.executor != "none":
        from uqpot.executor import get_executor

        executor = get_executor(a.executor)
    results = run_grid(jobs, executor, progress=lambda k, n, j: print(f"[{k}/{n}] {j.name} done", flush=True))
    rows = table(results)
    # training cost per epoch relative to one plain PaiNN (the GMM's network is trained with the plain loss)
    per_epoch = {r["method"]: r["wall_seconds"] / max(r["epochs"], 1) for r in rows}
    for r in rows:
        r["cost_per_epoch_vs_one_model"] = per_epoch[r["method"]] / per_epoch["gmm"] if "gmm" in per_epoch else None
    print(f"\n{len(idx['train'])} train / {len(idx['val'])} val / {len(idx['test'])} test; epochs ≤ {a.epochs}, "
          f"lr {a.lr}, batch {a.batch}")
    print(format_table(rows))
    if a.molecule in PAPER_TABLE_S2:
        print("paper Table S2 ROC-AUC (20th percentile): " +
              ", ".join(f"{m} {v[0]}" for m, v in PAPER_TABLE_S2[a.molecule].items()))
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    sys.exit(main())
