"""Cost of uncertainty: every UQ method's training step and inference (energy, forces and U) relative to
one plain PaiNN, measured in one run, alternating the models; plus peak memory of a training step.

    python benchmarks/uq_overhead.py --data PATH/rmd17_ethanol_800.extxyz [--device cpu|cuda] [--batch 64] \
        [--layout sparse|dense] [--compile]

The paper's PaiNN on rMD17 ethanol batches of 64 structures.  Reported: structures per second and the ratio
to the plain PaiNN for
- training (forward, force graph, backward, optimiser step with each method's own loss),
- inference (energy, forces and the uncertainty; for the ensemble the M members in one batched call),
- peak memory of one training step, in a fresh process (CUDA: the allocator's peak; CPU: the peak of the
  allocations the profiler records during the step).
The goals this answers: a 5-member ensemble trains in ≤ 2× one model on a GPU (report CPU too); the GMM's
uncertainty adds ≤ 10 % to a forward pass, the MVE and evidential heads ≤ 5 %.  Speed is reported, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from uqpot.core import fields as F

SPEC = {"features": 128, "interactions": 3, "rbf": 20, "cutoff": 5.0, "activation": "ssp", "readout_hidden": 64}


def build(method: str, train, members: int):
    from uqpot.nn.potential import Potential
    from uqpot.uq import METHODS

    hp = dict(SPEC, members=members if method == "ensemble" else 1,
              seeds=list(range(members if method == "ensemble" else 1)))
    model = Potential(**hp) if method == "plain" else METHODS[method](potential=hp)
    model.fit_reference(train)
    if method == "gmm":
        model.fit_posthoc(train.subset(range(min(len(train), 200))))
    return model


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main():
    from uqpot.train.config import TrainConfig
    from uqpot.data.batch import collate_dataset
    from uqpot.data.io import read_structures
    from uqpot.train.losses import EnergyForceLoss
    from uqpot.train.optim import MemberAdam

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--methods", default="plain,ensemble,mve,evidential,gmm")
    ap.add_argument("--layout", default="sparse", choices=["sparse", "dense"],
                    help="pair layout of the batches (the trainer's train.layout)")
    ap.add_argument("--compile", action="store_true",
                    help="compile every model's training loss and inference (the trainer's train.compile); the "
                         "compilation is part of the warm-up")
    ap.add_argument("--peak-only", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peak_only:  # one training step in a fresh process: its peak memory
        return _peak(a)

    data = read_structures(a.data)
    batches = [collate_dataset(data, range(k * a.batch, (k + 1) * a.batch), 5.0, device=a.device,
                               layout=a.layout) for k in range(a.steps)]
    methods = a.methods.split(",")
    models = {m: build(m, data, a.members).to(a.device) for m in methods}
    cfg = TrainConfig()
    rates = {m: {"train": [], "infer": []} for m in methods}
    peak = {}
    for m, model in models.items():
        loss_fn = EnergyForceLoss() if m == "plain" else model.make_loss(cfg)
        opt = MemberAdam(model.parameters(), getattr(model, "members", 1), 1e-4)

        def step_loss(b, model=model, loss_fn=loss_fn):
            return loss_fn(model.forward_members(b), b)[0]

        def infer(b, model=model):
            out = model(b, create_graph=False)
            return out[F.UNCERTAINTY] if F.UNCERTAINTY in out else out[F.FORCES]

        if a.compile:
            step_loss, infer = torch.compile(step_loss), torch.compile(infer)
        model._bench = (step_loss, infer, opt)

    def train_step(model, b):
        step_loss, _, opt = model._bench
        model.train()
        loss = step_loss(b)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()

    def infer_step(model, b):
        model.eval()
        model._bench[1](b).sum().item()

    for m, model in models.items():  # warm-up; peak memory of a training step in a fresh process each
        for b in batches[:2]:
            train_step(model, b)
            infer_step(model, b)
        sync(a.device)
        import subprocess

        r = subprocess.run([sys.executable, __file__, "--data", a.data, "--device", a.device, "--batch",
                            str(a.batch), "--members", str(a.members), "--layout", a.layout, "--peak-only", m],
                           capture_output=True, text=True)
        peak[m] = float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else float("nan")
    for _ in range(a.rounds):  # alternate the models, round after round
        for m, model in models.items():
            for kind, fn in (("train", train_step), ("infer", infer_step)):
                sync(a.device)
                t = time.perf_counter()
                for b in batches:
                    fn(model, b)
                sync(a.device)
                rates[m][kind].append(a.batch * len(batches) / (time.perf_counter() - t))
    out = {"device": a.device, "batch": a.batch, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "layout": a.layout, "compile": a.compile}
    base = {k: statistics.median(rates["plain"][k]) for k in ("train", "infer")} if "plain" in rates else None
    print(f"{'method':12s}{'train s/s':>12s}{'x plain':>9s}{'infer s/s':>12s}{'x plain':>9s}{'peak MB':>10s}")
    for m in methods:
        r = {k: statistics.median(rates[m][k]) for k in ("train", "infer")}
        rel = {k: (base[k] / r[k] if base else None) for k in r}  # cost relative to the plain PaiNN
        out[m] = {"train_structures_per_s": round(r["train"], 1), "infer_structures_per_s": round(r["infer"], 1),
                  "train_cost_vs_plain": rel["train"] and round(rel["train"], 3),
                  "infer_cost_vs_plain": rel["infer"] and round(rel["infer"], 3), "peak_mb": round(peak[m], 1)}
        print(f"{m:12s}{r['train']:12.1f}{(rel['train'] or 0):9.2f}{r['infer']:12.1f}{(rel['infer'] or 0):9.2f}"
              f"{peak[m]:10.1f}")
    print(json.dumps(out))


def _peak(a) -> None:
    """Prints the memory (MB) one training step of ``a.peak_only`` needs beyond the built model and batch."""
    from uqpot.train.config import TrainConfig
    from uqpot.data.batch import collate_dataset
    from uqpot.data.io import read_structures
    from uqpot.train.losses import EnergyForceLoss
    from uqpot.train.memory import training_step_peak_mb

    data = read_structures(a.data)
    b = collate_dataset(data, range(a.batch), 5.0, device=a.device, layout=a.layout)
    model = build(a.peak_only, data, a.members).to(a.device).train()
    loss_fn = EnergyForceLoss() if a.peak_only == "plain" else model.make_loss(TrainConfig())
    print(training_step_peak_mb(model, loss_fn, b))


if __name__ == "__main__":
    sys.exit(main())
