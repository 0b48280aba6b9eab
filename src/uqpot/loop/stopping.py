"""The loop's stopping step (``until``; the rule and its statistics: :mod:`uqpot.sample.stopping`).

Per method: each method has its own model and data, so each decides for itself after each of its
generations.  A method that stops does no sampling or labelling in that generation and runs no further
generations; the loop ends when every method has stopped (or ``generations`` is reached).  The step writes
``GEN/METHOD/until/frames.extxyz`` (every exploration frame, with its trajectory, step, U, σ_F and P(error >
τ): what :func:`uqpot.sample.stopping.validate_fraction` labels) and its record ``GEN/METHOD/stopping.json``
(last: the step's marker); :func:`write_stopping` gathers every record into ``OUT/stopping.json`` and
``OUT/stopping.csv``.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from ..core.provenance import atomic_write, write_json
from ..data.io import ReadOptions, read_structures, write_extxyz
from ..data.structures import StructureDataset
from ..nn import modelfile
from ..sample.stopping import (Exploration, FractionEstimate, check_stop, decide, explore, fraction_above,
                               predicted_converged, validate_fraction)
from ..sample.trust import Calibration
from .config import LoopConfig
from .md import campaign_config
from .sampling import system_md_values

#: the columns of ``OUT/stopping.csv``
COLUMNS = ("generation", "method", "fraction", "low", "high", "n_frames", "n_trajectories", "labels_added",
           "check_above", "check_labels", "decision", "reason")


def target_conditions(cfg: LoopConfig) -> tuple[list[float], float, float, object]:
    """(temperatures K, time step fs, skin Å, stability criteria) of the exploration: ``until``'s
    temperatures, else the loop's ``md`` campaign's, else the system's MD preset (300 K without one)."""
    preset, criteria = system_md_values(cfg.system)
    temps = cfg.until.temperatures_K
    if not temps and cfg.md:
        temps = list(campaign_config(cfg.md, cfg.system, cfg.seed).temperatures_K)
    temps = temps or preset.get("temperatures_K", [300.0])
    return ([float(t) for t in temps], cfg.until.timestep_fs or preset.get("timestep_fs", 0.5),
            preset.get("skin", 1.0), criteria)


def until_step(d: Path, cfg: LoopConfig, g: int, method: str, model, model_file: Path, pool: StructureDataset,
               labels_added: int, log, *, oracle=None, store=None, executor=None) -> dict:
    """Explores with generation ``g``'s model of ``method``, estimates the fraction of frames above the
    tolerance and decides; a "converged" prediction is first checked on ``until.check`` frames labelled by
    ``oracle`` through ``store`` (:func:`uqpot.sample.stopping.check_stop`).  Writes the frames and the
    record (``d/stopping.json``, last) and returns it."""
    st = cfg.until
    cal = Calibration.from_extra(modelfile.read(model_file).get("extra", {}), where=str(model_file))
    temps, dt, skin, criteria = target_conditions(cfg)
    t0 = time.perf_counter()
    ex = explore(model, pool, st, cal, temperatures_K=temps, timestep_fs=dt, seed=cfg.seed + g, skin=skin,
                 criteria=criteria)
    est = fraction_above(ex.probabilities(), st.confidence)
    check = None
    if predicted_converged(est, st) and st.check and oracle is not None:
        v = validate_fraction(model, ex, oracle, store, tolerance=st.tolerance, n_labels=st.check,
                              seed=cfg.seed * 1000 + g, confidence=st.confidence, executor=executor,
                              provenance={"source": "until_check", "generation": g, "uq_method": method})
        check = check_stop(est, v, st)
        log(f"stopping rule: check of the prediction, {check['above']} of {check['labels']} labelled frames above "
            f"{st.tolerance:g} kcal/mol/Å (true fraction {v['true']['fraction']:.3g} [{v['true']['low']:.3g}, "
            f"{v['true']['high']:.3g}]; binomial p = {check['p_value']:.3g} against the predicted upper end)")
    decision, reason = decide(est, st, labels_added=labels_added, generation=g, generations=cfg.generations,
                              check=check)
    (d / "until").mkdir(parents=True, exist_ok=True)
    write_extxyz(StructureDataset(_frames(ex)), d / "until" / "frames.extxyz")
    rec = {"generation": g, "method": method, **est.record(), "tolerance": st.tolerance, "target": st.target,
           "labels_added": labels_added, "max_labels": st.max_labels, "decision": decision, "reason": reason,
           "temperatures_K": temps, "timestep_fs": dt, "steps": st.steps, "replicas": st.replicas,
           "frame_every": st.frame_every,
           "trajectory_fractions": [float(np.mean(p)) if len(p) else None for p in ex.probabilities()],
           "unstable_trajectories": sum(not t["stable"] for t in ex.trajectories),
           "calibration": {"a": cal.a, "b": cal.b, "floor": cal.floor}, "check": check,
           "seconds": round(time.perf_counter() - t0, 2)}
    write_json(d / "stopping.json", rec)
    log(f"stopping rule: fraction above {st.tolerance:g} kcal/mol/Å {est.fraction:.4g} "
        f"[{est.low:.4g}, {est.high:.4g}] over {est.n_trajectories} trajectories ({est.n_frames} frames): "
        f"{decision} ({reason})")
    return rec


def redecide(path: Path, cfg: LoopConfig) -> dict:
    """A finished step's record, its decision taken again when it stopped only because the generations ran out
    and the loop now has more (``--generations``: a longer loop continues a shorter one; the record is
    rewritten).  Any other record is returned as it is."""
    rec = json.loads(Path(path).read_text())
    if not (rec["decision"] == "stop" and rec["reason"].startswith("generations exhausted")
            and rec["generation"] < cfg.generations):
        return rec
    est = FractionEstimate(rec["fraction"], rec["low"], rec["high"], rec["n_frames"], rec["n_trajectories"],
                           rec["confidence"])
    rec["decision"], rec["reason"] = decide(est, cfg.until, labels_added=rec["labels_added"],
                                            generation=rec["generation"], generations=cfg.generations,
                                            check=rec.get("check"))
    write_json(path, rec)
    return rec


def _frames(ex: Exploration) -> list:
    out = []
    for k, i in ex.frames():
        s = ex.structure(k, i)
        t = ex.trajectories[k]
        s.info.update({"uncertainty": float(t["u"][i]), "sigma_F": float(t["sigma"][i]), "p_above": float(t["p"][i])})
        out.append(s)
    return out


def read_exploration(d: Path, tolerance: float | None = None) -> Exploration:
    """The exploration frames a stopping step wrote in ``d`` (``GEN/METHOD``), grouped by trajectory again."""
    frames = read_structures(d / "until" / "frames.extxyz", ReadOptions(require_energy=False, require_forces=False,
                                                                        min_distance=0.0))
    trajs: dict = {}
    for s in frames:
        k = int(s.info["md_replica"])
        t = trajs.setdefault(k, {"positions": [], "steps": [], "cells": [], "u": [], "sigma": [], "p": [],
                                 "start": s, "temperature": float(s.info["temperature_K"]), "stable": True,
                                 "reason": ""})
        t["positions"].append(s.positions)
        t["cells"].append(s.cell)
        t["steps"].append(int(s.info["step"]))
        for key, src in (("u", "uncertainty"), ("sigma", "sigma_F"), ("p", "p_above")):
            t[key].append(float(s.info[src]))
    ex = Exploration()
    for k in sorted(trajs):
        t = trajs[k]
        for key in ("u", "sigma", "p"):
            t[key] = np.asarray(t[key])
        ex.trajectories.append(t)
    return ex


def labels_added(out: Path, g: int, method: str) -> int:
    """The labels the loop added to ``method``'s data before generation ``g`` (its ``label.json`` records)."""
    n = 0
    for h in range(1, g):
        p = Path(out) / f"gen{h}" / method / "attack" / "label.json"
        if p.is_file():
            n += int(json.loads(p.read_text()).get("n_added", 0))
    return n


def write_stopping(out: Path, methods) -> list[dict]:
    """Every stopping record of the loop in ``out`` (generation, then method order) into ``OUT/stopping.json``
    and ``OUT/stopping.csv``; returns the records."""
    out = Path(out)
    rows = []
    gens = sorted(int(p.name[3:]) for p in out.glob("gen*") if p.name[3:].isdigit())
    for g in gens:
        for m in methods:
            p = out / f"gen{g}" / m / "stopping.json"
            if p.is_file():
                rows.append(json.loads(p.read_text()))
    write_json(out / "stopping.json", {"records": rows})
    with atomic_write(out / "stopping.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            for r in rows:
                w.writerow([record_column(r, c) for c in COLUMNS])
    return rows


def record_column(rec: dict, column: str):
    """A stopping record's value for ``column`` of ``stopping.csv`` (the check's, from its sub-record)."""
    if column.startswith("check_"):
        return (rec.get("check") or {}).get(column[len("check_"):])
    return rec.get(column)
