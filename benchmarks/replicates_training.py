"""Wall time of a study's training step against its number of seeds: the seeds' networks of each method
trained one after another (as separate runs) and in one stack (:mod:`uqpot.fit.replicates`).

    OMP_NUM_THREADS=1 python benchmarks/replicates_training.py --data ammonia_public.extxyz \
        [--preset configs/ammonia_quick.yaml] [--counts 1,2,4,8] [--methods ensemble,mve,evidential,none] \
        [--epochs 30] [--out runs/replicates_training]

The model and training settings are the preset's (``loop.model``, ``loop.train``, ``loop.uq``; ``--epochs``
overrides its epochs: the time per epoch is what is compared); the data is generation 1's: the preset's
``data.n_train`` lowest-energy structures, each seed its own split (``loop.data.val_fraction``), 20 test
structures.  Separate runs: seed s trained alone, one after another, for s = 0 .. max(counts) - 1; the
separate time of S seeds is the sum of the first S (what a loop in one process spends).  Stacked: one
training of S seeds for each count.  Every stacked replicate is checked against its separate run (test
force MAE, relative difference).  One thread (``torch.set_num_threads(1)``).  Prints one row per (method,
seeds) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from uqpot.data.io import read_structures
from uqpot.fit.replicates import Replicate, fit_replicates, why_not_stacked
from uqpot.metrics.intervals import fmt, mean_interval, paired_difference
from uqpot.fit.run import fit_model
from uqpot.nn.painn import PaiNNOptions
from uqpot.train.config import TrainConfig
from uqpot.uq.options import parse_uq


def replicates(data, seeds: int, n_train: int, val_fraction: float, out: Path, method: str) -> list[Replicate]:
    order = np.argsort(data.energies())
    pool, test = data.subset(np.sort(order[:n_train])), data.subset(np.sort(order[n_train:n_train + 20]))
    n_val = max(1, int(round(val_fraction * n_train)))
    reps = []
    for s in range(seeds):
        perm = np.random.default_rng(s).permutation(n_train)
        reps.append(Replicate(s, pool.subset(np.sort(perm[n_val:])), pool.subset(np.sort(perm[:n_val])), test,
                              out / method / f"seed{s}"))
    return reps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="an extxyz file of one molecule (e.g. ammonia_public.extxyz)")
    ap.add_argument("--preset", type=Path, default=Path(__file__).parents[1] / "configs" / "ammonia_quick.yaml")
    ap.add_argument("--counts", default="1,2,4,8")
    ap.add_argument("--methods", default="ensemble,mve,evidential,none")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/replicates_training"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    preset = yaml.safe_load(args.preset.read_text())
    loop = preset["loop"]
    model_cfg = PaiNNOptions(**loop["model"])
    train_cfg = TrainConfig(**{**loop["train"], "epochs": args.epochs, "progress": False})
    n_train, val_fraction = int(preset["data"]["n_train"]), float(loop.get("data", {}).get("val_fraction", 0.2))
    data = read_structures(args.data)
    counts = [int(c) for c in args.counts.split(",")]
    shutil.rmtree(args.out, ignore_errors=True)
    warm = replicates(data, 2, n_train, val_fraction, args.out / "warm-up", "none")  # first calls: not timed
    fit_replicates(model_cfg, parse_uq({"method": "none"}), train_cfg.model_copy(update={"epochs": 1}), warm,
                   args.out / "warm-up" / "stack")
    rows, separate_mae = [], {}
    for method in args.methods.split(","):
        uq = parse_uq({"method": method, **loop.get("uq", {}).get(method, {})})
        separate, mae = [], {}
        for rep in replicates(data, max(counts), n_train, val_fraction, args.out / "separate", method):
            t0 = time.perf_counter()
            s = fit_model(model_cfg, uq, train_cfg, rep.seed, rep.train, rep.val, rep.test, rep.out)
            separate.append(time.perf_counter() - t0)
            mae[rep.seed] = s["test"]["forces_mae"]
        separate_mae[method] = mae
        for S in counts:
            reps = replicates(data, S, n_train, val_fraction, args.out / f"stacked{S}", method)
            row = {"method": method, "seeds": S, "separate_s": round(sum(separate[:S]), 1)}
            why = why_not_stacked(model_cfg, uq, train_cfg, reps, stack_ensembles=True)  # measured whatever auto does
            if why is not None and S > 1:
                row["stacked_s"], row["why_not"] = None, why
            else:
                t0 = time.perf_counter()
                out = fit_replicates(model_cfg, uq, train_cfg, reps, args.out / f"stack{S}" / method) if S > 1 else \
                    [fit_model(model_cfg, uq, train_cfg, 0, reps[0].train, reps[0].val, reps[0].test, reps[0].out)]
                row["stacked_s"] = round(time.perf_counter() - t0, 1)
                row["max_rel_diff_forces_mae"] = float(max(abs(o["test"]["forces_mae"] / mae[r.seed] - 1)
                                                           for o, r in zip(out, reps)))
                row["stacked_forces_mae"] = [o["test"]["forces_mae"] for o in out]
                row["speedup"] = round(row["separate_s"] / row["stacked_s"], 2)
            rows.append(row)
            print(f"{method:>11} {S:>3} seeds: separate {row['separate_s']:8.1f} s, stacked "
                  f"{row['stacked_s'] if row['stacked_s'] is not None else '-':>8} s"
                  + (f" ({row['speedup']}x; test F MAE equal to {row['max_rel_diff_forces_mae']:.1e})"
                     if row.get("speedup") else f" ({row.get('why_not', '')})"), flush=True)
    # the largest stack's replicates against the same seeds trained alone: equal in law (two valid runs each)?
    print("\ntest force MAE (kcal/mol/Å) of the largest count's seeds, mean with 95% t-interval; stacked − separate "
          "paired on the seed")
    for method in args.methods.split(","):
        last = [r for r in rows if r["method"] == method and r.get("stacked_forces_mae")][-1]
        sep = [separate_mae[method][s] for s in range(last["seeds"])]
        diff = paired_difference(last["stacked_forces_mae"], sep)
        last["paired_difference"] = [float(x) for x in diff]
        print(f"{method:>11}: separate {fmt(mean_interval(sep), 2)}, stacked "
              f"{fmt(mean_interval(last['stacked_forces_mae']), 2)}, difference {fmt(diff, 2)}")
    res = {"epochs": args.epochs, "preset": str(args.preset), "threads": 1, "load_after": os.getloadavg(),
           "rows": rows}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
