"""The two training paths on the same data: eager (``train.compile: false``, autograd with
``create_graph=True``) against compiled (``train.compile: true``, one ``torch.compile``d step on the dense
layout, forces by ``torch.func.grad``), with a third, eager from initial weights nudged by one float32 ulp, as
the control that differs from the eager run by a rounding-sized perturbation alone.

For every seed s, every path trains the same model (an ensemble of ``--members`` ≥ 2 networks, member k
seeded s·100 + k) from the same initial weights on the same split with the
same batch orders, and is evaluated on the same test set (calibrated on the validation set).
Printed, per path: the test force MAE (kcal/mol/Å), Spearman ρ and ROC-AUC at the 20th percentile of the
force error (mean and 95% t-interval over seeds), the paired differences (by seed) of each path to
``--baseline`` (default ``eager``) with their t-intervals, and, per path, how far its first epoch's
training loss lies from the baseline's (relative; float tolerance means ~1e-7 in float32) and the first
epoch at which its history leaves the baseline's by more than 1e-3 (the float rounding of two routes to
the same step grows along a run: after that epoch two paths are two equally valid runs, not the same one).

    python benchmarks/training_paths.py --train data/train.extxyz --test data/test.extxyz \\
        --seeds 0,1,2,3,4 --members 5 --features 64 --epochs 150 --out runs/paths

One thread per run (``torch.set_num_threads(1)``), one run at a time; finished runs are read back on a
rerun (``--out``).  The first compiled run pays inductor's cold compilation, later seeds hit its cache.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import uqpot
from uqpot.data.io import read_structures
from uqpot.evaluation.evaluate import assess, fit_calibration
from uqpot.metrics.intervals import fmt, mean_interval, paired_difference
from uqpot.train.config import TrainConfig
from uqpot.train.trainer import Trainer
from uqpot.uq.ensemble import Ensemble

#: path name -> (train.compile, one-ulp nudge of the initial weights); train.layout "auto" on every path, so
#: that an ensemble's members keep their own batch orders on each (train.member_order: auto)
PATHS = {"eager": (False, False), "compiled": (True, False), "eager_ulp": (False, True)}
KEYS = ("forces_mae", "spearman", "roc_auc_p20", "energy_mae")


def build(a, seed: int, train):
    hp = dict(features=a.features, interactions=a.interactions, members=a.members,
              seeds=[seed * 100 + k for k in range(a.members)])
    model = Ensemble(potential=hp)
    model.fit_reference(train)
    return model


def run_one(a, path: str, seed: int, train, val, test, out: Path) -> dict:
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    compile_, nudge = PATHS[path]
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch, lr=a.lr, lr_patience=a.patience, compile=compile_,
                      progress=False, device="cpu")
    model = build(a, seed, train)
    if nudge:  # every initial weight moved to its next float32 towards +inf: a difference of rounding size
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.nextafter(p.float(), torch.full_like(p.float(), math.inf)))
    t0 = time.perf_counter()
    res = Trainer(model, train, val, cfg, out, seed=seed).fit()
    wall = time.perf_counter() - t0
    best = uqpot.load(out / "model.pt")
    metrics, _ = assess(best, test, 100, fit_calibration(best, val, 100))
    r = {"metrics": {k: metrics.get(k) for k in KEYS}, "history": res.history, "best_epoch": res.best_epoch,
         "compiled": res.compiled, "wall_s": wall}
    done.write_text(json.dumps(r, default=float))
    return r


def divergence(h, ref) -> tuple[float, int | None]:
    """(relative difference of the first epoch's training loss, first epoch whose training loss differs by
    more than 1e-3 relative, None if none) of history ``h`` against ``ref``."""
    n = min(len(h), len(ref))
    rel = [abs(h[i]["train_loss"] - ref[i]["train_loss"]) / abs(ref[i]["train_loss"]) for i in range(n)]
    first = next((h[i]["epoch"] for i in range(n) if rel[i] > 1e-3), None)
    return rel[0], first


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="training pool (split into train / val by --val)")
    ap.add_argument("--test", required=True)
    ap.add_argument("--val", type=int, default=16, help="validation structures drawn from the pool (seed 0)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--paths", default="eager,compiled,eager_ulp")
    ap.add_argument("--baseline", default="eager")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--interactions", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.members < 2:
        ap.error("--members: an ensemble of at least 2 (its uncertainty is what the ranking metrics read)")
    torch.set_num_threads(1)
    pool, test = read_structures(a.train), read_structures(a.test)
    perm = np.random.default_rng(0).permutation(len(pool))
    val, train = pool.subset(np.sort(perm[:a.val])), pool.subset(np.sort(perm[a.val:]))
    seeds = [int(s) for s in a.seeds.split(",")]
    paths = a.paths.split(",")
    res = {p: {} for p in paths}
    for s in seeds:  # paths alternate within a seed: load drifts hit every path alike
        for p in paths:
            res[p][s] = run_one(a, p, s, train, val, test, Path(a.out) / f"{p}_s{s}")
            m = res[p][s]["metrics"]
            print(f"seed {s} {p:>11s}: force MAE {m['forces_mae']:.3f}, Spearman {m['spearman']:.3f}, "
                  f"AUC20 {m['roc_auc_p20']:.3f}, {res[p][s]['wall_s']:.0f} s", flush=True)
    print(f"\n{len(train)} train / {len(val)} val / {len(test)} test; members {a.members}, features {a.features}, "
          f"interactions {a.interactions}, epochs {a.epochs}, lr {a.lr}, batch {a.batch}, float32; seeds {seeds}")
    base = a.baseline
    head = f"{'':>12s} | " + " | ".join(f"{k:>24s}" for k in KEYS) + " | epoch-1 loss rel. diff | leaves baseline at epoch"
    print(head)
    rows = []
    for p in paths:
        vals = {k: [res[p][s]["metrics"][k] for s in seeds] for k in KEYS}
        div = [divergence(res[p][s]["history"], res[base][s]["history"]) for s in seeds] if base in res else []
        row = {"path": p, **{k: mean_interval(vals[k]) for k in KEYS}, "per_seed": vals,
               "epoch1_rel": [d[0] for d in div], "leaves_at": [d[1] for d in div]}
        rows.append(row)
        print(f"{p:>12s} | " + " | ".join(f"{fmt(row[k]):>24s}" for k in KEYS)
              + f" | {max(row['epoch1_rel']) if div else float('nan'):.1e} | {row['leaves_at']}")
    for p in paths:
        if p == base:
            continue
        d = {k: paired_difference([res[p][s]["metrics"][k] for s in seeds],
                                  [res[base][s]["metrics"][k] for s in seeds]) for k in KEYS}
        rows.append({"path": f"{p} - {base}", **d})
        print(f"{p + ' - ' + base:>12s} | " + " | ".join(f"{fmt(d[k]):>24s}" for k in KEYS))
    print(json.dumps(rows, default=float))


if __name__ == "__main__":
    main()
