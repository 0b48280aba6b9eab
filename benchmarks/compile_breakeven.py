"""When does ``torch.compile`` pay?  Compilation time (inductor's on-disk cache cold and warm) against the
per-step saving, for the training step and for the batched MD call.

    python benchmarks/compile_breakeven.py --data PATH/rmd17_ethanol_800.extxyz [--batch 16] [--members 1]
        [--md-replicas 400] [--steps 20] [--device cpu]

Training: uqpot's paper PaiNN (128 features, 3 interactions; ``--members`` stacked) on batches of ``--batch``
structures of ``--data`` on the dense layout, the trainer's step (forward, forces, SI Eq. 1 loss, backward,
Adam), eager and through ``torch.compile(dynamic=False)`` as ``train.compile`` does.  MD: the batched engine
(Nosé-Hoover, 300 K, 0.5 fs) on ``--md-replicas`` NH3 replicas, ``compile`` off and on.  Every variant runs
in a fresh process: *cold* with an empty ``TORCHINDUCTOR_CACHE_DIR``, *warm* a second process on the cache
the cold one filled.  For each: the first call (compilation included), the steady step (median of
``--steps``), and the break-even — the number of steps after which the compiled run has caught up:

    n* = (t_first,compiled − t_step,compiled) / (t_step,eager − t_step,compiled)

Prints a table and one JSON line (the figures ``uqpot.train.auto`` uses are quoted from it).  Speed is
reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def phase_train(a, compiled: bool) -> dict:
    from uqpot.data.batch import collate_dataset
    from uqpot.data.io import read_structures
    from uqpot.nn.potential import Potential
    from uqpot.train.losses import EnergyForceLoss
    from uqpot.train.optim import MemberAdam

    ds = read_structures(a.data)
    batches = [collate_dataset(ds, list(range(k * a.batch, (k + 1) * a.batch)), 5.0, dtype="float32",
                               device=a.device, layout="dense") for k in range(a.steps + 1)]
    torch.manual_seed(0)
    model = Potential(members=a.members, seeds=list(range(a.members))).to(a.device)
    model.fit_reference(ds)
    model.train()
    opt = MemberAdam(model.parameters(), a.members, 1e-4)
    loss_fn = EnergyForceLoss(0.1, 1.0)

    def loss(b):
        return loss_fn(model.forward_members(b), b)

    step_loss = torch.compile(loss, dynamic=False) if compiled else loss

    def step(b):
        value, _ = step_loss(b)
        opt.zero_grad()
        value.sum().backward()
        opt.step()

    t0 = time.perf_counter()
    step(batches[0])
    sync(a.device)
    first = time.perf_counter() - t0
    times = []
    for b in batches[1:]:
        t0 = time.perf_counter()
        step(b)
        sync(a.device)
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "step_s": statistics.median(times)}


def phase_md(a, compiled: bool) -> dict:
    sys.path.insert(0, str(HERE))
    from md_speed import make_model, starts

    from uqpot.md.batched import BatchedMD

    model = make_model(a.device, torch.float32)
    t0 = time.perf_counter()  # the engine's construction included: it builds (and compiles) the model call
    md = BatchedMD(model, starts(a.md_replicas, None), timestep_fs=0.5, temperatures_K=300.0,
                   seeds=list(range(a.md_replicas)), thermostat="nose-hoover", tdamp_fs=50.0, skin=2.0,
                   check_every=20, record_every=20, compile=compiled)
    md.run(1)
    sync(a.device)
    first = time.perf_counter() - t0
    md.run(4)
    times = []
    for _ in range(max(1, a.steps // 5)):
        t0 = time.perf_counter()
        md.run(5)
        sync(a.device)
        times.append((time.perf_counter() - t0) / 5)
    return {"first_s": first, "step_s": statistics.median(times)}


def run_phase(a, phase: str, cache: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    cmd = [sys.executable, __file__, "--phase", phase, "--data", str(a.data), "--batch", str(a.batch),
           "--members", str(a.members), "--md-replicas", str(a.md_replicas), "--steps", str(a.steps),
           "--device", a.device]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def breakeven(eager: dict, comp: dict) -> float | None:
    saving = eager["step_s"] - comp["step_s"]
    if saving <= 0:
        return None
    return max(0.0, comp["first_s"] - comp["step_s"] - max(0.0, eager["first_s"] - eager["step_s"])) / saving


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--md-replicas", type=int, default=400)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--which", default="train,md")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        kind, mode = a.phase.split("-")
        fn = phase_train if kind == "train" else phase_md
        print(json.dumps(fn(a, mode == "compiled")))
        return
    out = {"batch": a.batch, "members": a.members, "md_replicas": a.md_replicas, "device": a.device,
           "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]}
    rows = []
    for kind in a.which.split(","):
        with tempfile.TemporaryDirectory() as cache:
            eager = run_phase(a, f"{kind}-eager", cache)
            cold = run_phase(a, f"{kind}-compiled", cache)
            warm = run_phase(a, f"{kind}-compiled", cache)
        res = {"eager": eager, "compiled_cold": cold, "compiled_warm": warm,
               "speedup": eager["step_s"] / cold["step_s"],
               "breakeven_steps_cold": breakeven(eager, cold), "breakeven_steps_warm": breakeven(eager, warm)}
        out[kind] = res
        rows.append((kind, res))
    what = {"train": f"training step, batch {a.batch}, {a.members} member(s)", "md": f"MD step, {a.md_replicas} NH3"}
    print(f"{'work':>36s} | {'eager s/step':>12s} | {'compiled s/step':>15s} | {'compile cold s':>14s} | "
          f"{'compile warm s':>14s} | {'break-even cold':>15s} | {'break-even warm':>15s}")
    for kind, r in rows:
        be = [f"{v:15.0f}" if v is not None else f"{'never':>15s}" for v in (r["breakeven_steps_cold"],
                                                                              r["breakeven_steps_warm"])]
        print(f"{what[kind]:>36s} | {r['eager']['step_s']:12.4f} | {r['compiled_cold']['step_s']:15.4f} | "
              f"{r['compiled_cold']['first_s']:14.1f} | {r['compiled_warm']['first_s']:14.1f} | {be[0]} | {be[1]}")
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
