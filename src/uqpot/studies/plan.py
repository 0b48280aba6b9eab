"""``uqpot reproduce SYSTEM --preset P --dry-run``: a study's plan and its estimated time, before anything runs.

Nothing is computed, trained, labelled or written: the plan is counted from the preset (and ``--seeds``,
``--methods``, ``--molecules``, ``--splits``) alone, and every count is multiplied by a per-step constant of
:mod:`uqpot.studies.plan_costs` (measured on this project's 2-core CPU, one thread per job, with the source
of each figure there).

Counts of a loop study (ammonia, silica), per seed, method and generation g of G (one *job*):

* training: ``epochs`` · ⌈n_train(g) / batch⌉ steps (at most: the learning-rate floor can stop it sooner),
  n_train(g) = n_train(1) + 0.8 · (g − 1) · ``attack.n_seeds`` (at most: every candidate accepted; 20% of the
  new samples go to validation), one validation pass of n_val(g) structures per epoch, one test pass;
* MD: ``runs`` × temperatures trajectories of duration / time step steps each (at most: a trajectory stops
  when it fails), all replicas of a campaign in one batched call;
* NEB (ammonia): two endpoint relaxations and one climbing-image band;
* attack and labels (g < G): ``n_seeds`` starting structures × (``iterations`` + 1) model calls, then at
  most ``n_seeds`` oracle labels.

Once per study: the data build (ammonia: oracle labels; silica: LAMMPS melt-quench and BKS labels; skipped
where ``OUT/data`` is built), the energy alignment (``data.align_structures`` labels) and, for ammonia, the
oracle's NH3 minimum and inversion profile (labels shared by every seed through the store).

rMD17 (a grid of trainings): one job per (molecule, split, seed, method), the post-hoc methods of a
(molecule, split, seed) sharing one plain network; the official splits (800 training, 200 validation, 1000
test frames).

Time: each part of a job costs count × constant, scaled from the measured workload of the same system by
the batch (structures per step), the width (features) and the members, linearly (the form of
:mod:`uqpot.train.autocompile`'s cost model); silica by the atoms, rMD17 molecules by the measured step time of
their size.  Where ``compile: auto`` compiles (:func:`uqpot.train.autocompile.predicted_saving`, the rule the run
itself applies), the step costs the eager one divided by the measured speed-up, plus one cold compilation.
Wall time: the data build, then generation after generation the jobs of the generation on the executor's
workers (longest first, each on the least loaded worker: the loop's own order), plus the once-per-study
labels.  An estimate within a factor of about two: a loaded machine, early stopping, failed trajectories and
the NEB's number of steps (not known before the model is) move it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..train.autocompile import COMPILE_COLD_S, MD_COMPILE_COLD_S, MD_SPEEDUP, SPEEDUP, predicted_saving
from ..core.config_io import load_config
from ..uq import method_class
from . import plan_costs as C
from ..loop.md import campaign_config
from ..systems import System, get_system
from .study import Study, _data_config, _loop_config, study_seeds


@dataclass
class Part:
    name: str
    count: str
    cpu_s: float


@dataclass
class Plan:
    title: str
    lines: list[str] = field(default_factory=list)  # what runs: jobs, trajectories, steps, calls
    parts: list[Part] = field(default_factory=list)  # CPU time by part
    wall_s: float = 0.0
    workers: int = 1
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        out = [self.title, "", "plan:"] + [f"  {x}" for x in self.lines] + ["", "estimated CPU time by part "
                                                                              "(one thread each):"]
        total = sum(p.cpu_s for p in self.parts)
        for p in self.parts:
            out.append(f"  {p.name:22s} {_dur(p.cpu_s):>9s}  {p.count}")
        out.append(f"  {'total':22s} {_dur(total):>9s}")
        out += ["", f"estimated wall time on this machine: {_dur(self.wall_s)} ({self.workers} worker(s) x 1 "
                    f"thread; CPU figures measured {C.MEASURED_ON})"]
        out.append(f"GPU: {C.GPU_NOTE}")
        out += [f"note: {n}" for n in self.notes]
        out.append("constants and their sources: uqpot.studies.plan_costs (benchmarks/plan_costs.py measures them)")
        return "\n".join(out)


def _dur(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    if s < 2 * 365.25 * 86400:
        return f"{s / 86400:.1f} d"
    return f"{s / (365.25 * 86400):,.0f} years"


def _n(x: float) -> str:
    return f"{x:,.0f}"


def makespan(durations: list[float], workers: int) -> float:
    """Longest first, each on the least loaded of ``workers``: the finishing time of the last."""
    load = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        load[load.index(min(load))] += d
    return max(load)


def workers_of(executor: str, options: dict | None = None) -> int:
    """Workers the executor runs jobs on (local: one per core, as :func:`uqpot.core.executor.get_executor`)."""
    options = options or {}
    if executor == "none":
        return 1
    if executor == "local":
        return int(options.get("n_workers", os.cpu_count() or 1))
    return int(options.get("jobs", 1)) * int(options.get("processes", 1))


# ------------------------------------------------------------------------------------------------ costs
def _kind(method: str) -> str:
    """Which measured column a method's steps cost: its own, else the plain network's (post-hoc methods)."""
    return method if method in ("ensemble", "mve", "evidential", "gmm") else "none"


def _compiles(setting, method: str, md: bool) -> bool | None:
    """False where the run would stay eager whatever its size, True where set, None where the balance decides."""
    if setting is True or setting is False:
        return setting
    kinds = ("none", "gmm", "ensemble", "mve", "evidential") if md else ("none", "gmm", "ensemble")
    return None if _kind(method) in kinds else False


def step_cost(table: dict, system: str, method: str, features: int, members: int, scale: float) -> float:
    """Seconds of one step of ``method`` from ``table`` ({workload: {kind: s}}): the workload measured for
    ``system`` (a :attr:`System.workload <uqpot.systems.base.System.workload>` name) nearest in width, scaled by ``scale`` (the caller's batch, replicas or atoms ratio), the width and the
    members (ensembles)."""
    wl = C.nearest(system, features)
    ref = C.WORKLOADS[wl]
    kind = _kind(method)
    row = table[wl]
    base = next(row[k] for k in (kind, "none", "gmm") if k in row)  # post-hoc methods: the plain network's
    m = members / ref["members"] if kind == "ensemble" else 1.0
    return base * scale * features / ref["features"] * m


def training_s(method, features, members, batch, n_train, n_val, epochs, n_max, system: System, compile_setting,
               atoms_scale=1.0) -> tuple[float, int, bool]:
    """(seconds, steps, compiled) of one training of ``system`` with its validation passes."""
    periodic, system = system.periodic, system.workload
    wl = C.WORKLOADS[C.nearest(system, features)]
    b = min(batch, n_train)
    steps = epochs * math.ceil(n_train / batch)
    t_step = step_cost(C.TRAIN_STEP_S, system, method, features, members, b / wl["batch"] * atoms_scale)
    t_eval = step_cost(C.EVAL_S, system, method, features, members, atoms_scale)
    width = features * (members if _kind(method) == "ensemble" else 1)
    compiled = _compiles(compile_setting, method, md=False)
    if compiled is None:
        compiled = not periodic and n_max <= 32 and predicted_saving(steps, b * n_max ** 2, width)[0]
    train = steps * t_step / SPEEDUP + COMPILE_COLD_S if compiled else steps * t_step
    return train + epochs * n_val * t_eval, steps, compiled


def md_s(method, features, members, replicas, n_steps, n_max, system: System, compile_setting, atoms_scale=1.0):
    """(seconds, compiled) of one batched MD campaign of ``system``."""
    periodic, system = system.periodic, system.workload
    wl = C.WORKLOADS[C.nearest(system, features)]
    t = step_cost(C.MD_STEP_S, system, method, features, members, replicas / wl["replicas"] * atoms_scale)
    compiled = _compiles(compile_setting, method, md=True)
    if compiled is None:
        width = features * (members if _kind(method) == "ensemble" else 1)
        compiled = not periodic and n_max <= 32 and predicted_saving(n_steps, replicas * n_max ** 2, width,
                                                                     md=True)[0]
    return (n_steps * t / MD_SPEEDUP + MD_COMPILE_COLD_S if compiled else n_steps * t), compiled


def label_s(oracle: str, atoms: int) -> float | None:
    """Seconds per oracle label (None: no figure for this oracle)."""
    name = oracle.lower().split(":")[0]
    if name == "pyscf" and atoms <= 4:
        return C.PYSCF_NH3_S
    if name == "bks":
        return C.BKS_S_PER_ATOM * atoms
    return None


# ------------------------------------------------------------------------------------------------ loop studies
def _build_cost(sys_: System, n_structures: int, atoms: int, oracle: str, lab: float | None) -> tuple[float, str]:
    """(seconds, what) of the data build of ``sys_`` (:data:`~uqpot.studies.plan_costs.BUILD` of its
    workload): oracle calls per structure times the label's time, or a measured wall time scaled by the atoms."""
    b = C.BUILD[sys_.workload]
    if "calls" in b:
        calls = b["calls"] * n_structures / b["structures"]
        return calls * (lab or 0.0), f"about {_n(calls)} oracle calls ({oracle}, {lab or 0:.2f} s each)"
    return (b["seconds"] * (atoms / b["atoms"]) ** b["exponent"],
            f"{atoms}-atom cell: {b['what']} ({_n(n_structures)} structures kept)")


def loop_plan(system: str, preset, out: Path, seeds=None, methods=None, workers: int = 1,
              executor: str = "local", name: str | None = None) -> Plan:
    """The plan of a loop study of ``system`` (ammonia, silica: see the module docstring); ``preset``: the
    study file, ``name``: what the command line called it."""
    sys_ = get_system(system)
    study = load_config(preset, Study)
    seeds = study_seeds(study, seeds, preset)
    cfg = _loop_config(study, Path(out), {"methods": methods} if methods else None, preset, seed=seeds[0])
    data_cfg = _data_config(study, preset)
    n0, n_test, atoms = sys_.plan_sizes(data_cfg)
    atoms_scale = atoms / C.WORKLOADS[C.nearest(sys_.workload, cfg.model.features)]["atoms"]
    vf, G, a = cfg.data.val_fraction, cfg.generations, cfg.attack
    n_val0 = int(round(n0 * vf))
    camp = campaign_config(cfg.md, system, seeds[0]) if cfg.md else None
    F, tr = cfg.model.features, cfg.train_for()
    lab = label_s(study.oracle.name, atoms)
    plan = Plan(f"uqpot reproduce {system} --preset {name or preset} --dry-run: the plan (nothing runs, nothing is "
                "written)", workers=workers)
    members = {m: int(cfg.uq.get(m, {}).get("members", 5 if m == "ensemble" else 1)) for m in cfg.methods}
    totals = dict(train=0.0, md=0.0, neb=0.0, attack=0.0, label=0.0, steps=0, md_steps=0, traj=0, att=0, calls=0,
                  comp_train=0, comp_md=0)
    gen_jobs: list[list[float]] = []
    samplers = {cfg.sampler_for(m) for m in cfg.methods}
    for g in range(1, G + 1):
        n_new = (g - 1) * a.n_seeds
        n_tr, n_val = n0 - n_val0 + round(0.8 * n_new), n_val0 + n_new - round(0.8 * n_new)
        jobs = []
        for m in cfg.methods:
            M = members[m]
            t_train, steps, comp = training_s(m, F, M, tr.batch_size, n_tr, n_val, tr.epochs, atoms, sys_,
                                              tr.compile, atoms_scale)
            t_test = n_test * step_cost(C.EVAL_S, sys_.workload, m, F, M, atoms_scale)
            t_md = 0.0
            if camp is not None:
                reps = camp.runs * len(camp.temperatures_K)
                t_md, mcomp = md_s(m, F, M, reps, camp.n_steps, atoms, sys_, camp.compile, atoms_scale)
                totals["md_steps"] += reps * camp.n_steps
                totals["traj"] += reps
                totals["comp_md"] += mcomp
            t_neb = 0.0
            if cfg.neb and sys_.has_neb:
                k = "ensemble" if _kind(m) == "ensemble" else "none"
                n = C.nearest_neb(sys_.workload, F)
                t_neb = C.NEB_BAND_STEPS * C.NEB_STEP_S[n][k]["band"] + 2 * C.NEB_RELAX_STEPS * C.NEB_STEP_S[n][k]["relax"]
            t_att = t_lab = 0.0
            if g < G:
                its = getattr(a, method_class(m).attack_iterations) or a.iterations
                t_att = a.n_seeds * (its + 1) * step_cost(C.ATTACK_S, sys_.workload, m, F, M, atoms_scale)
                totals["att"] += a.n_seeds * (its + 1)
                totals["calls"] += a.n_seeds
                t_lab = a.n_seeds * (lab or 0.0)
            totals["train"] += t_train + t_test
            totals["steps"] += steps
            totals["comp_train"] += comp
            for key, v in (("md", t_md), ("neb", t_neb), ("attack", t_att), ("label", t_lab)):
                totals[key] += v
            jobs.append(t_train + t_test + t_md + t_neb + t_att + t_lab)
        gen_jobs.append(jobs * len(seeds))
    S = len(seeds)
    for k in ("train", "md", "neb", "attack", "label", "steps", "md_steps", "traj", "att", "calls", "comp_train",
              "comp_md"):
        totals[k] *= S
    n_jobs = S * len(cfg.methods) * G
    once_calls = cfg.data.align_structures + (C.ONCE_CALLS.get(sys_.workload, 0)
                                              if cfg.neb or camp is not None else 0)
    built = (Path(out) / "data" / "summary.json").is_file()
    if built:
        build_s, build_what = 0.0, f"already built in {Path(out) / 'data'}"
    else:
        build_s, build_what = _build_cost(sys_, n0 + n_test, atoms, study.oracle.name, lab)
    plan.lines = [
        f"preset {preset}; seeds {', '.join(map(str, seeds))}; methods {', '.join(cfg.methods)}; {G} generations; "
        f"{n0} initial structures ({n0 - n_val0} training / {n_val0} validation), {n_test} test, {atoms} atoms each",
        f"jobs: {n_jobs} (seed x method x generation), each: training, test, "
        + ", ".join(x for x, on in (("MD", camp is not None), ("NEB", cfg.neb and sys_.has_neb),
                                    ("attack and labels", True)) if on),
        f"training: {_n(totals['steps'])} steps at most ({tr.epochs} epochs, batch {tr.batch_size}, {F} features; "
        f"members: " + ", ".join(f"{m} {members[m]}" for m in cfg.methods) + f"); compiled: {totals['comp_train']} "
        f"of {n_jobs} trainings",
    ]
    if camp is not None:
        plan.lines.append(f"trajectories: {_n(totals['traj'])} ({camp.runs} runs x {len(camp.temperatures_K)} "
                          f"temperature(s) per job), MD steps: {_n(camp.n_steps)} each, {_n(totals['md_steps'])} "
                          f"replica-steps at most ({camp.duration_fs:g} fs at {camp.timestep_fs:g} fs); compiled: "
                          f"{totals['comp_md']} of {n_jobs} campaigns")
    plan.lines += [
        f"attack iterations: {_n(totals['att'])} structure-iterations ({a.n_seeds} seeds x {a.iterations} "
        f"iterations, generations 1-{G - 1})" + ("" if samplers == {"adversarial"} else
                                                 f"; samplers {', '.join(sorted(samplers))}: counted as the attack"),
        f"oracle calls: {_n(totals['calls'])} loop labels at most + {once_calls} once per study"
        + ("" if built else f" + the data build ({build_what})"),
    ]
    t_once = once_calls * (lab or 0.0)
    plan.parts = [Part("data build", build_what, build_s),
                  Part("training and test", f"{n_jobs} trainings", totals["train"]),
                  Part("MD stability", f"{_n(totals['md_steps'])} replica-steps", totals["md"]),
                  Part("NEB", f"{n_jobs} runs, about {C.NEB_BAND_STEPS} band steps each" if totals["neb"] else "none",
                       totals["neb"]),
                  Part("attacks", f"{_n(totals['att'])} structure-iterations", totals["attack"]),
                  Part("labels", f"{_n(totals['calls'] + once_calls)} oracle calls", totals["label"] + t_once)]
    parallel_build = sys_.build_uses_executor and executor != "none"
    plan.wall_s = (build_s / workers if parallel_build else build_s) + t_once + sum(
        makespan(j, workers) for j in gen_jobs)
    if lab is None:
        plan.notes.append(f"no label time measured for the oracle {study.oracle.name!r} on {atoms} atoms: labels "
                          "count 0 s")
    if cfg.neb and sys_.has_neb:
        plan.notes.append(C.NEB_NOTE)
    if len(seeds) > 1 and cfg.replicates == "auto":
        plan.notes.append(C.REPLICATES_NOTE)
    return plan
