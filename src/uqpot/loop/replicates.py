"""Replicates of an active-learning loop: one loop per seed, run generation by generation together.

A study's seeds run the same loop config with their own seed, each in ``OUT/seed{s}``, with one label store
(``OUT/labels.db``).  Within a generation every (seed, method) pair is independent: on a Dask executor they
run side by side in the loop's order (:func:`uqpot.core.executor.run_jobs`: the seeds' stacked trainings
first, then the longest steps, the ensembles'; each step after the stack that trains its network).  Results are collected by (seed, method), never in the
order workers finish, so the summaries do not depend on the executor.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..core.executor import Job, run_jobs
from ..core.provenance import write_json
from ..uq import method_class
from .active_learning import ActiveLearning
from .config import LoopConfig
from .final import final_models
from .stacked import BACKBONE, stack_jobs, train_stacked
from .stopping import write_stopping


def replicates(cfg: LoopConfig, seeds: list[int]) -> list[LoopConfig]:
    """One loop config per seed: ``OUT/seed{s}``, all with one label store (``OUT/labels.db``)."""
    out = Path(cfg.out)
    store = cfg.store or out / "labels.db"
    return [cfg.model_copy(update={"seed": int(s), "out": out / f"seed{s}", "store": store}) for s in seeds]


def run_replicates(cfgs: list[LoopConfig], out: Path, executor=None, console=None, log=None,
                   extra: dict | None = None, restart: bool = False) -> dict:
    """Runs one loop per config (the replicates of a study, one per seed) and writes ``OUT/summary.json``
    with every seed's summary (what the report reads); ``restart`` starts every loop afresh (the label
    store is kept)."""
    loops = [ActiveLearning(c, console=console, executor=executor, restart=restart) for c in cfgs]
    for al in loops:  # every seed's loop checked before any is written
        al.validate()
    if restart:
        (Path(out) / "summary.json").unlink(missing_ok=True)
    summaries = run_loops(loops, executor, log)
    summary = {**(extra or {}), "seeds": [c.seed for c in cfgs],
               "per_seed": {str(c.seed): s for c, s in zip(cfgs, summaries)}}
    write_json(Path(out) / "summary.json", summary)
    return summary


def run_loop(loop: ActiveLearning) -> dict:
    """All generations of one loop; within a generation the methods are independent and run in parallel on
    the loop's executor when it has one (labels of a method then run on its worker)."""
    return run_loops([loop], loop.executor, loop.log)[0]


def run_loops(loops: list["ActiveLearning"], executor=None, log=None) -> list[dict]:
    """Runs several loops (replicates of one study: one per seed) generation by generation; within a
    generation every (loop, method) pair is independent and runs on the executor when one is given.  When
    the generations have ended, a loop with ``until`` trains the final model of every method that stopped
    (:func:`uqpot.loop.final.final_models`: jobs on the executor, or in-process).
    Results are collected by (loop, method), never in the order workers finish; returns each loop's
    summary (also written to its ``summary.json`` after every generation).  Every loop is checked before
    any writes (:meth:`ActiveLearning.validate`)."""
    for al in loops:
        al.validate()
    aligns = [al.prepare() for al in loops]
    summaries = [{"alignment": a, "generations": {}} for a in aligns]
    generations = max(al.cfg.generations for al in loops)
    parallel = executor is not None and not getattr(executor, "in_process", True)
    pairs = [(k, m) for k, al in enumerate(loops) for m in al.cfg.methods]
    # the longest steps first (the methods whose class says ``runs_first``: an ensemble's MD costs M model
    # calls), so that workers finish together
    pairs.sort(key=lambda p: (not method_class(p[1]).runs_first, p[0]))
    eta = _ETA(sum(al.cfg.generations * len(al.cfg.methods) for al in loops), log or loops[0].log)
    seeds = len(loops) > 1
    samplers = len({str(al.cfg.sampler) for al in loops}) > 1
    earlier = {(k, int(g), m) for k, al in enumerate(loops) for g, recs in _finished(al.out).items() for m in recs}
    stopped: dict = {}  # (loop, method) pairs whose stopping rule (``until``) said stop: the generation
    for g in range(1, generations + 1):
        todo = [(k, m) for k, m in pairs if g <= loops[k].cfg.generations and (k, m) not in stopped]
        if not todo:
            break
        results: dict = {}
        if parallel:
            # every seed's network of a method in one stacked training, where that equals separate runs; a step
            # whose training is in a stack (or, in generation 1, on a shared backbone) starts after it, the
            # others (an ensemble's seeds trained one by one) beside the stacks; a free worker takes the first
            # ready job: the stacks, then the longest steps
            jobs = stack_jobs(loops, g, todo)
            stacks = {j.key for j in jobs}
            shared = {(k, m) for k, m in todo if g == 1 and m in loops[k].shared_methods()}
            after_backbone = ("stack", BACKBONE) if ("stack", BACKBONE) in stacks else None
            jobs += [Job(("backbone", k), run_backbone, (loops[k].cfg.model_dump(mode="json"),), after_backbone)
                     for k in sorted({k for k, _ in shared})]
            jobs += [Job((k, m), run_method_generation, (loops[k].cfg.model_dump(mode="json"), g, m),
                         ("backbone", k) if (k, m) in shared else (("stack", m) if ("stack", m) in stacks else None))
                     for k, m in todo]

            pairs_now = set(todo)

            def done(key, g=g, pairs_now=pairs_now):
                if key in pairs_now:
                    eta.step(_what(g, key[1], loops[key[0]], seeds, samplers), (key[0], g, key[1]) in earlier)

            out = run_jobs(executor, jobs, on_done=done)
            results = {p: out[p] for p in todo}
        else:
            train_stacked(loops, g, todo)
            for k, m in todo:
                results[k, m] = loops[k].method_generation(g, m)
                eta.step(_what(g, m, loops[k], seeds, samplers), (k, g, m) in earlier)
        for k, m in todo:
            st = results[k, m].get("stopping")
            if st is not None and st["decision"] == "stop":
                stopped[k, m] = g
                loops[k].log(f"{m} stopped after generation {g}: {st['reason']}")
        for k, al in enumerate(loops):
            recs = {m: results[k, m] for m in al.cfg.methods if (k, m) in results}
            if g <= al.cfg.generations and recs:
                summaries[k]["generations"][g] = recs
                write_json(al.out / "summary.json", summaries[k])
            if al.cfg.until is not None and recs:
                write_stopping(al.out, al.cfg.methods)
    # the generations have ended (every method stopped, or the last generation ran): each stopped method's final
    # model (uqpot.loop.final), on the executor's workers when it has them
    for k, recs in enumerate(final_models(loops, stopped, executor, parallel)):
        if recs:
            summaries[k]["final"] = {m: {"generation": r["generation"], "n_train": r["split"]["n_train"],
                                         "n_val": r["split"]["n_val"], "test": r["test"]} for m, r in recs.items()}
            write_json(loops[k].out / "summary.json", summaries[k])
    return summaries


def _what(g: int, method: str, loop: ActiveLearning, seeds: bool, samplers: bool = False) -> str:
    return (f"generation {g}, {method}" + (f", sampler {loop.cfg.sampler_for(method)}" if samplers else "")
            + (f", seed {loop.cfg.seed}" if seeds else ""))


class _ETA:
    """Overall progress of a loop: steps done, elapsed time and the estimated time left.  Steps that an
    earlier run finished (read back on resume) take no time and are left out of the rate."""

    def __init__(self, total: int, log):
        self.total, self.done, self.earlier, self.log, self.t0 = total, 0, 0, log, time.perf_counter()

    def step(self, what: str, earlier: bool = False) -> None:
        self.done += 1
        self.earlier += bool(earlier)
        elapsed = time.perf_counter() - self.t0
        worked = self.done - self.earlier
        left = f"about {elapsed / worked * (self.total - self.done) / 60:.1f} min left" if worked else "resuming"
        note = " (finished by an earlier run)" if earlier else ""
        self.log(f"[{self.done}/{self.total}] {what} done{note}; elapsed {elapsed / 60:.1f} min, {left}")


def _finished(out: Path) -> dict:
    """The generations (and their methods) that the loop's ``summary.json`` lists as finished."""
    import json

    try:
        return json.loads((Path(out) / "summary.json").read_text()).get("generations", {})
    except (OSError, ValueError):
        return {}


def run_backbone(cfg: dict) -> dict:
    """Generation 1's shared backbone on a worker process (picklable entry point for Dask)."""
    from ..core.determinism import fixed_threads

    loop = ActiveLearning(LoopConfig.model_validate(cfg))
    with fixed_threads(loop.cfg.threads):
        return loop.step_backbone()


def run_method_generation(cfg: dict, g: int, method: str) -> dict:
    """One method's generation on a worker process (picklable entry point for Dask)."""
    return ActiveLearning(LoopConfig.model_validate(cfg)).method_generation(g, method)


def run_model_steps(cfg: dict, g: int, method: str) -> None:
    """:meth:`ActiveLearning.model_steps` on a worker process (picklable entry point for Dask)."""
    ActiveLearning(LoopConfig.model_validate(cfg)).model_steps(g, method)
