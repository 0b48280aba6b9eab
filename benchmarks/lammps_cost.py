"""Cost of one MD step of a uqpot model inside LAMMPS (``uqpot.md.lammps``: fix external, Python callback)
next to uqpot's own engine and to ASE, measured in the same run on the same structure and model.

    python benchmarks/lammps_cost.py [--repeat 2 2 2] [--model painn|ensemble] [--members 3] [--steps 30]
                                     [--rounds 3] [--threads 1] [--dtype float32] [--skin 1.0]

Workload: a rattled α-quartz supercell (``--repeat`` of the 9-atom cell: 72 atoms by default), NVE at 300 K,
time step 0.5 fs, the paper's PaiNN (3 interactions, 128 features, 20 Gaussians, 5 Å cutoff; random weights:
speed does not depend on them), or a ``--members`` ensemble of it (the uncertainty every step).  Per step:

- ``lammps``: LAMMPS ``fix nve`` with the model through ``fix external pf/callback 1 1`` (energy, forces, U);
- ``lammps+virial``: the same with the virial (uqpot's stress: what ``fix npt`` needs), still ``fix nve``;
- ``uqpot``: uqpot's batched engine (:class:`uqpot.md.batched.BatchedMD`), one replica, NVE (Verlet list of
  skin ``--skin``: the model runs on every pair within cutoff + skin, the others on pairs within the cutoff);
- ``ase``: ASE's ``VelocityVerlet`` with :class:`uqpot.md.calculator.UQPotCalculator`;
- ``model``: one bare model call (energy + forces) on a prebuilt batch, the floor every engine pays.

The engines are timed alternately ``--rounds`` times after a warm-up; the medians and their ratios are
printed (one JSON line, then a table).  Speed is reported, never asserted; the load average is printed,
since other processes on a shared machine slow the paths unevenly.
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


def quartz(repeat, seed=0):
    from ase.spacegroup import crystal

    q = crystal(["Si", "O"], basis=[(0.4697, 0.0, 2.0 / 3.0), (0.4135, 0.2669, 0.1191 - 1.0 / 3.0)],
                spacegroup=154, cellpar=[4.916, 4.916, 5.405, 90, 90, 120]).repeat(tuple(repeat))
    q.rattle(0.03, seed=seed)
    return q


def make_model(kind, members, dtype):
    torch.manual_seed(0)
    if kind == "painn":
        from uqpot.nn.potential import Potential

        model = Potential()
        model.known_elements[[8, 14]] = True
    else:
        from uqpot.uq import build_method
        from uqpot.uq.options import parse_uq

        model = build_method(parse_uq({"method": "ensemble", "members": members}),
                             {"members": members, "seeds": list(range(members))})
        model.potential.known_elements[[8, 14]] = True
    return model.to(dtype).eval()


def lammps_instance(atoms, model, virial):
    from uqpot.md.lammps import attach
    from uqpot.oracle.bks import load_lammps

    lmp = load_lammps().lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    a, b, c = atoms.cell.array.tolist()
    lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
                       f"region box prism 0 {a[0]!r} 0 {b[1]!r} 0 {c[2]!r} {b[0]!r} {c[0]!r} {c[1]!r}",
                       "create_box 2 box"])
    types = [1 if z == 14 else 2 for z in atoms.numbers]
    lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, atoms.positions.ravel().tolist())
    fix = attach(lmp, model, ["Si", "O"], set_masses=True, virial=virial)
    lmp.commands_list(["velocity all create 300 1 dist gaussian", "timestep 0.0005", "fix integ all nve",
                       "thermo 1000"])
    return lmp, fix


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, nargs=3, default=[2, 2, 2])
    p.add_argument("--model", choices=["painn", "ensemble"], default="ensemble")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--skin", type=float, default=1.0, help="Verlet-list skin of uqpot's engine (Å; its default 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dtype = {"float32": torch.float32, "float64": torch.float64}[a.dtype]

    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from uqpot.data.batch import collate
    from uqpot.data.structures import Structure
    from uqpot.md.batched import BatchedMD
    from uqpot.md.calculator import UQPotCalculator

    atoms = quartz(a.repeat)
    model = make_model(a.model, a.members, dtype)
    n = a.steps

    lmp_plain, fix_plain = lammps_instance(atoms, model, virial=False)
    lmp_vir, fix_vir = lammps_instance(atoms, model, virial=True)
    md = BatchedMD(model, [atoms], timestep_fs=0.5, thermostat="nve", temperatures_K=300.0, check_every=n,
                   record_every=n, skin=a.skin)
    ase_atoms = atoms.copy()
    ase_atoms.calc = UQPotCalculator(model)
    MaxwellBoltzmannDistribution(ase_atoms, temperature_K=300, rng=np.random.default_rng(0))  # ASE 3.29 warns
    dyn = VelocityVerlet(ase_atoms, timestep=0.5 * units.fs)
    batch = collate([Structure.from_atoms(atoms)], cutoff=model.cutoff, dtype=dtype)

    def t_lammps(lmp, fix):
        t = time.perf_counter()
        lmp.command(f"run {n} pre no post no")
        fix.raise_error()
        return (time.perf_counter() - t) / n

    def t_uqpot():
        t = time.perf_counter()
        md.run(n)
        return (time.perf_counter() - t) / n

    def t_ase():
        t = time.perf_counter()
        dyn.run(n)
        return (time.perf_counter() - t) / n

    def t_model():
        t = time.perf_counter()
        for _ in range(n):
            model(batch, compute_forces=True, create_graph=False)
        return (time.perf_counter() - t) / n

    engines = {"lammps": lambda: t_lammps(lmp_plain, fix_plain), "lammps+virial": lambda: t_lammps(lmp_vir, fix_vir),
               "uqpot": t_uqpot, "ase": t_ase, "model": t_model}
    lmp_plain.command("run 2")  # warm-up (setup, first calls)
    lmp_vir.command("run 2")
    md.run(2)
    dyn.run(2)
    t_model()
    times = {k: [] for k in engines}
    for _ in range(a.rounds):
        for k, f in engines.items():
            times[k].append(f())
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {f"{k}/uqpot": med[k] / med["uqpot"] for k in med} | {f"{k}/ase": med[k] / med["ase"] for k in med}
    record = {"atoms": len(atoms), "model": a.model, "members": a.members if a.model == "ensemble" else 1,
              "dtype": a.dtype, "threads": a.threads, "steps": n, "rounds": a.rounds, "skin": a.skin,
              "ms_per_step": {k: round(1e3 * v, 3) for k, v in med.items()},
              "ratios": {k: round(v, 3) for k, v in ratios.items()},
              "loadavg": os.getloadavg()[0], "torch": torch.__version__}
    print(json.dumps(record))
    print(f"{len(atoms)} atoms, {a.model}, {a.dtype}, {a.threads} thread(s), median of {a.rounds} x {n} steps "
          f"(load average {record['loadavg']:.2f})")
    print(f"{'engine':<15}{'ms/step':>10}{'/ uqpot':>10}{'/ ase':>10}")
    for k, v in med.items():
        print(f"{k:<15}{1e3 * v:>10.2f}{v / med['uqpot']:>10.2f}{v / med['ase']:>10.2f}")
    lmp_plain.close()
    lmp_vir.close()
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
