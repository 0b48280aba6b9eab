"""The training step of a generation for every seed of a study at once (:mod:`uqpot.fit.replicates`).

Before the (seed, method) steps of generation g run (:func:`uqpot.loop.replicates.run_loops`), each method's
networks of all seeds train in one stacked pass, each written where the seed's own training step writes
(``OUT/seed{s}/gen{g}/{method}/train/``; in generation 1 the shared backbone of the post-hoc methods,
``OUT/seed{s}/gen1/backbone/train/``), so that the seed's step finds its training done and goes on with the
test, MD, NEB and sampling.  The stack itself trains in ``OUT/stacked/gen{g}/{method}/`` and resumes there.
Where a stack would not equal the separate runs (:func:`uqpot.fit.replicates.why_not_stacked`), or
``replicates: separate``, the seeds train one by one as before; the loop's log says which and why.
"""

from __future__ import annotations

from pathlib import Path

from ..core.determinism import fixed_threads
from ..core.executor import Job
from ..data.io import write_extxyz
from ..fit.replicates import Replicate, fit_replicates, why_not_stacked
from ..uq.options import parse_uq
from .active_learning import ActiveLearning
from .config import LoopConfig

BACKBONE = "backbone"


def stacked_groups(loops: list[ActiveLearning], g: int, todo: list[tuple[int, str]]) -> list[tuple[str, list[int]]]:
    """The (method, loops) groups of generation ``g`` to train stacked: ``"backbone"`` for generation 1's
    shared backbone, each method that trains its own network otherwise; only loops of one study (one parent
    folder, ``replicates: auto``) with their training not yet done."""
    if len(loops) < 2 or any(al.cfg.replicates != "auto" for al in loops):
        return []
    if len({al.out.parent for al in loops}) != 1:
        return []
    groups: dict[str, list[int]] = {}
    pending: set = set()
    for k, m in todo:
        al = loops[k]
        name = BACKBONE if g == 1 and m in al.shared_methods() else m
        done = (al.backbone_dir if name == BACKBONE else al.gen_dir(g, m) / "train") / "summary.json"
        if k not in groups.setdefault(name, []):
            groups[name].append(k)
        if not done.is_file():
            pending.add(name)
    # a group keeps every seed of the generation, finished or not, so that a resumed study stacks the seeds it
    # stacked before (a network's last bits depend on the stack it trained in: uqpot.fit.replicates)
    return [(m, ks) for m, ks in groups.items() if len(ks) > 1 and m in pending]


def train_stacked(loops: list[ActiveLearning], g: int, todo: list[tuple[int, str]]) -> None:
    """Trains every group of :func:`stacked_groups` in this process, so that the seeds' own training steps of
    generation ``g`` find their results (on an executor: :func:`stack_jobs`)."""
    for m, ks in stacked_groups(loops, g, todo):
        stack_method([loops[k] for k in ks], g, m)


def stack_jobs(loops: list[ActiveLearning], g: int, todo: list[tuple[int, str]]) -> list[Job]:
    """Every group of :func:`stacked_groups` as a job for :func:`uqpot.core.executor.run_jobs`, keyed
    ``("stack", name)`` (``name``: ``"backbone"`` or the method): the steps that need a stack's training name
    it as their ``after``, while those that do not (a method whose seeds train one by one, e.g. an ensemble on
    a CPU) run beside the stacks."""
    return [Job(("stack", m), run_stacked, ([loops[k].cfg.model_dump(mode="json") for k in ks], g, m))
            for m, ks in stacked_groups(loops, g, todo)]


def run_stacked(cfgs: list[dict], g: int, method: str) -> None:
    """:func:`stack_method` on a worker process (picklable entry point for Dask)."""
    stack_method([ActiveLearning(LoopConfig.model_validate(c)) for c in cfgs], g, method)


def stack_method(loops: list[ActiveLearning], g: int, method: str) -> None:
    """Generation ``g`` of ``method`` (or ``"backbone"``) for the seeds of ``loops``: one stacked training
    where it equals their separate runs, else nothing (each seed's own step trains it)."""
    first = loops[0]
    uq = parse_uq({"method": "none"}) if method == BACKBONE else first.cfg.uq_config(method)
    init = first.init_for(g, "none" if method == BACKBONE else method)
    reps = []
    with fixed_threads(first.cfg.threads):
        for al in loops:
            train0, val0, test, _ = al.initial_data()
            if method == BACKBONE:
                train, val, out = train0, val0, al.backbone_dir
            else:
                train, val = al.data_for(g, method, (train0, val0))
                out = al.gen_dir(g, method) / "train"
            reps.append(Replicate(al.cfg.seed, train, val, test, out, {"generation": g, "method": method}))
        why = why_not_stacked(first.cfg.model, uq, first.train_settings(), reps, init)
        seeds = ", ".join(str(al.cfg.seed) for al in loops)
        if why is not None:
            for al in loops:
                al.log(f"gen {g} {method}: the seeds {seeds} train one by one ({why})")
            return
        for al, rep in zip(loops, reps):
            Path(rep.out).mkdir(parents=True, exist_ok=True)
            write_extxyz(rep.train, Path(rep.out) / "train.extxyz")
            write_extxyz(rep.val, Path(rep.out) / "val.extxyz")
            al.log(f"gen {g} {method}: training on {len(rep.train)} structures ({len(rep.val)} validation), "
                   f"stacked with the seeds {seeds}")
        stack_dir = first.out.parent / "stacked" / f"gen{g}" / method
        fit_replicates(first.cfg.model, uq, first.train_settings(), reps, stack_dir, console=first.console)
