"""Training and inference throughput of uqpot's PaiNN next to schnetpack 2.2's, measured in one run.

    python benchmarks/train_speed.py --data PATH/rmd17_ethanol_800.extxyz \
        [--reference-python VENV/bin/python] [--reference-script PATH/schnetpack_painn.py] \
        [--device cpu|cuda] [--batch 64] [--rounds 3]

Both sides time the model step on pre-collated batches of ethanol (64 structures, 576 atoms): training =
forward, force graph, backward, Adam step; inference = forward and forces.  The paper's hyper-parameters
on both sides (3 interactions, 128 features, 20 Gaussians, 5 Å cosine cutoff; loss 0.1 MAE(E) + MAE(F);
Adam 1e-4; float32).  The two are run alternately, ``--rounds`` times (uqpot in this process, the
reference in its own interpreter, since schnetpack lives in its own environment), and the medians are
compared.  Prints one JSON line and a table.  Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def uqpot_batches(path, batch, n_batches, device):
    from uqpot.data.batch import collate_dataset
    from uqpot.data.io import read_structures

    ds = read_structures(path)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(ds), generator=g).tolist()
    out = []
    for k in range(n_batches):
        idx = [order[(k * batch + i) % len(ds)] for i in range(batch)]
        out.append(collate_dataset(ds, idx, 5.0, dtype="float32", device=device))
    return ds, out


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure_uqpot(path, batch, steps, repeats, device):
    from uqpot.nn.potential import Potential
    from uqpot.train.losses import EnergyForceLoss

    ds, batches = uqpot_batches(path, batch, steps, device)
    torch.manual_seed(0)
    model = Potential()
    model.fit_reference(ds)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = EnergyForceLoss(0.1, 1.0)

    def train_step(b):
        model.train()
        loss, _ = loss_fn(model(b), b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step(b):
        model.eval()
        out = model(b, create_graph=False)
        out["forces"].sum().item()

    res = {}
    for name, fn in (("train", train_step), ("infer", infer_step)):
        for b in batches[:3]:
            fn(b)
        sync(device)
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            for b in batches:
                fn(b)
            sync(device)
            rates.append(batch * len(batches) / (time.perf_counter() - t))
        res[f"{name}_structures_per_s"] = statistics.median(rates)
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        train_step(batches[0])
        res["train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def measure_reference(python, script, data, batch, steps, repeats, device):
    cmd = [python, script, "--data", str(data), "--batch", str(batch), "--device", device,
           "--steps", str(steps), "--repeats", str(repeats)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"reference benchmark failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reference-python", default=os.environ.get("SCHNETPACK_PYTHON"),
                    help="python of an environment with schnetpack 2.2 (see ../shared/bench/setup_schnetpack.sh)")
    ap.add_argument("--reference-script", default=str(REPO.parent / "shared" / "bench" / "schnetpack_painn.py"))
    a = ap.parse_args()

    ours, ref = [], []
    for _ in range(a.rounds):
        ours.append(measure_uqpot(a.data, a.batch, a.steps, a.repeats, a.device))
        if a.reference_python:
            ref.append(measure_reference(a.reference_python, a.reference_script, a.data, a.batch, a.steps,
                                         a.repeats, a.device))
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    out = {"device": a.device, "batch": a.batch, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "rounds": a.rounds,
           "uqpot_train_structures_per_s": round(med(ours, "train_structures_per_s"), 1),
           "uqpot_infer_structures_per_s": round(med(ours, "infer_structures_per_s"), 1)}
    if ref:
        out["schnetpack_train_structures_per_s"] = round(med(ref, "train_structures_per_s"), 1)
        out["schnetpack_infer_structures_per_s"] = round(med(ref, "infer_structures_per_s"), 1)
        out["train_ratio"] = round(out["uqpot_train_structures_per_s"] / out["schnetpack_train_structures_per_s"], 2)
        out["infer_ratio"] = round(out["uqpot_infer_structures_per_s"] / out["schnetpack_infer_structures_per_s"], 2)
    print(json.dumps(out))
    print(f"\n{'':12s}{'train struct/s':>16s}{'infer struct/s':>16s}")
    print(f"{'uqpot':12s}{out['uqpot_train_structures_per_s']:16.1f}{out['uqpot_infer_structures_per_s']:16.1f}")
    if ref:
        print(f"{'schnetpack':12s}{out['schnetpack_train_structures_per_s']:16.1f}"
              f"{out['schnetpack_infer_structures_per_s']:16.1f}")
        print(f"{'ratio':12s}{out['train_ratio']:16.2f}{out['infer_ratio']:16.2f}")


if __name__ == "__main__":
    sys.exit(main())
