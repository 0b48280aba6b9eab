"""Replicates of an active-learning loop: one loop per seed, run generation by generation together.

A study's seeds run the same loop config with their own seed, each in ``OUT/seed{s}``, with one label store
(``OUT/labels.db``).  Within a generation every (seed, method) pair is independent: on a Dask executor they
all run at once, the longest (ensembles) first.  Results are collected by (seed, method), never in the
order workers finish, so the summaries do not depend on the executor.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..provenance import write_json
from .active_learning import ActiveLearning, LoopConfig, run_method_generation


def replicates(cfg: LoopConfig, seeds: list[int]) -> list[LoopConfig]:
    """One loop config per seed: ``OUT/seed{s}``, all with one label store (``OUT/labels.db``)."""
    out = Path(cfg.out)
    store = cfg.store or out / "labels.db"
    return [cfg.model_copy(update={"seed": int(s), "out": out / f"seed{s}", "store": store}) for s in seeds]


def run_replicates(cfgs: list[LoopConfig], out: Path, executor=None, console=None, log=None,
                   extra: dict | None = None) -> dict:
    """Runs one loop per config (the replicates of a study, one per seed) and writes ``OUT/summary.json``
    with every seed's summary (what the report reads)."""
    loops = [ActiveLearning(c, console=console, executor=executor) for c in cfgs]
    summaries = run_loops(loops, executor, log)
    summary = {**(extra or {}), "seeds": [c.seed for c in cfgs],
               "per_seed": {str(c.seed): s for c, s in zip(cfgs, summaries)}}
    write_json(Path(out) / "summary.json", summary)
    return summary


def run_loops(loops: list["ActiveLearning"], executor=None, log=None) -> list[dict]:
    """Runs several loops (replicates of one study: one per seed) generation by generation; within a
    generation every (loop, method) pair is independent and runs on the executor when one is given.
    Results are collected by (loop, method), never in the order workers finish; returns each loop's
    summary (also written to its ``summary.json`` after every generation)."""
    aligns = [al.prepare() for al in loops]
    summaries = [{"alignment": a, "generations": {}} for a in aligns]
    generations = max(al.cfg.generations for al in loops)
    parallel = executor is not None and not getattr(executor, "in_process", True)
    pairs = [(k, m) for k, al in enumerate(loops) for m in al.cfg.methods]
    # the longest steps first (an ensemble's MD costs M model calls), so that workers finish together
    pairs.sort(key=lambda p: (p[1] != "ensemble", p[0]))
    eta = _ETA(sum(al.cfg.generations * len(al.cfg.methods) for al in loops), log or loops[0].log)
    seeds = len(loops) > 1
    for g in range(1, generations + 1):
        todo = [(k, m) for k, m in pairs if g <= loops[k].cfg.generations]
        results: dict = {}
        if parallel:
            futures = {(k, m): executor.submit(run_method_generation, loops[k].cfg.model_dump(mode="json"), g, m)
                       for k, m in todo}
            for (k, m), f in futures.items():
                results[k, m] = f.result()
                eta.step(f"generation {g}, {m}" + (f", seed {loops[k].cfg.seed}" if seeds else ""))
        else:
            for k, m in todo:
                results[k, m] = loops[k].method_generation(g, m)
                eta.step(f"generation {g}, {m}" + (f", seed {loops[k].cfg.seed}" if seeds else ""))
        for k, al in enumerate(loops):
            if g <= al.cfg.generations:
                summaries[k]["generations"][g] = {m: results[k, m] for m in al.cfg.methods}
                write_json(al.out / "summary.json", summaries[k])
    return summaries


class _ETA:
    """Overall progress of a loop: steps done, elapsed time and the estimated time left."""

    def __init__(self, total: int, log):
        self.total, self.done, self.log, self.t0 = total, 0, log, time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        left = elapsed / self.done * (self.total - self.done)
        self.log(f"[{self.done}/{self.total}] {what} done; elapsed {elapsed / 60:.1f} min, "
                 f"about {left / 60:.1f} min left")


