"""PaiNN against MACE on one data set, through the user's commands: ``uqpot train`` (``model.kind: painn |
mace``, same split, epochs and training settings), then ``uqpot wrap --method gmm|llpr`` and ``uqpot evaluate``
on the test split.  Prints, per backbone, the test force MAE at the same number of epochs, the validation
force MAE each reached by the same wall time (the shorter of the two trainings), the training time, and
Spearman / ROC-AUC (20th percentile) of GMM and LLPR on it.

    python benchmarks/backbones.py --data ETHANOL.extxyz --split 400,100,300 --epochs 30 --out runs/backbones

``--painn KEY=VALUE,...`` and ``--mace KEY=VALUE,...`` set the model sections (defaults: the paper's PaiNN,
128 features and 3 interactions; a small MACE, 32 channels, max_L 1, correlation 3, 2 interactions, 5 Å).
Finished steps are skipped on a rerun (the run directories are uqpot's own).  Needs ``uqpot[mace]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

UQPOT = [sys.executable, "-m", "uqpot.cli.main"]


def _kv(text: str) -> dict:
    out = {}
    for part in filter(None, (text or "").split(",")):
        k, v = part.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr}")
    return r.stdout


def _history(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _at_time(hist: list[dict], t: float) -> float:
    """The best validation force MAE reached by cumulative training time ``t``."""
    best = float("inf")
    for row in hist:
        if row["seconds"] > t * (1 + 1e-9):
            break
        best = min(best, row["val_forces_mae"])
    return best


def _fmt(x: float) -> str:
    return "-" if x == float("inf") else f"{x:.3f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--split", default="400,100,300")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--mace-lr", type=float, default=None, help="MACE's learning rate (default: --lr)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--painn", default="")
    ap.add_argument("--mace", default="")
    ap.add_argument("--methods", default="gmm,llpr")
    ap.add_argument("--out", type=Path, default=Path("runs/backbones"))
    a = ap.parse_args(argv)
    n_train, n_val, n_test = (int(x) for x in a.split.split(","))
    models = {"painn": {"features": 128, "interactions": 3, "rbf": 20, "cutoff": 5.0, **_kv(a.painn)},
              "mace": {"kind": "mace", "channels": 32, "max_L": 1, "correlation": 3, "interactions": 2,
                       "cutoff": 5.0, **_kv(a.mace)}}
    res = {}
    for name, model in models.items():
        d = (a.out / name).resolve()
        cfg = {"seed": a.seed, "out": str(d), "data": {"path": str(a.data.resolve())},
               "split": {"train": n_train, "val": n_val, "test": n_test, "seed": a.seed}, "model": model,
               "train": {"epochs": a.epochs, "batch_size": a.batch,
                         "lr": a.mace_lr if name == "mace" and a.mace_lr else a.lr, "lr_patience": 10,
                         "progress": False}}
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        if not (d / "summary.json").is_file():
            _run(UQPOT + ["train", str(a.out / f"{name}.yaml")])
        summary = json.loads((d / "summary.json").read_text())
        hist = _history(d / "history.csv")
        r = {"test_forces_mae": summary["test"]["forces_mae"], "test_energy_mae": summary["test"]["energy_mae"],
             "train_seconds": hist[-1]["seconds"], "epochs": len(hist), "history": hist}
        for m in filter(None, a.methods.split(",")):
            wrapped = d / f"model_{m}.pt"
            if not wrapped.is_file():
                _run(UQPOT + ["wrap", str(d / "model.pt"), "--method", m])
            ev = d / f"eval_{m}"
            if not (ev / "metrics.json").is_file():
                _run(UQPOT + ["evaluate", str(wrapped), str(a.data.resolve()), "--indices", f"{d / 'split.json'}:test",
                              "--out", str(ev)])
            met = json.loads((ev / "metrics.json").read_text())
            met = met.get("metrics", met)
            r[m] = {k: met.get(k) for k in ("spearman", "roc_auc_p20", "miscalibration_area", "cnll")}
        res[name] = r
    t = min(r["train_seconds"] for r in res.values())
    print(f"{a.data.name}: split {a.split}, {a.epochs} epochs, lr {a.lr} (MACE {a.mace_lr or a.lr}), batch {a.batch}, "
          f"seed {a.seed}")
    print(f"{'backbone':8s} {'test F MAE':>10s} {'test E MAE':>10s} {'train s':>8s} {'val F MAE @' + f'{t:.0f}s':>14s} "
          + " ".join(f"{m + ' rho':>9s} {m + ' AUC20':>10s}" for m in a.methods.split(",")))
    for name, r in res.items():
        print(f"{name:8s} {r['test_forces_mae']:10.3f} {r['test_energy_mae']:10.3f} {r['train_seconds']:8.0f} "
              f"{_fmt(_at_time(r['history'], t)):>14s} "
              + " ".join(f"{r[m]['spearman']:9.3f} {r[m]['roc_auc_p20']:10.3f}" for m in a.methods.split(",")))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in res.items()}))


if __name__ == "__main__":
    main()
