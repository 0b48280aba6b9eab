"""Training and inference throughput of uqpot's PaiNN next to schnetpack 2.2's, measured in one run.

    python benchmarks/train_speed.py --data PATH/rmd17_ethanol_800.extxyz \
        [--reference-python VENV/bin/python] [--reference-script PATH/schnetpack_painn.py] \
        [--device cpu|cuda] [--batch 64] [--rounds 3] [--variants sparse,dense,dense+compile,default]

Both sides time the model step on pre-collated batches of ethanol (64 structures, 576 atoms): training =
forward, force graph, backward, Adam step; inference = forward and forces.  The paper's hyper-parameters
on both sides (3 interactions, 128 features, 20 Gaussians, 5 Å cosine cutoff; loss 0.1 MAE(E) + MAE(F);
Adam 1e-4; float32).  The two are run alternately, ``--rounds`` times (uqpot in this process, the
reference in its own interpreter, since schnetpack lives in its own environment), and the medians are
compared.  uqpot is measured in the variants the trainer offers: the sparse edge list, the dense all-pairs
layout (``train.layout``), each eager or compiled with ``torch.compile`` (``train.compile``; its warm-up,
which includes the compilation, is printed and not counted), and ``default``: the variant the trainer's
defaults (``train.layout: auto``, ``train.compile: auto``) pick for a run of ``--default-run`` structures
and epochs (``uqpot.train.autocompile``).  Prints one JSON line and a table.  Speed is reported, never asserted.
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


def uqpot_batches(path, batch, n_batches, device, layout="sparse"):
    from uqpot.data.batch import collate_dataset
    from uqpot.data.io import read_structures

    ds = read_structures(path)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(ds), generator=g).tolist()
    out = []
    for k in range(n_batches):
        idx = [order[(k * batch + i) % len(ds)] for i in range(batch)]
        out.append(collate_dataset(ds, idx, 5.0, dtype="float32", device=device, layout=layout))
    return ds, out


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class UqpotBench:
    """uqpot's model step on one layout, eager or compiled; built (and compiled) once, timed each round."""

    def __init__(self, path, batch, steps, device, layout="sparse", compiled=False):
        from uqpot.nn.potential import Potential
        from uqpot.train.losses import EnergyForceLoss

        self.batch, self.device, self.layout, self.compiled = batch, device, layout, compiled
        ds, self.batches = uqpot_batches(path, batch, steps, device, layout)
        torch.manual_seed(0)
        model = Potential()
        model.fit_reference(ds)
        self.model = model = model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = EnergyForceLoss(0.1, 1.0)

        def train_loss(b):
            return loss_fn(model(b), b)[0]

        def infer(b):
            return model(b, create_graph=False)["forces"]

        if compiled:  # what the trainer does with train.compile: true
            train_loss, infer = torch.compile(train_loss), torch.compile(infer)

        def train_step(b):
            model.train()
            loss = train_loss(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def infer_step(b):
            model.eval()
            infer(b).sum().item()

        self.steps = {"train": train_step, "infer": infer_step}
        t = time.perf_counter()
        for fn in self.steps.values():
            for b in self.batches[:3]:
                fn(b)
        sync(device)
        self.warmup_s = time.perf_counter() - t

    def measure(self, repeats):
        res = {}
        for name, fn in self.steps.items():
            rates = []
            for _ in range(repeats):
                t = time.perf_counter()
                for b in self.batches:
                    fn(b)
                sync(self.device)
                rates.append(self.batch * len(self.batches) / (time.perf_counter() - t))
            res[f"{name}_structures_per_s"] = statistics.median(rates)
        if str(self.device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.steps["train"](self.batches[0])
            res["train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return res


def default_variant(a) -> tuple[str, bool]:
    """(layout, compiled) that the trainer's defaults (``TrainConfig()``: layout auto, compile auto) pick for
    a run of ``--default-run`` structures and epochs of ``--data`` at batch ``--batch``."""
    import numpy as np

    from uqpot.train.autocompile import choose_compile
    from uqpot.train.config import TrainConfig
    from uqpot.data.io import read_structures
    from uqpot.nn.potential import Potential

    n, epochs = (int(x) for x in a.default_run.split(","))
    ds = read_structures(a.data)
    ds = ds.subset(np.arange(min(n, len(ds))))
    compiled, why = choose_compile("auto", Potential(), ds, TrainConfig(epochs=epochs, batch_size=a.batch),
                                   torch.device(a.device))
    print(f"default: train.compile auto on {len(ds)} structures x {epochs} epochs: {why}", flush=True)
    return ("dense" if compiled else "sparse"), compiled


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
    ap.add_argument("--variants", default="sparse,dense,dense+compile,default",
                    help="uqpot variants, comma-separated: LAYOUT[+compile] with LAYOUT sparse or dense "
                         "(the trainer's train.layout and train.compile), or 'default': what the trainer's "
                         "defaults pick for a run of --default-run's size")
    ap.add_argument("--default-run", default="1000,60",
                    help="N_TRAIN,EPOCHS of the run whose defaults the 'default' variant takes (train.compile: "
                         "auto decides from the run's size; 1000,60: the rMD17 quick preset's ethanol)")
    ap.add_argument("--reference-python", default=os.environ.get("SCHNETPACK_PYTHON"),
                    help="python of an environment with schnetpack 2.2 (see ../shared/bench/setup_schnetpack.sh)")
    ap.add_argument("--reference-script", default=str(REPO.parent / "shared" / "bench" / "schnetpack_painn.py"))
    a = ap.parse_args()

    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    benches = {}
    for v in variants:
        if v == "default":  # what TrainConfig() trains with on a run of --default-run's size
            layout, comp = default_variant(a)
        else:
            layout, _, c = v.partition("+")
            if layout not in ("sparse", "dense") or c not in ("", "compile"):
                ap.error(f"unknown variant {v!r}; use sparse, dense, sparse+compile, dense+compile or default")
            comp = c == "compile"
        same = [w for w, bench in benches.items() if (bench.layout, bench.compiled) == (layout, comp)]
        # the default is one of the others: the same measured object (one compilation), reported twice
        benches[v] = benches[same[0]] if same else UqpotBench(a.data, a.batch, a.steps, a.device, layout, comp)
    ours = {v: [] for v in variants}
    ref = []
    for _ in range(a.rounds):  # alternate: every variant, then the reference, per round
        done = {}
        for v, bench in benches.items():
            if id(bench) not in done:
                done[id(bench)] = bench.measure(a.repeats)
            ours[v].append(done[id(bench)])
        if a.reference_python:
            ref.append(measure_reference(a.reference_python, a.reference_script, a.data, a.batch, a.steps,
                                         a.repeats, a.device))
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    out = {"device": a.device, "batch": a.batch, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "rounds": a.rounds, "uqpot": {}}
    for v in variants:
        out["uqpot"][v] = {"train_structures_per_s": round(med(ours[v], "train_structures_per_s"), 1),
                           "infer_structures_per_s": round(med(ours[v], "infer_structures_per_s"), 1),
                           "warmup_s": round(benches[v].warmup_s, 1)}
    if ref:
        out["schnetpack"] = {"train_structures_per_s": round(med(ref, "train_structures_per_s"), 1),
                             "infer_structures_per_s": round(med(ref, "infer_structures_per_s"), 1)}
        for v in variants:
            for k in ("train", "infer"):
                out["uqpot"][v][f"{k}_ratio"] = round(out["uqpot"][v][f"{k}_structures_per_s"]
                                                      / out["schnetpack"][f"{k}_structures_per_s"], 2)
    print(json.dumps(out))
    print(f"\n{'':18s}{'train struct/s':>16s}{'infer struct/s':>16s}{'train ratio':>13s}{'infer ratio':>13s}"
          f"{'warm-up s':>11s}")
    for v in variants:
        r = out["uqpot"][v]
        print(f"{'uqpot ' + v:18s}{r['train_structures_per_s']:16.1f}{r['infer_structures_per_s']:16.1f}"
              f"{r.get('train_ratio', float('nan')):13.2f}{r.get('infer_ratio', float('nan')):13.2f}"
              f"{r['warmup_s']:11.1f}")
    if ref:
        print(f"{'schnetpack':18s}{out['schnetpack']['train_structures_per_s']:16.1f}"
              f"{out['schnetpack']['infer_structures_per_s']:16.1f}")

if __name__ == "__main__":
    sys.exit(main())
