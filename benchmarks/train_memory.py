"""Peak memory of one training step of uqpot's PaiNN next to schnetpack 2.2's, per structure.

    python benchmarks/train_memory.py --data PATH/rmd17_ethanol_800.extxyz \
        [--reference-python VENV/bin/python] [--reference-script PATH/schnetpack_painn.py] \
        [--device cpu|cuda] [--batch 64] [--layout sparse|dense] [--compile]

One training step (forward, force graph, loss, backward) on a pre-collated batch of ethanol, the paper's
hyper-parameters on both sides, each in a fresh process, measured by the same code: on CUDA the caching
allocator's peak above what was allocated before the step; on CPU the profiler's record of every
allocation and free during the step, summed in time order (PyTorch keeps no CPU peak counter).  The
reference runs in schnetpack's own interpreter (this file, ``--side schnetpack``; it needs no uqpot).
Prints one JSON line and a table.  Memory is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def peak_mb(step, device: str) -> float:
    """uqpot's own measuring code (``uqpot/train/memory.py`` needs only torch), loaded from the source tree
    so that schnetpack's environment, which has no uqpot, measures with it too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_uqpot_memory", REPO / "src" / "uqpot" / "train" / "memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.peak_mb(step, device.startswith("cuda"))


def uqpot_side(a) -> float:
    from uqpot.data.batch import collate_dataset
    from uqpot.data.io import read_structures
    from uqpot.nn.potential import Potential
    from uqpot.train.losses import EnergyForceLoss

    data = read_structures(a.data)
    torch.manual_seed(0)
    model = Potential().to(a.device)  # the paper's hyper-parameters
    model.fit_reference(data)
    b = collate_dataset(data, range(a.batch), 5.0, device=a.device, layout=a.layout)
    loss_fn = EnergyForceLoss(0.1, 1.0)
    model.train()

    def step_loss(b):
        return loss_fn(model(b), b)[0]

    if a.compile:  # the trainer's train.compile
        step_loss = torch.compile(step_loss)

    def step():
        step_loss(b).backward()

    step()  # warm-up (and compilation)
    model.zero_grad(set_to_none=True)
    return peak_mb(step, a.device)


def schnetpack_side(a) -> float:
    sys.path.insert(0, str(Path(a.reference_script).parent))
    from schnetpack_painn import build_batches, build_model

    (b,) = build_batches(a.data, a.batch, 1, a.device)
    model = build_model(a.device).train()

    def step():
        c = {k: v.clone() for k, v in b.items()}
        out = model(c)
        loss = 0.1 * (out["energy"] - c["energy"]).abs().mean() + (out["forces"] - c["forces"]).abs().mean()
        loss.backward()

    step()  # warm-up
    model.zero_grad(set_to_none=True)
    return peak_mb(step, a.device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reference-python", default=os.environ.get("SCHNETPACK_PYTHON"))
    ap.add_argument("--reference-script", default=str(REPO.parent / "shared" / "bench" / "schnetpack_painn.py"))
    ap.add_argument("--layout", default="sparse", choices=["sparse", "dense"], help="uqpot's pair layout")
    ap.add_argument("--compile", action="store_true", help="uqpot's training step compiled")
    ap.add_argument("--side", choices=["uqpot", "schnetpack"], default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:  # one measurement in this fresh process
        print((uqpot_side if a.side == "uqpot" else schnetpack_side)(a))
        return 0
    sides = {"uqpot": sys.executable}
    if a.reference_python:
        sides["schnetpack"] = a.reference_python
    out = {"device": a.device, "batch": a.batch, "uqpot_layout": a.layout, "uqpot_compile": a.compile}
    for side, python in sides.items():
        cmd = [python, __file__, "--data", a.data, "--batch", str(a.batch), "--device", a.device,
               "--reference-script", a.reference_script, "--side", side, "--layout", a.layout]
        if a.compile:
            cmd.append("--compile")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{side} measurement failed:\n{r.stderr[-2000:]}")
        mb = float(r.stdout.strip().splitlines()[-1])
        out[f"{side}_step_peak_mb"] = round(mb, 1)
        out[f"{side}_mb_per_structure"] = round(mb / a.batch, 3)
    if "schnetpack_step_peak_mb" in out:
        out["ratio"] = round(out["uqpot_step_peak_mb"] / out["schnetpack_step_peak_mb"], 2)
    print(json.dumps(out))
    print(f"\n{'':12s}{'step peak MB':>14s}{'MB/structure':>14s}")
    for side in sides:
        print(f"{side:12s}{out[f'{side}_step_peak_mb']:14.1f}{out[f'{side}_mb_per_structure']:14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
