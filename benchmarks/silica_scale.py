"""What silica at the paper's size costs: time and peak memory per training step and per MD step.

    python benchmarks/silica_scale.py --data data/silica699/train.extxyz [--features 128] [--members 1,3]
        [--batch-size 3] [--train-steps 4] [--replicas 1,10] [--md-steps 40] [--threads N]
        [--npt-model run/model.pt --npt-steps 2000]

Built with ``uqpot data build silica --atoms 699``.  Each measurement runs in its own process, so its
peak resident memory (``ru_maxrss``) is its own: the table gives the peak RSS of the process and the time
per step after one warm-up step (training) or one sync block (MD).

* training step: the paper's preset model (PaiNN, 128 features, 3 interactions, 20 Gaussians, 5 Å cutoff,
  readout 64; ``--features`` to change), ``--members`` stacked members (the ensemble trains its members in
  one tensor), the paper's batch of 3 frames, loss on energy, forces and (the set carries BKS stress) the
  stress, backward, one Adam step: :class:`uqpot.train.trainer.Trainer`'s own epoch loop.
* MD step: the batched engine (Nosé-Hoover chain at 2500 K, 0.25 fs: the paper's silica campaign), skin
  0.5 Å, ``--replicas`` replicas of the 699-atom glass, a random-weight model of the same size (speed does
  not depend on the weights), float32.
* ``--npt-model``: an NPT run (ASE's isotropic MTK barostat through the campaign, ``ensemble: npt``) of one
  replica with a trained model: mean, spread and standard error of the pressure over the second half,
  volume drift.

Per 1,000 steps and for the paper preset (1000 epochs of 1590 × 0.8 / 3 steps; 10 MD runs of 4 × 10⁶
steps), the extrapolation is printed.  Speed and memory are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HP = dict(interactions=3, rbf=20, cutoff=5.0, activation="ssp", readout_hidden=64)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _frames(path, n):
    from uqpot.data.io import read_structures

    data = read_structures(path)
    return data.subset(range(min(n, len(data))))


def phase_train(args) -> dict:
    import torch

    from uqpot.train.config import TrainConfig
    from uqpot.nn.potential import Potential
    from uqpot.train.losses import resolve_stress_weight
    from uqpot.train.trainer import Trainer

    torch.manual_seed(0)
    B, K = args.batch_size, args.train_steps
    data = _frames(args.data, B * (K + 1) + B)
    train, val = data.subset(range(B * (K + 1))), data.subset(range(B * (K + 1), len(data)))
    model = Potential(features=args.features, **HP, members=args.members, seeds=list(range(args.members)))
    model.fit_reference(train)
    cfg = resolve_stress_weight(TrainConfig(epochs=1, batch_size=B, lr=1e-4, progress=False, device="cpu"), train)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(model, train, val, cfg, tmp)
        tr.model.train()
        batches = [b for _, b in tr._batches(train, B, shuffle=False)]
        times = []
        for b in batches:
            t0 = time.perf_counter()
            loss, _ = tr._step_loss(b)
            tr.optimizer.zero_grad()
            loss.sum().backward()
            tr.optimizer.step()
            times.append(time.perf_counter() - t0)
    per = sum(times[1:]) / len(times[1:])
    return {"phase": "train", "members": args.members, "batch": B, "atoms": int(train[0].n_atoms),
            "stress_weight": cfg.stress_weight, "s_per_step": per, "peak_rss_MiB": _rss_mib()}


def phase_md(args) -> dict:
    import torch
    from ase.io import read

    from uqpot.md.batched import BatchedMD
    from uqpot.md.stability import StabilityCriteria
    from uqpot.nn.potential import Potential

    torch.manual_seed(0)
    glass = read(args.data, 0)
    model = Potential(features=args.features, **HP)
    model.known_elements[[8, 14]] = True
    model = model.to(torch.float32).eval()
    md = BatchedMD(model, [glass] * args.replicas, timestep_fs=0.25, temperatures_K=2500.0,
                   seeds=list(range(args.replicas)), skin=0.5, check_every=20, criteria=get_system("silica").stability_criteria())
    md.run(min(20, args.md_steps))  # warm-up block
    t0 = time.perf_counter()
    md.run(args.md_steps)
    dt = time.perf_counter() - t0
    return {"phase": "md", "replicas": args.replicas, "atoms": len(glass), "s_per_step": dt / args.md_steps,
            "s_per_replica_step": dt / args.md_steps / args.replicas, "peak_rss_MiB": _rss_mib(),
            "builds": md.neighbor_builds, "replays": md.replays}


def phase_npt(args) -> dict:
    from ase.io import read

    from uqpot.md.campaign import CampaignConfig, run_campaign
    from uqpot.evaluation.models import load as load_model

    model = load_model(args.npt_model).eval()
    glass = read(args.data, 0)
    cfg = CampaignConfig(system="silica", runs=1, temperatures_K=[args.npt_temperature], timestep_fs=1.0,
                         duration_fs=float(args.npt_steps), ensemble="npt", pressure_bar=args.npt_pressure,
                         tdamp_fs=100.0, pdamp_fs=args.npt_pdamp, record_every=5)
    t0 = time.perf_counter()
    res = run_campaign(cfg, model, [glass], out_dir=args.npt_out)
    dt = time.perf_counter() - t0
    s = res.summary()
    return {"phase": "npt", "atoms": len(glass), "steps": cfg.n_steps, "stable": s["fraction_stable"],
            "s_per_step": dt / cfg.n_steps, "peak_rss_MiB": _rss_mib(), **s["npt"]}


def _run(phase, argv, extra) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, *argv, *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--members", default="1,3")
    ap.add_argument("--batch-size", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--replicas", default="1,10")
    ap.add_argument("--md-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--npt-model", default=None)
    ap.add_argument("--npt-steps", type=int, default=2000)
    ap.add_argument("--npt-temperature", type=float, default=300.0)
    ap.add_argument("--npt-pressure", type=float, default=0.0, help="bar")
    ap.add_argument("--npt-pdamp", type=float, default=200.0, help="fs")
    ap.add_argument("--npt-out", default=None)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.phase:
        if args.phase == "train":
            args.members = int(args.members)
        if args.phase == "md":
            args.replicas = int(args.replicas)
        print(json.dumps({"train": phase_train, "md": phase_md, "npt": phase_npt}[args.phase](args)))
        return

    base = ["--data", args.data, "--features", str(args.features), "--batch-size", str(args.batch_size),
            "--train-steps", str(args.train_steps), "--md-steps", str(args.md_steps)]
    if args.threads:
        base += ["--threads", str(args.threads)]
    rows = []
    for m in args.members.split(","):
        rows.append(_run("train", base, ["--members", m]))
        print(json.dumps(rows[-1]), flush=True)
    for r in args.replicas.split(","):
        rows.append(_run("md", base, ["--replicas", r]))
        print(json.dumps(rows[-1]), flush=True)
    if args.npt_model:
        extra = ["--npt-model", args.npt_model, "--npt-steps", str(args.npt_steps), "--npt-temperature",
                 str(args.npt_temperature), "--npt-pressure", str(args.npt_pressure), "--npt-pdamp",
                 str(args.npt_pdamp)] + (["--npt-out", args.npt_out] if args.npt_out else [])
        rows.append(_run("npt", base, extra))
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nsilica, {rows[0]['atoms']} atoms, PaiNN {args.features} features, {os.cpu_count()} CPUs "
          f"(torch threads {args.threads or 'default'}); load average {os.getloadavg()[0]:.2f}")
    print("| work | s per step | s per 1,000 steps | peak RSS (MiB) |")
    print("|---|---|---|---|")
    steps_per_epoch = round(1590 * 0.8 / args.batch_size)
    for r in rows:
        if r["phase"] == "train":
            what = f"training step, {r['members']} member(s), batch {r['batch']}"
        elif r["phase"] == "md":
            what = f"MD step, {r['replicas']} replica(s) (batched NVT)"
        else:
            what = "NPT MD step, 1 replica (ASE MTK)"
        print(f"| {what} | {r['s_per_step']:.3f} | {1000 * r['s_per_step']:.0f} | {r['peak_rss_MiB']:.0f} |")
    print("\nthe paper preset on this machine (extrapolated):")
    for r in rows:
        if r["phase"] == "train":
            h = 1000 * steps_per_epoch * r["s_per_step"] / 3600
            print(f"  training, {r['members']} member(s): 1000 epochs x {steps_per_epoch} steps = {h:.0f} h")
        elif r["phase"] == "md":
            h = 4e6 * r["s_per_step"] * (10 / r["replicas"]) / 3600
            print(f"  MD campaign, 10 runs x 1 ns (4e6 steps) in batches of {r['replicas']}: {h:.0f} h")
    npt = [r for r in rows if r["phase"] == "npt"]
    if npt:
        r = npt[0]
        print(f"\nNPT, {r['steps']} steps of 1 fs at {args.npt_temperature:g} K, target {r['target_bar']:g} bar "
              f"(second half, {r['samples']} samples): pressure {r['pressure_mean_bar']:.0f} ± "
              f"{r['pressure_sem_bar']:.0f} bar (SEM), spread (std) {r['pressure_std_bar']:.0f} bar; volume "
              f"{r['volume_start_A3']:.0f} -> {r['volume_end_A3']:.0f} Å^3 ({r['volume_change_percent']:+.2f} %), "
              f"drift over the second half {r['volume_drift_percent_per_ps']:+.3f} %/ps")


if __name__ == "__main__":
    main()
