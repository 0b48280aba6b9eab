"""The loop's sampling and labelling steps, for any registered sampler (:mod:`uqpot.sample.base`): the
context a sampler gets (:func:`sampling_context`), its candidates written where every sampler's go
(``GEN/METHOD/attack/candidates.extxyz``, ``history.npz``, the record ``attack.json``; :func:`sample_step`),
and their labels from the oracle through the store (``labelled.extxyz``, ``label.json``; :func:`label_step`),
so that labelling, the store and resuming do not depend on the sampler.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..data.io import ReadOptions, read_structures, write_extxyz
from ..data.structures import StructureDataset
from ..md.stability import StabilityCriteria
from ..systems import find_system
from ..core.provenance import write_json
from ..sample import SAMPLERS, SamplingContext, get_sampler
from .config import LoopConfig


def system_md_values(system: str) -> tuple[dict, StabilityCriteria | None]:
    """The system's MD presets (temperatures, time step, skin) and stability criteria, for the MD samplers."""
    found = find_system(system)
    if found is None:
        return {}, None
    return dict(found.md_preset or {}), found.stability_criteria(ground_state_energy=None)


def sampling_context(cfg: LoopConfig, g: int, method: str, pool: StructureDataset, model,
                     model_file: Path) -> SamplingContext:
    """What the sampler of ``method`` gets in generation ``g``: its settings (the loop config's section it
    names, else its defaults), the generation's seed and cut-off, the oracle budget and the system's values."""
    sampler = SAMPLERS[cfg.sampler_for(method)]
    settings = getattr(cfg, sampler.section) if sampler.section else sampler.settings()
    preset, criteria = system_md_values(cfg.system)
    return SamplingContext(model=model, model_file=model_file, method=method, pool=pool, settings=settings,
                           seed=cfg.seed + g, energy_cutoff=cfg.cutoff_for(g), budget=cfg.attack.n_seeds,
                           kT=cfg.attack.kT, batch_size=cfg.batch_size, md_preset=preset, criteria=criteria)


def sample_step(d: Path, sampler: str, ctx: SamplingContext, log) -> dict:
    """Runs ``sampler`` on ``ctx``; writes its candidates, history and record (``attack.json``, last) into
    ``d`` and returns the record."""
    prop = get_sampler(sampler).propose(ctx)
    d.mkdir(parents=True, exist_ok=True)
    write_extxyz(StructureDataset(prop.candidates), d / "candidates.extxyz")
    np.savez(d / "history.npz", **prop.history)
    write_json(d / "attack.json", prop.record)
    log(prop.message)
    return prop.record


def label_step(d: Path, oracle, store, executor, *, generation: int, method: str, source: str,
               train: StructureDataset, cutoff: float | None, log) -> dict:
    """Labels the candidates in ``d`` with ``oracle`` (through ``store``); keeps those within ``cutoff``
    kcal/mol of ``train``'s minimum (``labelled.extxyz``) and writes the record (``label.json``, last)."""
    g, marker = generation, d / "label.json"
    cand = read_structures(d / "candidates.extxyz", ReadOptions(require_energy=False, require_forces=False,
                                                                min_distance=0.0)) \
        if (d / "candidates.extxyz").stat().st_size else StructureDataset([])
    calls0, t0 = oracle.calls, time.perf_counter()
    res = oracle.label(list(cand), store=store, provenance={"generation": g, "uq_method": method, "source": source},
                       executor=executor)
    e_min = min(s.energy for s in train)  # kcal/mol (oracle scale), the training minimum
    accepted, dropped = [], []
    for k, s in enumerate(res.structures):
        if s is None:
            dropped.append({"candidate": k, "reason": "oracle failure: " + str(res.records[k].error)})
            continue
        e_rel = s.energy - e_min
        if cutoff is not None and e_rel > cutoff:
            dropped.append({"candidate": k, "reason": f"reference energy {e_rel:.1f} kcal/mol above cut-off"})
            continue
        s.info = {**cand[k].info, "generation": g, "uq_method": method, "energy_rel": e_rel}
        accepted.append(s)
    write_extxyz(StructureDataset(accepted), d / "labelled.extxyz")
    energies = [s.info["energy_rel"] for s in accepted]
    failed = sum(s is None for s in res.structures)
    rec = {"n_candidates": len(cand), "n_added": len(accepted), "n_failed": failed, "dropped": dropped,
           "oracle_calls": oracle.calls - calls0, "from_store": res.n_from_store,
           "energy_rel_min": min(energies) if energies else None,
           "energy_rel_max": max(energies) if energies else None,
           "seconds": round(time.perf_counter() - t0, 2)}
    write_json(marker, rec)
    log(f"labelled {len(cand)} candidates ({rec['oracle_calls']} oracle calls), "
        f"added {len(accepted)}" + (f", {failed} failed (see {marker})" if failed else ""))
    return rec
