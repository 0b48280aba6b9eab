"""The cost of one MD step per backbone: model files (e.g. a PaiNN trained by uqpot, SevenNet-0 from ``uqpot
convert 7net-0``, a MACE network; plain or wrapped with a UQ method) driving the batched MD engine on the same
replicas, timed alternately in this process, as seconds per replica-step and relative to the first model.

    python benchmarks/backbone_md_cost.py --models painn=runs/a/model.pt sevennet=7net0.pt \\
        --structures data/test.extxyz --replicas 40 --steps 20 --rounds 3

Replicas are the first frame of ``--structures`` (rattled by 0.02 Å, seeded) at 300 K, Langevin, 0.5 fs, in
one batched engine call per model and round; the first round is a warm-up and not counted; the medians of the
others are compared.  The load average is printed: a shared machine slows every model, not necessarily by
the same factor, so quote ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import uqpot
from uqpot.data.io import read_structures
from uqpot.data.structures import Structure
from uqpot.md.batched import BatchedMD


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="NAME=FILE; the first is the reference")
    ap.add_argument("--structures", type=Path, required=True)
    ap.add_argument("--replicas", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    s0 = read_structures(a.structures)[0]
    rng = np.random.default_rng(0)
    starts = [Structure(s0.numbers, s0.positions + rng.normal(0, 0.02, s0.positions.shape), s0.cell, s0.pbc)
              for _ in range(a.replicas)]
    models = {n: uqpot.load(f) for n, f in (m.split("=", 1) for m in a.models)}
    times: dict[str, list] = {n: [] for n in models}
    for r in range(a.rounds + 1):
        for name, model in models.items():
            md = BatchedMD(model, starts, timestep_fs=0.5, temperatures_K=300.0, seeds=list(range(a.replicas)),
                           thermostat="langevin", check_every=10)
            t0 = time.perf_counter()
            md.run(a.steps)
            if r:  # round 0 warms up
                times[name].append((time.perf_counter() - t0) / (a.steps * a.replicas))
    ref = statistics.median(times[next(iter(models))])
    print(f"{a.replicas} replicas of {len(s0.numbers)} atoms, {a.steps} steps, {a.rounds} rounds, "
          f"{a.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    print("| model | s per replica-step (median) | relative to the first |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2e} | {med / ref:.1f} |")


if __name__ == "__main__":
    main()
