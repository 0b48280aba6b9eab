"""Replica-steps per second of the batched MD engine next to ASE's own dynamics, one replica at a time.

    python benchmarks/md_speed.py [--replicas 400] [--steps 40] [--ase-replicas 3] [--ase-steps 40] \
        [--device cpu|cuda] [--dtype float32] [--threads N] [--rounds 2] [--data PATH/ammonia.extxyz]
        [--thermostat nose-hoover|langevin] [--engine batched|torchsim] [--compile [auto|true|false]]

The workload of the paper's ammonia campaign: NH3 replicas at 300 K, Nosé-Hoover chain NVT (length 3,
τ = 50 fs), time step 0.5 fs, with the paper's PaiNN (3 interactions, 128 features, 20 Gaussians, 5 Å
cutoff; random weights: speed does not depend on them).  The batched engine integrates all ``--replicas``
in one tensor (one model call per step, syncs every 20 steps, skin 2 Å); the ASE path runs
``NoseHooverChainNVT`` with :class:`~uqpot.md.calculator.UQPotCalculator`, one replica after another, and
its rate is per replica-step, so ``--ase-replicas`` × ``--ase-steps`` is enough to measure it.  The two are
timed alternately ``--rounds`` times and the medians compared (warm-up excluded).  Start structures are
the shared ammonia geometries when ``--data`` is given, else rattled copies of a pyramidal NH3.

``--engine torchsim`` adds torch-sim (uqpot's model behind :class:`uqpot.md.torchsim.TorchSimModel`) on
the same replicas, time step and thermostat, timed in every round beside the other two; it needs
``--thermostat langevin`` (torch-sim 0.3's Nosé-Hoover chain thermostats a single system).

Prints one JSON line and a table.  Speed is reported, never asserted.  On a shared machine the load average
is printed too: other processes slow both paths, not necessarily by the same factor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch


def starts(n, data):
    from uqpot.md.neb import nh3_pyramid

    if data:
        from ase.io import read

        frames = read(data, ":")
        return [frames[i % len(frames)] for i in range(n)]
    out = []
    for k in range(n):
        a = nh3_pyramid()
        a.rattle(0.03, seed=k)
        out.append(a)
    return out


def make_model(device, dtype):
    from uqpot.nn.potential import Potential

    torch.manual_seed(0)
    model = Potential()  # the paper's hyper-parameters
    model.known_elements[[1, 7]] = True
    return model.to(device=device, dtype=dtype).eval()


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


FRICTION_PER_FS = 0.01  # Langevin (--thermostat langevin), every engine


def time_batched(model, structures, steps, device, layout="auto", compiled=False, thermostat="nose-hoover"):
    from uqpot.md.batched import BatchedMD

    md = BatchedMD(model, structures, timestep_fs=0.5, temperatures_K=300.0, seeds=list(range(len(structures))),
                   thermostat=thermostat, friction_per_fs=FRICTION_PER_FS, tdamp_fs=50.0, skin=2.0, check_every=20, record_every=20, layout=layout, compile=compiled)
    md.run(20)  # warm-up (allocator, first syncs)
    sync(device)
    done0 = sum(r.steps_run for r in md.result().replicas)
    t0 = time.perf_counter()
    res = md.run(steps)
    sync(device)
    wall = time.perf_counter() - t0
    done = sum(r.steps_run for r in res.replicas) - done0
    return done / wall, {"wall_s": wall, "replica_steps": done, "alive": md.n_alive, "replays": md.replays,
                         "neighbor_builds": md.neighbor_builds}


def time_torchsim(model, structures, steps, device, thermostat="langevin"):
    """The same replicas, Langevin thermostat (friction 0.01/fs) and time step through torch-sim's
    ``nvt_langevin`` with the uqpot model behind :class:`uqpot.md.torchsim.TorchSimModel`.  (torch-sim
    0.3.0's ``nvt_nose_hoover`` keeps one thermostat chain, of shape (chain_length,), for the whole state: it
    fails for more than one system, so a batch of replicas cannot run Nosé-Hoover there.)"""
    if thermostat != "langevin":
        raise SystemExit("--engine torchsim: torch-sim 0.3's Nosé-Hoover chain thermostats one system only; "
                         "compare with --thermostat langevin")
    import torch_sim as ts
    from ase import units

    from uqpot.md.torchsim import TorchSimModel

    tsm = TorchSimModel(model, device=device)
    state = ts.initialize_state(list(structures), device=torch.device(device), dtype=torch.float32
                                if model.dtype == torch.float32 else torch.float64)
    dt = torch.tensor(0.5 * units.fs, dtype=state.positions.dtype)
    kT = torch.tensor(300.0 * float(ts.units.MetalUnits.temperature), dtype=state.positions.dtype)
    init, update = ts.integrators.nvt_langevin(model=tsm, dt=dt, kT=kT,
                                               gamma=torch.tensor(FRICTION_PER_FS / units.fs, dtype=dt.dtype), seed=0)
    st = init(state)
    for _ in range(2):  # warm-up
        st = update(st)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        st = update(st)
    sync(device)
    wall = time.perf_counter() - t0
    return len(structures) * steps / wall, {"wall_s": wall, "replica_steps": len(structures) * steps}


def time_ase(model, structures, steps, thermostat="nose-hoover"):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.nose_hoover_chain import NoseHooverChainNVT
    from ase.md.velocitydistribution import thermalize_momenta

    from uqpot.md.calculator import UQPotCalculator

    calc = UQPotCalculator(model)
    wall = 0.0
    for k, s in enumerate(structures):
        a = s.copy()
        a.calc = calc
        thermalize_momenta(a, temperature_K=300.0, rng=np.random.default_rng(k))
        if thermostat == "langevin":
            dyn = Langevin(a, timestep=0.5 * units.fs, temperature_K=300.0, friction=FRICTION_PER_FS / units.fs,
                           fixcm=False, rng=np.random.default_rng(k))
        else:
            dyn = NoseHooverChainNVT(a, timestep=0.5 * units.fs, temperature_K=300.0, tdamp=50.0 * units.fs)
        dyn.run(2)  # warm-up
        t0 = time.perf_counter()
        dyn.run(steps)
        wall += time.perf_counter() - t0
    return len(structures) * steps / wall, {"wall_s": wall, "replica_steps": len(structures) * steps}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=400)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--ase-replicas", type=int, default=3)
    p.add_argument("--ase-steps", type=int, default=40)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data", default=None, help="NH3 geometries (extxyz) to start from")
    p.add_argument("--layout", default="auto", choices=["auto", "sparse", "dense"],
                   help="pair layout of the batched engine (BatchedMD's layout); the ASE path uses the "
                        "calculator's edge list")
    p.add_argument("--thermostat", default="nose-hoover", choices=["nose-hoover", "langevin"],
                   help="the thermostat of every engine (Nosé-Hoover chain, τ = 50 fs; Langevin, 0.01/fs)")
    p.add_argument("--engine", default="batched", choices=["batched", "torchsim"],
                   help="torchsim: also time torch-sim's Nosé-Hoover chain on the same model, replicas and time "
                        "step (uqpot.md.torchsim), alternating with uqpot's engine and ASE in every round")
    p.add_argument("--torchsim-steps", type=int, default=None, help="steps of the torch-sim runs (default --steps)")
    p.add_argument("--compile", nargs="?", const="true", default="auto", choices=["auto", "true", "false"],
                   help="the batched engine's compile: 'auto' (default) = what a campaign's compile: auto picks "
                        "for --campaign-steps steps of these replicas (uqpot.train.autocompile); --compile alone = true "
                        "(the compilation is part of the warm-up, not timed)")
    p.add_argument("--campaign-steps", type=int, default=10_000,
                   help="the campaign length 'auto' decides for (10,000: the paper's ammonia runs of 5 ps)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    model = make_model(args.device, dtype)
    batch_starts = starts(args.replicas, args.data)
    if args.compile == "auto":
        from uqpot.train.autocompile import choose_md_compile

        compiled, why = choose_md_compile("auto", model, batch_starts, args.campaign_steps, torch.device(args.device))
        print(f"compile auto for {args.campaign_steps} steps of {args.replicas} replicas: {why}", flush=True)
        args.compile = compiled
    else:
        args.compile = args.compile == "true"
    ase_starts = batch_starts[:args.ase_replicas]
    rates = {"batched": [], "ase": []} | ({"torchsim": []} if args.engine == "torchsim" else {})
    details = {}
    for _ in range(args.rounds):
        if args.engine == "torchsim":
            r, details["torchsim"] = time_torchsim(model, batch_starts, args.torchsim_steps or args.steps,
                                                   args.device, args.thermostat)
            rates["torchsim"].append(r)
        r, details["batched"] = time_batched(model, batch_starts, args.steps, args.device, args.layout,
                                             args.compile, args.thermostat)
        rates["batched"].append(r)
        r, details["ase"] = time_ase(model, ase_starts, args.ase_steps, args.thermostat)
        rates["ase"].append(r)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "benchmark": "md_speed", "system": "NH3", "model": "PaiNN 3x128, 20 rbf, 5 A (random weights)",
        "thermostat": (f"Langevin {FRICTION_PER_FS}/fs" if args.thermostat == "langevin" else
                       "nose-hoover chain 3, tau 50 fs") + ", dt 0.5 fs, 300 K", "device": args.device, "dtype": args.dtype,
        "layout": args.layout, "compile": args.compile,
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
        "replicas": args.replicas, "steps": args.steps,
        "batched_replica_steps_per_s": med["batched"], "ase_replica_steps_per_s": med["ase"],
        "speedup": med["batched"] / med["ase"], "rounds": rates, "details": details,
        "torchsim_replica_steps_per_s": med.get("torchsim"),
        "torch": torch.__version__,
    }
    print(json.dumps(out))
    print()
    print(f"{'engine':<28}{'replica-steps/s':>18}{'speed-up':>10}")
    ase_name = "ASE Langevin x1" if args.thermostat == "langevin" else "ASE NoseHooverChainNVT x1"
    print(f"{ase_name:<28}{med['ase']:>18.1f}{1.0:>10.1f}")
    print(f"{f'batched ({args.replicas} replicas)':<28}{med['batched']:>18.1f}{med['batched'] / med['ase']:>10.1f}")
    if "torchsim" in med:
        print(f"{f'torch-sim ({args.replicas} replicas)':<28}{med['torchsim']:>18.1f}{med['torchsim'] / med['ase']:>10.1f}")
    print(f"layout {args.layout}, compile {args.compile}, device {args.device}, {args.dtype}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
