"""The final model of each method of a loop with a stopping rule (``loop: {until: {final: true, ...}}``).

When a loop has ``until`` and a method has stopped, for whatever reason (converged, label budget spent,
generations exhausted), its last generation's model was trained on every label the method gathered but
held 20% of them out (``data.val_fraction``) for the best-epoch choice and the calibration.  The final
model uses more of them:

* **Data.** Every label of the method: its last generation's training and validation structures
  (:meth:`ActiveLearning.data_for`: the initial data, on the oracle's energy scale, and every structure the
  loop labelled for this method), pooled in that order and split again at random (seed: the loop's seed)
  with a smaller hold-out, ``until.final_val_fraction`` (default 0.1, in (0, 0.5]; at least one
  structure).  The hold-out chooses the best epoch and fits the calibration σ² = a·U + b (Eq. 13), and is
  used for nothing else.
* **Training.** A fresh training, as generation 1 trains: the same method, model section, training
  settings (one stress weight for every method) and seed as the loop's generations, through
  :func:`uqpot.fit.run.fit_model` (which trains, wraps a post-hoc method, fits the calibration and scores
  the test set); a loop that fine-tunes (``init_model``) fine-tunes from ``init_model`` again.  A post-hoc
  method trains its own network (no shared backbone: the methods' data differ after generation 1).
* **Test.** The loop's test set, with the metrics every generation is scored with (the test record that
  ``fit_model`` writes).
* **What it is good for.** The method's last stopping record (``GEN/METHOD/stopping.json``): the conditions
  its exploration ran (temperatures, steps, time step, trajectories), the estimated fraction of visited
  frames whose calibrated force error exceeds the tolerance with its interval, the decision and its reason,
  the labels the loop added and the generation.  That estimate is of the last generation's model, trained
  on the same labels as the final model; it says nothing outside those conditions.

Files: ``OUT/final/{method}/`` holds the run's files (``model.pt``, ``summary.json``, ``train.extxyz``,
``val.extxyz``, the test predictions), ``split.json`` (written first: which generation and split the
folder is for) and ``final.json`` (written last: the step's marker).  Rerunning the loop does not train
again; a loop continued to more generations (a method then stops later) or given another
``final_val_fraction`` trains the final model afresh.  ``OUT/final.json`` gathers every method's record.
``until.final: false`` skips the step (nothing is written under ``OUT/final``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..core.determinism import fixed_threads
from ..core.provenance import write_json
from ..data.io import write_extxyz
from ..fit.run import fit_model
from ..nn import modelfile
from .active_learning import ActiveLearning
from .config import LoopConfig

#: the good-for record's keys copied from the method's last stopping record
GOOD_FOR_KEYS = ("generation", "temperatures_K", "steps", "timestep_fs", "frame_every", "replicas", "n_trajectories",
                 "n_frames", "unstable_trajectories", "tolerance", "target", "confidence", "fraction", "low", "high",
                 "decision", "reason", "labels_added", "max_labels")


def final_dir(out, method: str) -> Path:
    return Path(out) / "final" / method


def wants_final(cfg: LoopConfig) -> bool:
    """Whether the loop trains final models (``until`` set and ``until.final`` on)."""
    return cfg.until is not None and cfg.until.final


def final_split(train, val, fraction: float, seed: int):
    """(train, val, indices of the hold-out in the pool ``train + val``): the pool split at random (seeded),
    ``round(fraction · n)`` structures held out (at least one)."""
    pool = train + val
    perm = np.random.default_rng(seed).permutation(len(pool))
    n_val = max(1, int(round(fraction * len(pool))))
    held = np.sort(perm[:n_val])
    return pool.subset(np.sort(perm[n_val:])), pool.subset(held), held


def good_for(stop: dict, cfg: LoopConfig) -> dict:
    """The conditions and estimate a final model is good for, from the method's last stopping record (older
    records without ``replicas`` take the loop's setting); ``stopped_because``: the reason's first words."""
    rec = {k: stop.get(k) for k in GOOD_FOR_KEYS}
    if rec["replicas"] is None:
        rec["replicas"] = cfg.until.replicas
    rec["stopped_because"] = str(stop.get("reason", "")).split(":")[0].split(" (")[0]
    rec["model_explored"] = f"gen{stop['generation']}/{stop['method']}/train/model.pt"
    return rec


def _pct(x) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    v = 100.0 * float(x)
    return "0" if v == 0 else (f"{v:.2g}" if v < 0.1 else f"{v:.1f}")


def good_for_text(rec: dict) -> str:
    """The report's "What this potential is good for" paragraph of one final record (``final.json``), in
    words from its numbers alone."""
    gf, split = rec["good_for"], rec["split"]
    temps = ", ".join(f"{t:g}" for t in gf["temperatures_K"])
    met = gf["high"] is not None and gf["target"] is not None and gf["high"] < gf["target"]
    return (f"Explored at {temps} K for {gf['steps']} steps of {gf['timestep_fs']:g} fs from {gf['replicas']} starts "
            f"({gf['n_trajectories']} trajectories, {gf['n_frames']} frames); an estimated {_pct(gf['fraction'])}% "
            f"[{_pct(gf['low'])}, {_pct(gf['high'])}] ({gf['confidence']:.0%} interval over trajectories) of visited "
            f"frames have a calibrated RMS force error above {gf['tolerance']:g} kcal/mol/Å; the target (upper end "
            f"below {_pct(gf['target'])}%) was {'met' if met else 'not met'} ({gf['stopped_because']} at generation "
            f"{gf['generation']}, {gf['labels_added']} labels added by the loop). The estimate is of generation "
            f"{gf['generation']}'s model; the final model is trained on the same {split['n_labels']} labels "
            f"({split['n_train']} train, {split['n_val']} held out). Outside these conditions this estimate says "
            "nothing.")


def final_model(al: ActiveLearning, method: str, generation: int) -> dict:
    """The final model of ``method``, which stopped after ``generation`` (module docstring): trained in
    ``OUT/final/{method}/`` unless that folder's ``final.json`` is already for this generation and hold-out;
    returns the record (also ``final.json``)."""
    cfg, d = al.cfg, final_dir(al.out, method)
    fraction = cfg.until.final_val_fraction
    marker = d / "final.json"
    if marker.is_file():
        rec = json.loads(marker.read_text())
        if rec.get("generation") == generation and rec.get("split", {}).get("fraction") == fraction:
            return rec
    with fixed_threads(cfg.threads):
        train0, val0, test, _ = al.initial_data()
        train_g, val_g = al.data_for(generation, method, (train0, val0))
        train, val, held = final_split(train_g, val_g, fraction, cfg.seed)
        n_initial = len(train0) + len(val0)
        split = {"n_train": len(train), "n_val": len(val), "fraction": fraction, "seed": cfg.seed,
                 "n_labels": len(train) + len(val), "n_initial": n_initial,
                 "n_added": len(train) + len(val) - n_initial,
                 "drawn_from": (f"generation {generation}'s training ({len(train_g)}) and validation ({len(val_g)}) "
                                "structures of the method, pooled in that order: the initial data and every label "
                                "the loop added"),
                 "val_indices": held.tolist()}
        ident = {"generation": generation, "method": method, "split": split}
        if (d / "split.json").is_file() and json.loads((d / "split.json").read_text()) != ident:
            shutil.rmtree(d)  # another generation or hold-out: train afresh
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "split.json", ident)
        if (d / "summary.json").is_file():  # trained and scored by an earlier run that stopped before final.json
            summary = json.loads((d / "summary.json").read_text())
        else:
            write_extxyz(train, d / "train.extxyz")
            write_extxyz(val, d / "val.extxyz")
            al.log(f"final model of {method} (stopped after generation {generation}): training on {len(train)} "
                   f"structures ({len(val)} held out)")
            summary = fit_model(cfg.model, cfg.uq_config(method), al.train_settings(), cfg.seed, train, val, test,
                                d, console=al.console, init=al.init_for(1, method), finetune=cfg.finetune,
                                extra={"generation": generation, "method": method, "final": True})
    stop = json.loads((al.gen_dir(generation, method) / "stopping.json").read_text())
    extra = modelfile.read(d / "model.pt").get("extra", {})
    tr = summary["training"]
    rec = {"method": method, "generation": generation, "model": f"final/{method}/model.pt",
           "split": {k: v for k, v in split.items() if k != "val_indices"},
           "training": {k: tr.get(k) for k in ("epochs_run", "best_epoch", "wall_seconds") if k in tr},
           "test": summary.get("test"), "calibration": extra.get("calibration"), "good_for": good_for(stop, cfg)}
    rec["good_for"]["text"] = good_for_text(rec)
    write_json(marker, rec)
    mae = (summary.get("test") or {}).get("forces_mae")
    al.log(f"final model of {method}: test force MAE {mae if mae is None else f'{mae:.4g}'} kcal/mol/Å; "
           f"{d / 'final.json'}")
    return rec


def run_final_model(cfg: dict, method: str, generation: int) -> dict:
    """:func:`final_model` on a worker process (picklable entry point for Dask)."""
    return final_model(ActiveLearning(LoopConfig.model_validate(cfg)), method, generation)


def final_models(loops: list[ActiveLearning], stopped: dict, executor=None, parallel: bool = False) -> list[dict]:
    """The final models of every loop that wants them (:func:`wants_final`) and every method that stopped
    (``stopped``: {(loop index, method): generation}), as jobs on ``executor`` when ``parallel`` (collected by
    (loop, method), never in finishing order), else in-process; writes each loop's ``OUT/final.json`` and
    returns {method: record} per loop."""
    todo = [(k, m) for k, al in enumerate(loops) if wants_final(al.cfg) for m in al.cfg.methods if (k, m) in stopped]
    results: dict = {}
    if parallel:
        futures = {(k, m): executor.submit(run_final_model, loops[k].cfg.model_dump(mode="json"), m, stopped[k, m])
                   for k, m in todo}
        results = {p: futures[p].result() for p in todo}
    else:
        results = {(k, m): final_model(loops[k], m, stopped[k, m]) for k, m in todo}
    out = []
    for k, al in enumerate(loops):
        recs = {m: results[k, m] for m in al.cfg.methods if (k, m) in results}
        if recs:
            write_json(al.out / "final.json", {"methods": recs})
        out.append(recs)
    return out
