"""Where the batched MD engine spends its time: a ``torch.profiler`` table of the kernels (operators) of
``--steps`` steps of ``benchmarks/md_speed.py``'s workload (400 NH3 replicas, the paper's PaiNN, Nosé-Hoover
300 K, 0.5 fs), sorted by self time, and the share of the model call (forward and forces) in the step.

    python benchmarks/md_profile.py [--replicas 400] [--steps 20] [--layout auto] [--compile] [--top 15]

Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=400)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--layout", default="auto", choices=["auto", "sparse", "dense"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    from md_speed import make_model, starts

    from uqpot.md.batched import BatchedMD

    model = make_model("cpu", torch.float32)
    md = BatchedMD(model, starts(a.replicas, None), timestep_fs=0.5, temperatures_K=300.0,
                   seeds=list(range(a.replicas)), thermostat="nose-hoover", tdamp_fs=50.0, skin=2.0,
                   check_every=20, record_every=20, layout=a.layout, compile=a.compile)
    md.run(20)  # warm-up
    calls = {"n": 0, "s": 0.0}
    inner = md._call

    def timed(batch):
        t0 = time.perf_counter()
        out = inner(batch)
        calls["n"] += 1
        calls["s"] += time.perf_counter() - t0
        return out

    md._call = timed
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        md.run(a.steps)
    wall = time.perf_counter() - t0
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    print(f"{a.steps} steps of {a.replicas} NH3 replicas: {wall:.2f} s under the profiler, model call "
          f"{calls['s'] / wall:.0%} of it ({calls['n']} calls)")
    print(f"{'operator':<44s}{'self ms':>10s}{'share':>8s}{'calls':>8s}")
    top = []
    for e in rows[:a.top]:
        share = e.self_cpu_time_total / total
        top.append({"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2), "share": round(share, 4),
                    "calls": e.count})
        print(f"{e.key[:43]:<44s}{e.self_cpu_time_total / 1e3:10.1f}{share:8.1%}{e.count:8d}")
    print(json.dumps({"replicas": a.replicas, "steps": a.steps, "layout": a.layout, "compile": a.compile,
                      "wall_s": wall, "model_call_share": calls["s"] / wall, "top": top}))


if __name__ == "__main__":
    sys.exit(main())
