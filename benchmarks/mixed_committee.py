"""A committee of different backbones against same-architecture ensembles, on one out-of-domain test set.

Per seed s, on the training pool ``--train`` split into training and validation as
``benchmarks/finetune_modes.py`` splits it (seed s, ``--val-fraction``), so that the fine-tuned foundation
models of that script's ``--ensemble`` run (``--foundation DIR``: ``DIR/seed{s}/member{k}/model.pt``) share the
split:

* ``--members`` PaiNN networks and ``--mace-members`` MACE networks (default as many) trained from scratch
  (member k: seed 100·s + k);
* the ensembles ``uqpot wrap`` assembles from them: PaiNN × M, MACE × M (with 2 or more), the fine-tuned
  foundation model × M,
  and the mixed committee of member 0 of each (PaiNN, MACE, foundation model), each calibrated on the
  seed's validation split;
* ``uqpot evaluate`` on ``--test``: force MAE, Spearman, ROC-AUC at the 20th error percentile, cNLL and the
  miscalibration area, and the diversity ``spread_over_error`` (the members' force spread √U over the
  committee's force MAE, means over the test structures; U before calibration), printed as the mean over seeds
  with its 95% t-interval.

``--foundation`` may be given twice or more (``NAME=DIR``) to compare fine-tuned ensembles (e.g. copies that
differ by batch order only against copies each on its own split).

    python benchmarks/mixed_committee.py --train data/train.extxyz --test data/ood.extxyz \\
        --foundation runs/ft/ensemble_3_all --seeds 0,1,2 --out runs/mixed

Finished trainings and evaluations are read back on a rerun (``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from finetune_modes import _split
from uqpot.data.io import read_structures, write_extxyz
from uqpot.fit.run import fit_model
from uqpot.metrics.intervals import fmt, mean_interval
from uqpot.nn.backbone import parse_model
from uqpot.train.config import TrainConfig
from uqpot.uq.options import parse_uq

KEYS = ("forces_mae", "spearman", "roc_auc_p20", "cnll", "miscalibration_area")
COLUMNS = KEYS + ("spread_over_error",)
UQPOT = [sys.executable, "-m", "uqpot"]


def train_member(kind: str, seed: int, a, train, val, test, out: Path) -> Path:
    if not (out / "summary.json").is_file():
        cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, progress=False, stress_weight=0.0)
        t0 = time.perf_counter()
        fit_model(parse_model({"kind": kind}), parse_uq({"method": "none"}), cfg, seed, train, val, test, out)
        print(f"  trained {kind} seed {seed} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out / "model.pt"


def ensemble(files: list[Path], val: Path, test: Path, out: Path) -> dict:
    done = out / "eval" / "metrics.json"
    if not done.is_file():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(UQPOT + ["wrap", *map(str, files), "--method", "ensemble", "--val", str(val), "--out",
                                str(out / "ensemble.pt")], check=True)
        t0 = time.perf_counter()
        subprocess.run(UQPOT + ["evaluate", str(out / "ensemble.pt"), str(test), "--out", str(out / "eval")],
                       check=True, capture_output=True)
        (out / "seconds.json").write_text(json.dumps({"evaluate_s": round(time.perf_counter() - t0, 1)}))
    m = json.loads(done.read_text())
    table = np.genfromtxt(out / "eval" / "per_structure.csv", delimiter=",", names=True)
    # diversity: the members' force spread (√U, U the force variance over members, before calibration) over
    # the committee's force error, means over the test structures
    spread = float(np.mean(np.sqrt(table["uncertainty"])) / np.mean(table["forces_mae"]))
    return {**{k: m.get(k) for k in KEYS}, "spread_over_error": spread}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--foundation", action="append", required=True,
                    help="[NAME=]DIR with seed{s}/member{k}/model.pt: fine-tuned foundation models (finetune_modes.py "
                         "--ensemble); repeatable, the first joins the mixed committee")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--mace-members", type=int, default=None,
                    help="MACE networks per seed (default: --members; 1: MACE only in the committee, no MACE ensemble)")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=Path("runs/mixed_committee"))
    a = ap.parse_args(argv)
    a.mace_members = a.members if a.mace_members is None else a.mace_members
    data, test = read_structures(a.train), read_structures(a.test)
    seeds = [int(s) for s in a.seeds.split(",")]
    foundations = [(f.split("=", 1)[0], Path(f.split("=", 1)[1])) if "=" in f else ("fine-tuned foundation model", Path(f))
                   for f in a.foundation]
    rows: dict[str, list] = {}
    for s in seeds:
        tr, va = _split(len(data), a.val_fraction, s)
        train, val = data.subset(tr), data.subset(va)
        d = a.out / f"seed{s}"
        d.mkdir(parents=True, exist_ok=True)
        write_extxyz(val, d / "val.extxyz")
        counts = {"painn": a.members, "mace": a.mace_members}
        nets = {kind: [train_member(kind, 100 * s + k, a, train, val, test, d / f"{kind}{k}") for k in range(n)]
                for kind, n in counts.items()}
        plan = {f"PaiNN × {a.members}": nets["painn"]}
        if a.mace_members > 1:
            plan[f"MACE × {a.mace_members}"] = nets["mace"]
        for name, where in foundations:
            plan[f"{name} × {a.members}"] = [where / f"seed{s}" / f"member{k}" / "model.pt" for k in range(a.members)]
        first = plan[f"{foundations[0][0]} × {a.members}"][0]
        plan["committee: PaiNN + MACE + foundation model"] = [nets["painn"][0], nets["mace"][0], first]
        for name, files in plan.items():
            tag = name.split(":")[0].split(" ×")[0].replace(" ", "_")
            r = ensemble(files, d / "val.extxyz", a.test, d / tag)
            rows.setdefault(name, []).append(r)
            print(f"seed {s} {name}: " + ", ".join(f"{k} {r[k]:.3f}" for k in COLUMNS), flush=True)
    print(f"\n{a.test}: mean over seeds {seeds} [95% t-interval]")
    print("| ensemble | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, rs in rows.items():
        cells = [fmt(mean_interval([r[k] for r in rs])) if len(rs) > 1 else f"{rs[0][k]:.3f}" for k in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    (a.out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
