"""The per-step constants of ``uqpot reproduce ... --dry-run`` (:mod:`uqpot.studies.plan_costs`), measured.

    python benchmarks/plan_costs.py [--only train,eval,md,attack,labels,build] [--quick]

One PyTorch thread (what every step of a study runs with: ``threads: 1``, one job per worker), CPU, eager
(the compiled speed-ups are :mod:`uqpot.train.autocompile`'s), random weights (speed does not depend on them),
synthetic structures of the studies' sizes with random labels:

* NH3 (4 atoms, rattled pyramids), rMD17-sized molecules (ethanol from ``../shared/data`` where it is, else
  ASE's; compact random molecules of 12-24 atoms at ethanol's density for the other rMD17 sizes), SiO2 at
  the glass's 2.2 g/cm³ (random positions, Si-O and O-O no closer than 1.5 Å; 48 and 699 atoms);
* ``train``: seconds per training step of every method (the trainer's own batches and loss, backward and
  optimiser step: ``uqpot.train.trainer.Trainer``), at each preset's width, batch and members;
* ``eval``: seconds per structure of energy, forces and U without a graph (validation, test) at batch 64,
  the data set's neighbour lists already built (as from the second validation pass on);
* ``md``: seconds per step of the batched NVT engine (Nosé-Hoover) with each preset's replicas, one network
  and the preset's members (699 atoms: one network only; the ensemble's 10 replicas need over 20 GB);
* ``attack``: seconds per iteration of the adversarial attack (Eq. 15-16) of every method on the preset's
  number of seeds (699 atoms: one seed, the single-network methods);
* ``neb``: seconds per band step of the NH3 inversion NEB (11 images, FIRE) and per step of the endpoints'
  relaxation (BFGS, one structure), plain and ensemble, at each ammonia preset's width (forced steps: with
  random weights the band is flat and converges at once, so the number of steps is not measured here);
* ``labels``: seconds per PySCF BP86-D3(BJ)/def2-SVP NH3 label (after one warm-up label); the number of
  oracle calls of the ammonia data build (the paper's sizes), the loop's NH3 minimum and the oracle's NEB,
  counted with GFN2-xTB (tblite) standing in for the DFT (same procedure, another surface: the count is an
  estimate of the DFT build's);
* ``build``: the wall time of the silica data build at 48 atoms (the quick preset's; LAMMPS + BKS).

Prints one JSON object (the figures :mod:`uqpot.studies.plan_costs` holds) and the load average: on a shared
machine every figure is slower by the load, so copy figures measured on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HP = dict(interactions=3, rbf=20, cutoff=5.0, activation="ssp")
#: (workload, system, features, readout, batch, members, structures per MD batch, attack seeds, atoms)
WORKLOADS = {
    "ammonia_quick": ("ammonia", 64, 32, 16, 5, 40, 20, 4),
    "ammonia_paper": ("ammonia", 128, 64, 64, 5, 400, 20, 4),
    "silica_quick": ("silica", 32, 16, 8, 3, 4, 10, 48),
    "silica_paper": ("silica", 128, 64, 3, 3, 10, 10, 699),
    "rmd17_quick": ("rmd17", 128, 64, 16, 5, 0, 0, 9),
    "rmd17_paper": ("rmd17", 128, 64, 64, 5, 0, 0, 9),
}
METHODS = ("none", "ensemble", "mve", "evidential", "gmm")


def _labelled(atoms_list, rng):
    from uqpot.data.structures import Structure, StructureDataset

    out = []
    for a in atoms_list:
        s = Structure.from_atoms(a, energy=float(rng.normal()), forces=rng.normal(size=(len(a), 3)))
        if s.periodic:
            s.stress = np.zeros((3, 3))
        out.append(s)
    return StructureDataset(out)


def nh3(n, rng):
    from uqpot.md.neb import nh3_pyramid

    out = []
    for k in range(n):
        a = nh3_pyramid()
        a.rattle(0.05, seed=int(rng.integers(1 << 30)))
        out.append(a)
    return out


def molecule(n_atoms, n, rng):
    """Ethanol frames (9 atoms), else compact random C/H/O molecules of ``n_atoms`` at ethanol's density."""
    from ase import Atoms

    if n_atoms == 9:
        path = DATA / "rmd17_ethanol_800.extxyz"
        if path.is_file():
            from ase.io import read

            frames = read(path, f":{n}")
            return [frames[k % len(frames)] for k in range(n)]
        from ase.build import molecule as ase_molecule

        base = ase_molecule("CH3CH2OH")
        return [base.copy() for _ in range(n)]
    out = []
    radius = 2.2 * (n_atoms / 9) ** (1 / 3)  # ethanol: about 2.2 Å from the centre to the outer H
    for _ in range(n):
        pos = []
        while len(pos) < n_atoms:
            p = rng.uniform(-radius, radius, 3)
            if np.linalg.norm(p) <= radius and all(np.linalg.norm(p - q) > 1.0 for q in pos):
                pos.append(p)
        numbers = [6 if k % 2 == 0 else 1 for k in range(n_atoms)]
        numbers[1] = 8
        out.append(Atoms(numbers=numbers, positions=pos))
    return out


def silica(n_atoms, n, rng):
    from ase import Atoms

    n_si = n_atoms // 3
    numbers = [14] * n_si + [8] * (n_atoms - n_si)
    mass = n_si * 28.0855 + (n_atoms - n_si) * 15.9994  # amu
    side = (mass * 1.66054 / 2.2) ** (1 / 3)  # Å, at 2.2 g/cm³
    out = []
    for _ in range(n):
        pos = []
        while len(pos) < n_atoms:
            p = rng.uniform(0, side, 3)
            if pos:
                d = np.asarray(pos) - p
                d -= side * np.round(d / side)
                if np.min(np.linalg.norm(d, axis=1)) < 1.5:
                    continue
            pos.append(p)
        out.append(Atoms(numbers=numbers, positions=pos, cell=[side] * 3, pbc=True))
    return out


def structures(system, atoms, n, seed=0):
    rng = np.random.default_rng(seed)
    if system == "ammonia":
        return nh3(n, rng)
    if system == "silica":
        return silica(atoms, n, rng)
    return molecule(atoms, n, rng)


def _model(method, features, readout, members, train):
    """A random-weight model of ``method`` (``none``: the plain PaiNN) and its training loss (the trainer's)."""
    from uqpot.train.config import TrainConfig
    from uqpot.nn.potential import Potential
    from uqpot.uq import METHODS

    m = members if method == "ensemble" else 1
    hp = dict(HP, features=features, readout_hidden=readout, members=m, seeds=list(range(m)))
    torch.manual_seed(0)
    model = Potential(**hp) if method == "none" else METHODS[method](potential=hp)
    model.fit_reference(train)
    if method == "gmm":
        model.fit_posthoc(train)
    loss = model.make_loss(TrainConfig()) if method not in ("none", "gmm") else None
    return model, loss


def measure_train(name, steps=4, methods=("none", "ensemble", "mve", "evidential")) -> dict:
    from uqpot.train.config import TrainConfig
    from uqpot.train.losses import resolve_stress_weight
    from uqpot.train.trainer import Trainer

    system, features, readout, batch, members, _, _, atoms = WORKLOADS[name]
    steps = 1 if atoms > 100 else steps  # 699 atoms: one warm-up step and one timed (tens of seconds each)
    data = _labelled(structures(system, atoms, batch * (steps + 1) + 2), np.random.default_rng(1))
    train, val = data.subset(range(batch * (steps + 1))), data.subset(range(batch * (steps + 1), len(data)))
    out = {}
    for method in methods:
        model, loss_fn = _model(method, features, readout, members, train)
        cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-4, progress=False, device="cpu", compile=False,
                          stress_weight=0.0 if system == "silica" else None)
        cfg = resolve_stress_weight(cfg, train)
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(model, train, val, cfg, tmp, loss_fn=loss_fn)
            tr.model.train()
            times = []
            for _, b in tr._batches(train, batch, shuffle=False):
                t0 = time.perf_counter()
                loss, _ = tr._step_loss(b)
                tr.optimizer.zero_grad()
                loss.sum().backward()
                tr.optimizer.step()
                times.append(time.perf_counter() - t0)
        out[method] = statistics.median(times[1:])
        print(f"train {name} {method}: {out[method]:.4f} s/step", file=sys.stderr, flush=True)
    return out


def measure_eval(name, n=64) -> dict:
    from uqpot.core import fields as F
    from uqpot.evaluation.predict import predict

    system, features, readout, _, members, _, _, atoms = WORKLOADS[name]
    n = 6 if atoms > 100 else n
    data = _labelled(structures(system, atoms, n), np.random.default_rng(2))
    out = {}
    for method in ("none", "ensemble"):
        model, _ = _model(method, features, readout, members, data)
        keys = (F.ENERGY, F.FORCES) if method == "none" else (F.ENERGY, F.FORCES, F.UNCERTAINTY)
        predict(model, data, batch_size=64 if atoms < 100 else 3, keys=keys)  # warm-up; neighbour lists cached
        t0 = time.perf_counter()
        predict(model, data, batch_size=64 if atoms < 100 else 3, keys=keys)
        out[method] = (time.perf_counter() - t0) / n
        print(f"eval {name} {method}: {out[method]:.5f} s/structure", file=sys.stderr, flush=True)
    return out


def measure_md(name, steps=10) -> dict:
    from uqpot.md.batched import BatchedMD

    system, features, readout, _, members, replicas, _, atoms = WORKLOADS[name]
    starts = structures(system, atoms, replicas, seed=3)
    data = _labelled(starts[:2], np.random.default_rng(3))
    heavy = atoms > 100
    steps = 3 if heavy else steps
    out = {}
    # 699 atoms: the ensemble's 10 replicas need over 20 GB (killed for memory on this 24 GB machine); its
    # cost is the plain one times the ensemble/plain ratio of the 48-atom workload (the plan does so)
    for method in ("none",) if heavy else ("none", "ensemble"):
        model, _ = _model(method, features, readout, members, data)
        model = model.to(torch.float32).eval()
        md = BatchedMD(model, starts, timestep_fs=0.25 if system == "silica" else 0.5,
                       temperatures_K=2500.0 if system == "silica" else 300.0, seeds=list(range(replicas)),
                       skin=0.5 if system == "silica" else 2.0, check_every=1 if heavy else 5)
        md.run(1 if heavy else 5)  # warm-up
        t0 = time.perf_counter()
        md.run(steps)
        out[method] = (time.perf_counter() - t0) / steps
        print(f"md {name} {method}: {out[method]:.4f} s/step of {replicas} replicas", file=sys.stderr, flush=True)
    return out


def measure_attack(name, iterations=5) -> dict:
    from uqpot.sample.adversarial import AttackConfig, BoltzmannReference, attack

    system, features, readout, _, members, _, n_seeds, atoms = WORKLOADS[name]
    heavy = atoms > 100
    if heavy:  # 699 atoms: one seed, one iteration; the ensemble (memory) as in measure_md
        n_seeds, iterations = 1, 1
    data = _labelled(structures(system, atoms, max(n_seeds, 8), seed=4), np.random.default_rng(4))
    ref = BoltzmannReference.from_energies(data.energies(), [s.n_atoms for s in data], 0.7)
    out = {}
    for method in ("mve", "evidential", "gmm") if heavy else ("ensemble", "mve", "evidential", "gmm"):
        model, _ = _model(method, features, readout, members, data)
        cfg = AttackConfig(iterations=1, n_seeds=n_seeds, energy_cutoff=None)
        attack(model, list(data.structures[:n_seeds]), ref, cfg)  # warm-up
        cfg = AttackConfig(iterations=iterations, n_seeds=n_seeds, energy_cutoff=None)
        t0 = time.perf_counter()
        attack(model, list(data.structures[:n_seeds]), ref, cfg)
        out[method] = (time.perf_counter() - t0) / (iterations + 1) / n_seeds
        print(f"attack {name} {method}: {out[method]:.5f} s per structure-iteration", file=sys.stderr, flush=True)
    return out


def measure_neb(name, steps=20) -> dict:
    from uqpot.md.neb import calculator_factory, mirror, nh3_pyramid, relax, run_neb

    system, features, readout, _, members, _, _, _ = WORKLOADS[name]
    data = _labelled(nh3(8, np.random.default_rng(0)), np.random.default_rng(1))
    left = nh3_pyramid()
    right = mirror(left)
    out = {}
    for method in ("none", "ensemble"):
        model, _ = _model(method, features, readout, members, data)
        model.eval()
        run_neb(left, right, model, fmax=0.0, steps=2)  # warm-up
        t0 = time.perf_counter()
        res = run_neb(left, right, model, fmax=0.0, steps=steps)
        band = (time.perf_counter() - t0) / max(1, res.steps)
        factory, _ = calculator_factory(model)
        t0 = time.perf_counter()
        relax(left, factory(), fmax=0.0, steps=steps)
        out[method] = {"band_step_s": band, "relax_step_s": (time.perf_counter() - t0) / steps}
        print(f"neb {name} {method}: {out[method]}", file=sys.stderr, flush=True)
    return out


def measure_labels() -> dict:
    from uqpot.systems.ammonia.build import AmmoniaConfig, build_ammonia
    from uqpot.data.store import open_store
    from uqpot.oracle import get_oracle
    from uqpot.loop.md import nh3_minimum, oracle_neb_for_loop

    out = {}
    pyscf = get_oracle("pyscf:bp86-d3bj/def2-svp", threads=1)
    from uqpot.data.structures import Structure

    frames = [Structure.from_atoms(a) for a in nh3(4, np.random.default_rng(5))]
    pyscf.label(frames[:1])  # warm-up (imports, grids)
    t0 = time.perf_counter()
    pyscf.label(frames[1:])
    out["pyscf_nh3_s"] = (time.perf_counter() - t0) / 3
    print(f"labels: PySCF NH3 {out['pyscf_nh3_s']:.2f} s", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        xtb = get_oracle("tblite")
        store = open_store(Path(tmp) / "labels.db")
        build_ammonia(Path(tmp) / "data", store=store, oracle=xtb, config=AmmoniaConfig())
        out["ammonia_build_calls"] = xtb.calls
        c0 = xtb.calls
        nh3_minimum(xtb, store)
        out["ammonia_minimum_calls"] = xtb.calls - c0
        c0 = xtb.calls
        oracle_neb_for_loop(xtb, store, Path(tmp) / "loop", mode="symmetric")
        out["ammonia_oracle_neb_calls"] = xtb.calls - c0
    print(f"labels: ammonia build {out['ammonia_build_calls']} calls (tblite)", file=sys.stderr, flush=True)
    return out


def measure_build() -> dict:
    from uqpot.systems.silica.build import SilicaConfig, build_silica

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_silica(Path(tmp) / "data", config=SilicaConfig(atoms=48), oracle="bks")
        wall = time.perf_counter() - t0
    return {"silica_build_48_s": wall}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="train,eval,md,attack,neb,labels,build")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    parts, names = a.only.split(","), a.workloads.split(",")
    res: dict = {"threads": 1, "torch": torch.__version__, "load_before": os.getloadavg()}
    for part, fn in (("train", measure_train), ("eval", measure_eval), ("md", measure_md), ("attack", measure_attack)):
        if part in parts:
            res[part] = {n: fn(n) for n in names if not (part in ("md", "attack") and WORKLOADS[n][0] == "rmd17")}
    if "train" in parts and any(n.startswith("rmd17") for n in names):  # per-molecule size, plain PaiNN
        res["train_rmd17_sizes"] = {}
        for atoms in (12, 16, 21, 24):
            WORKLOADS[f"rmd17_{atoms}"] = ("rmd17", 128, 64, 64, 5, 0, 0, atoms)
            t = measure_train(f"rmd17_{atoms}", steps=2, methods=("none",))
            res["train_rmd17_sizes"][atoms] = t["none"]
    if "neb" in parts:
        res["neb"] = {n: measure_neb(n) for n in names if WORKLOADS[n][0] == "ammonia"}
    if "labels" in parts:
        res["labels"] = measure_labels()
    if "build" in parts:
        res["build"] = measure_build()
    res["load_after"] = os.getloadavg()
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
