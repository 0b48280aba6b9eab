"""A foundation model's uncertainty before and after fine-tuning, per fine-tuning mode: the model file
``--init`` (e.g. ``uqpot convert 7net-0 --out 7net0.pt``) fine-tuned on ``--train`` (split into training and
validation, seeded) with ``finetune.trainable`` = each of ``--modes`` (``all``, ``readout``, ``last_blocks``
with ``--blocks``), for every seed, and a post-hoc UQ method (``--method``, default LLPR) fitted on the
fine-tuned network; also ``--ensemble M``: an ensemble of M copies fine-tuned one by one with ``trainable:
all`` (each its own seed and batch order; with ``--member-splits`` each its own train/validation split of the
pool as well; with ``--ensemble-readout reinit`` each copy's readout starts from its own seed,
``finetune.readout: reinit``, and ``--ensemble-trainable`` chooses what trains; :func:`ensemble_run`),
and the zero-shot model (no training, the same post-hoc method).  Every model is scored on ``--test`` with
uqpot's metrics (force MAE, Spearman, ROC-AUC at the 20th error percentile, cNLL, miscalibration area; for an
ensemble also its diversity, the members' force spread √U over its force MAE, means over the test structures, U
before calibration, as ``benchmarks/mixed_committee.py`` has it); printed as
mean over seeds with its 95% t-interval, the seconds per run and the weights each mode trained.

    python benchmarks/finetune_modes.py --init 7net0.pt --train data/train.extxyz --test data/ood.extxyz \\
        --seeds 0,1,2 --modes readout,last_blocks,all --epochs 30 --ensemble 3 --out runs/ft

Finished runs are read back on a rerun (``--out``).  ``--lr`` takes one learning rate per mode
(``readout=1e-3,last_blocks=3e-4,all=1e-4``: a larger step where fewer weights move).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from uqpot.data.io import read_structures, write_extxyz
from uqpot.fit.finetune import FinetuneSettings
from uqpot.fit.run import fit_model
from uqpot.metrics.intervals import fmt, mean_interval
from uqpot.nn import modelfile
from uqpot.train.config import TrainConfig
from uqpot.uq.options import parse_uq

KEYS = ("forces_mae", "spearman", "roc_auc_p20", "cnll", "miscalibration_area")


def _read_back(done: Path, metrics: Path) -> dict:
    """A finished run's result, its metrics completed from the run's own metrics file (results written before
    a metric joined :data:`KEYS`)."""
    res = json.loads(done.read_text())
    if any(k not in res["test"] for k in KEYS) and metrics.is_file():
        m = json.loads(metrics.read_text())
        m = m.get("test", m)
        res["test"] = {k: res["test"].get(k, m.get(k)) for k in KEYS}
    return res
DEFAULT_LR = {"readout": 1e-3, "last_blocks": 3e-4, "all": 1e-4}


def _split(n: int, val_fraction: float, seed: int):
    p = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(val_fraction * n)))
    return np.sort(p[k:]), np.sort(p[:k])


def run_one(a, name: str, uq: dict, ft: FinetuneSettings | None, lr: float, epochs: int, seed: int, data, test,
            out: Path, split_seed: int | None = None) -> dict:
    done = out / "result.json"
    if done.is_file():
        return _read_back(done, out / "summary.json")
    tr, va = _split(len(data), a.val_fraction, seed if split_seed is None else split_seed)
    cfg = TrainConfig(epochs=epochs, batch_size=a.batch_size, lr=lr, lr_patience=max(2, epochs // 5), progress=False,
                      member_order="auto", stress_weight=0.0)
    t0 = time.perf_counter()
    summary = fit_model(None, parse_uq(uq), cfg, seed, data.subset(tr), data.subset(va), test, out, init=[a.init],
                        finetune=ft)
    extra = modelfile.read(out / "model.pt").get("extra", {})
    res = {"name": name, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
           "test": {k: summary["test"].get(k) for k in KEYS}, "fine_tuning": extra.get("fine_tuning"),
           "best_epoch": summary.get("training", {}).get("best_epoch")}
    done.write_text(json.dumps(res, indent=1))
    return res


def _ensemble_name(a) -> str:
    what = a.ensemble_trainable + (", fresh readouts" if a.ensemble_readout == "reinit" else "")
    return f"ensemble({a.ensemble}) {what}" + (", own splits" if a.member_splits else "")


def ensemble_run(a, seed: int, lr: float, data, test) -> dict:
    """``a.ensemble`` copies of ``a.init`` fine-tuned one by one (``trainable: all``; member k trains with seed
    100·seed + k, so its own batch order, on the run's one split: one set of reference energies; a backbone without the dense layout cannot stack independent batch
    orders, and copies stacked from one file would stay identical; ``--member-splits``: member k on its own
    split, seeded 100·seed + k), then ``uqpot wrap ... --method ensemble``
    calibrated on the run's validation split and ``uqpot evaluate`` on ``test``."""
    tag = a.ensemble_trainable + ("_reinit" if a.ensemble_readout == "reinit" else "")
    out = a.out / (f"ensemble_{a.ensemble}_{tag}" + ("_own_splits" if a.member_splits else "")) / f"seed{seed}"
    done = out / "result.json"
    if done.is_file():
        return _read_back(done, out / "eval" / "metrics.json")
    t0 = time.perf_counter()
    members = []
    for k in range(a.ensemble):
        d = out / f"member{k}"
        run_one(a, f"member {k}", {"method": "none"},
                FinetuneSettings(trainable=a.ensemble_trainable, blocks=a.blocks, readout=a.ensemble_readout), lr, a.epochs,
                100 * seed + k, data, test, d, split_seed=100 * seed + k if a.member_splits else seed)
        members.append(str(d / "model.pt"))
    tr, va = _split(len(data), a.val_fraction, seed)
    write_extxyz(data.subset(va), out / "val.extxyz")
    uqpot = [sys.executable, "-m", "uqpot"]
    subprocess.run(uqpot + ["wrap", *members, "--method", "ensemble", "--val", str(out / "val.extxyz"), "--out",
                            str(out / "ensemble.pt")], check=True, capture_output=True)
    subprocess.run(uqpot + ["evaluate", str(out / "ensemble.pt"), str(a.test), "--out", str(out / "eval")], check=True,
                   capture_output=True)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    table = np.genfromtxt(out / "eval" / "per_structure.csv", delimiter=",", names=True)
    spread = float(np.mean(np.sqrt(table["uncertainty"])) / np.mean(table["forces_mae"]))
    res = {"name": _ensemble_name(a), "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
           "test": {**{k: metrics.get(k) for k in KEYS}, "spread_over_error": spread},
           "fine_tuning": {"weights_trained": a.ensemble_trainable, "readout": a.ensemble_readout}}
    done.write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--modes", default="readout,last_blocks,all")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--method", default="llpr")
    ap.add_argument("--option", action="append", default=[],
                    help="KEY=VALUE option of --method (e.g. output=atomic_energy for LLPR on large cells); repeatable")
    ap.add_argument("--ensemble", type=int, default=0, help="members of a fine-tuned ensemble (0: none)")
    ap.add_argument("--member-splits", action="store_true",
                    help="each ensemble member fine-tunes on its own train/validation split of the pool (seed "
                         "100·seed + k): members differ by their data, not only their batch order; their reference "
                         "shifts then differ and uqpot wrap assembles them as a committee")
    ap.add_argument("--ensemble-readout", choices=("keep", "reinit"), default="keep",
                    help="reinit: each copy's readout starts from its own seed (finetune.readout: reinit)")
    ap.add_argument("--ensemble-trainable", choices=("all", "readout", "last_blocks"), default="all",
                    help="what trains in each copy (finetune.trainable; its learning rate from --lr)")
    ap.add_argument("--no-zero-shot", dest="zero_shot", action="store_false",
                    help="skip the zero-shot row (e.g. another process runs the first seed)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", default="", help="MODE=LR,... (default: readout 1e-3, last_blocks 3e-4, all 1e-4)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=Path("runs/finetune_modes"))
    a = ap.parse_args(argv)
    lrs = {**DEFAULT_LR, **{k: float(v) for k, v in (x.split("=") for x in a.lr.split(",") if x)}}
    data, test = read_structures(a.train), read_structures(a.test)
    seeds = [int(s) for s in a.seeds.split(",")]
    runs: dict[str, list] = {}
    # zero-shot: the post-hoc method on the untrained network (one epoch at a vanishing step: fit_model's
    # route, the weights do not move measurably)
    uq = {"method": a.method, **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in a.option)}}
    plan = [("zero-shot", uq, FinetuneSettings(trainable="readout"), 1e-12, 1, seeds[:1])] if a.zero_shot else []
    plan += [(m if m != "last_blocks" else f"last_blocks({a.blocks})", uq,
              FinetuneSettings(trainable=m, blocks=a.blocks), lrs[m], a.epochs, seeds) for m in a.modes.split(",") if m]
    for name, uq, ft, lr, epochs, ss in plan:
        for s in ss:
            d = a.out / name.replace("(", "_").replace(")", "").replace(" ", "_") / f"seed{s}"
            r = run_one(a, name, uq, ft, lr, epochs, s, data, test, d)
            runs.setdefault(name, []).append(r)
            print(f"{name} seed {s}: " + ", ".join(f"{k} {r['test'][k]:.3f}" for k in KEYS) + f" ({r['seconds']} s)",
                  flush=True)
    if a.ensemble:
        name = _ensemble_name(a)
        for s in seeds:
            runs.setdefault(name, []).append(ensemble_run(a, s, lrs[a.ensemble_trainable], data, test))
            r = runs[name][-1]
            print(f"{name} seed {s}: " + ", ".join(f"{k} {r['test'][k]:.3f}" for k in (*KEYS, "spread_over_error")
                                                    if k in r["test"]) + f" ({r['seconds']} s)", flush=True)
    print(f"\n{a.test}: mean over seeds [95% t-interval]")
    cols = KEYS + ("spread_over_error",)
    print("| model | seeds | weights trained | " + " | ".join(cols) + " | s per run |")
    print("|---" * (len(cols) + 4) + "|")
    for name, rs in runs.items():
        ft = rs[0].get("fine_tuning") or {}
        cells = ["" if k not in rs[0]["test"] else fmt(mean_interval([r["test"][k] for r in rs])) if len(rs) > 1
                 else f"{rs[0]['test'][k]:.3f}" for k in cols]
        print(f"| {name} | {len(rs)} | {ft.get('weights_trained', '')} | " + " | ".join(cells)
              + f" | {np.mean([r['seconds'] for r in rs]):.0f} |")
    (a.out / "summary.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
