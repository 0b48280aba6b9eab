"""A stopping rule for active learning (``loop: {until: {...}}``): the loop stops when, at the user's target
conditions, the fraction of visited frames whose calibrated force error exceeds a tolerance is below a
target with 95% confidence, or when a label budget is spent.

**Exploration.** After a method's generation g has trained, ``replicas`` MD trajectories run with that model
at the target temperatures (cycled over the replicas) from training structures, with the batched MD engine
(:mod:`uqpot.md.batched`) and the system's stability criteria, as the ``md`` sampler runs them
(:func:`uqpot.sample.md.start_structures`, one seed per replica).  Every ``frame_every`` steps the frame
and its U are kept (the start, a training structure, is not counted; a trajectory that fails its stability
criteria contributes the frames up to the failure).

**Each frame's probability of exceeding the tolerance.** uqpot's calibration (paper Eq. 13,
:func:`uqpot.metrics.calibration.fit_calibration`) is a Gaussian model fitted by NLL: every force component of
a structure x is one residual r ~ N(0, σ²(U(x))) with σ² = a·U + b (:class:`~uqpot.sample.trust.Calibration`).
A frame's force error is the RMS over its n = 3·N components, RMS = sqrt(Σ r²/n), and under the model
n·RMS²/σ² ~ χ²_n, so

    P(RMS > τ) = χ²_n.sf(n·τ²/σ²)

(:func:`exceed_probability`; scipy's χ² survival function).  This uses the calibration as it was fitted
(per component, independent components) rather than a hard threshold σ_F > τ: for a large molecule or cell
the χ² concentrates and P tends to the step 1[σ_F > τ]; for a small molecule it keeps the spread of a
12-component RMS.

**The fraction and its interval: the trajectory is the unit.**  Frames of one trajectory are correlated (and
share its start and temperature), so they are not independent draws.  Each trajectory k gives its fraction
f_k = mean of its frames' P; the estimate is the mean of the f_k over the R trajectories (each trajectory
weighted equally: one that failed early, with few and likely uncertain frames, counts fully), with Student's
t-interval over the R values (:func:`uqpot.metrics.intervals.mean_interval`, cut at [0, 1]): the interval
of a cluster-sampled mean with clusters as the unit, and the one uqpot's tables use for seeds.  With one
trajectory there is no interval: the upper end is taken as 1 (never stop on it).  With trajectories whose
fractions agree exactly (all 0: every P underflows) the interval has zero width: the model then predicts no
frame near the tolerance anywhere it went.

**The check before a stop** (``check``, :func:`check_stop`): the fraction above is a prediction of the
calibration, fitted on the validation split, i.e. near the training data; the exploration goes where the
model has not been, and a method whose σ is too small there predicts a fraction near 0 however large its
errors are.  Measured on ammonia (PySCF, generation 1 of a 2-generation loop, 16 trajectories, 40 frames
labelled at random, ``benchmarks/stopping_validation.py``): MVE predicted 0.000 [0.000, 0.001] above
2 kcal/mol/Å, the oracle found 0.267 [0.013, 0.520]; evidential 0.000 [0.000, 0.000] against 0.111
[0.000, 0.291]; both stopped "converged".  So before a stop is taken on the prediction, ``check`` frames
drawn at random (seeded) from the exploration are labelled by the oracle (through the store) and the count
x of those whose RMS force error exceeds τ is tested against the predicted upper end p̂ with a one-sided
exact binomial test (scipy.stats.binomtest, alternative "greater"): if P(X ≥ x | n, p̂) < 1 − confidence,
the labels contradict the calibration and the stop is refused (the record says so, with x, n and the
p-value).  The test is at the frame level (frames of one trajectory are correlated, so it refuses a stop
more readily than a trajectory-level test would: the safe side for a stop).  It checks the calibration's
consistency, not the target itself: to show the true fraction below a target t from labels alone with no
frame above τ takes n ≥ ln(1 − confidence)/ln(1 − t) labels (59 for 5%, 299 for 1% at 95%), recorded as
``labels_to_show_target``.  The check's labels stay in the label store and its record; they are not added
to the training data (the sampler's candidates are) and do not count towards ``max_labels``.
``check: 0`` turns it off.

**The decision** (:func:`decide`), in this order: stop when the interval's upper end is below ``target``
and the check (if any) does not contradict it ("converged"), or when the labels the method has added reach
``max_labels`` ("label budget"); otherwise the last generation stops ("generations exhausted") and every
other one continues.

**Validation** (:func:`validate_fraction`): a random subsample of a generation's exploration frames is
labelled by the loop's oracle (through the label store: nothing is computed twice) and the true fraction of
frames whose RMS force error exceeds τ (the model's forces against the oracle's) is compared with the
predicted one on the same frames, each with its trajectory-level interval (true: :func:`seed_proportion`
over the trajectories' counts, i.e. the t-interval widened to the pooled Wilson).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from pydantic import Field
from scipy import stats

from ..core import fields as F
from ..core.schema import Strict
from ..data.structures import Structure, StructureDataset
from ..evaluation.predict import predict
from ..md.batched import BatchedMD
from ..metrics.intervals import mean_interval, seed_proportion
from .md import start_structures
from .trust import Calibration


class StoppingSettings(Strict):
    """``until``: when the loop stops (see the module docstring).  ``tolerance``: a calibrated RMS force error
    (kcal/mol/Å); ``target``: the fraction of frames above it that is acceptable; ``max_labels``: a label
    budget per method (labels the loop added, not the initial data).  Exploration: ``replicas`` trajectories
    of ``steps`` steps at ``temperatures_K`` (unset: the loop's ``md`` temperatures, else the system's MD
    preset), a frame every ``frame_every`` steps.  With ``until`` set, ``generations`` is the maximum number.
    ``final``: once a method has stopped (converged, label budget or generations exhausted), the loop trains its
    final model on every label it gathered (:mod:`uqpot.loop.final`), holding out ``final_val_fraction`` of
    them (seeded from the loop's seed) for the best-epoch choice and the calibration only.  ``check``: frames
    labelled by the oracle to test a "converged" decision before it is taken (module docstring; 0: none)."""

    tolerance: float = Field(gt=0.0)
    target: float = Field(0.01, gt=0.0, le=1.0)
    max_labels: Optional[int] = Field(None, ge=1)
    temperatures_K: Optional[list[float]] = None
    replicas: int = Field(8, ge=2)
    steps: int = Field(200, ge=1)
    frame_every: int = Field(10, ge=1)
    timestep_fs: Optional[float] = Field(None, gt=0.0)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    final: bool = True
    final_val_fraction: float = Field(0.1, gt=0.0, le=0.5)
    check: int = Field(20, ge=0)


def exceed_probability(sigma, n_components, tolerance: float) -> np.ndarray:
    """P(RMS force error > ``tolerance``) of frames with calibrated per-component σ_F ``sigma`` and
    ``n_components`` = 3·atoms force components: χ²_n.sf(n·τ²/σ²) (module docstring); σ = 0 gives 0."""
    s = np.asarray(sigma, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n_components, dtype=np.float64), s.shape)
    with np.errstate(divide="ignore"):
        x = np.where(s > 0, n * tolerance ** 2 / np.where(s > 0, s, 1.0) ** 2, np.inf)
    return stats.chi2.sf(x, n)


@dataclass
class FractionEstimate:
    """The fraction of frames above tolerance with its interval over trajectories."""

    fraction: float
    low: float
    high: float
    n_frames: int
    n_trajectories: int
    confidence: float = 0.95

    def record(self) -> dict:
        return {"fraction": self.fraction, "low": self.low, "high": self.high, "n_frames": self.n_frames,
                "n_trajectories": self.n_trajectories, "confidence": self.confidence}


def fraction_above(per_trajectory: list, confidence: float = 0.95) -> FractionEstimate:
    """The mean over trajectories of their frames' mean exceedance probability, with the t-interval over
    trajectories cut at [0, 1] (``per_trajectory``: one array of per-frame P, or of 0/1, per trajectory; empty
    ones are left out).  Fewer than two trajectories: the bounds are (0, 1)."""
    fr = [float(np.mean(p)) for p in per_trajectory if len(p)]
    n = sum(len(p) for p in per_trajectory)
    if not fr:
        return FractionEstimate(math.nan, 0.0, 1.0, 0, 0, confidence)
    m, lo, hi = mean_interval(fr, confidence, bounds=(0.0, 1.0))
    if not math.isfinite(hi):
        lo, hi = 0.0, 1.0
    return FractionEstimate(m, lo, hi, n, len(fr), confidence)


def predicted_converged(est: FractionEstimate, settings: StoppingSettings) -> bool:
    """Whether the calibrated prediction alone says "converged" (upper end below the target)."""
    return bool(est.n_trajectories) and est.high < settings.target


def labels_to_show(target: float, confidence: float = 0.95) -> int:
    """The labels with no frame above τ that bound the true fraction below ``target`` at ``confidence`` on
    their own (one-sided exact binomial: (1 − target)^n ≤ 1 − confidence)."""
    return int(math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target)))


def check_stop(est: FractionEstimate, validation: dict, settings: StoppingSettings) -> dict:
    """The check of a "converged" prediction (module docstring) from :func:`validate_fraction`'s record on the
    check's frames: x of n labelled frames above τ against the predicted upper end, one-sided exact binomial
    test; ``contradicts`` when its p-value is below 1 − confidence."""
    n = int(validation["n_labelled"])
    x = int(sum(r["above"] for r in validation["frames"]))
    p_hat = min(max(float(est.high), 0.0), 1.0)
    p_value = float(stats.binomtest(x, n, p_hat, alternative="greater").pvalue) if n else 1.0
    return {"labels": n, "above": x, "predicted_high": p_hat, "p_value": p_value,
            "contradicts": bool(n and p_value < 1.0 - settings.confidence),
            "true": validation["true"], "labels_to_show_target": labels_to_show(settings.target, settings.confidence)}


def decide(est: FractionEstimate, settings: StoppingSettings, *, labels_added: int, generation: int,
           generations: int, check: dict | None = None) -> tuple[str, str]:
    """("stop" | "continue", reason) after ``generation`` of ``generations`` (module docstring's order);
    ``check``: :func:`check_stop`'s record of a "converged" prediction, if one was made."""
    refused = ""
    if predicted_converged(est, settings):
        claim = (f"the fraction above {settings.tolerance:g} kcal/mol/Å is {est.fraction:.4g}, its "
                 f"{settings.confidence:.0%} upper end {est.high:.4g} < target {settings.target:g}")
        if check is None or not check["contradicts"]:
            seen = (f"; checked: {check['above']} of {check['labels']} labelled frames above (p = "
                    f"{check['p_value']:.3g})") if check else ""
            return "stop", f"converged: {claim}{seen}"
        refused = (f"; the calibration predicted an upper end {est.high:.4g} < target, but {check['above']} of "
                   f"{check['labels']} labelled frames exceed {settings.tolerance:g} kcal/mol/Å (binomial p = "
                   f"{check['p_value']:.3g}): stop refused")
    if settings.max_labels is not None and labels_added >= settings.max_labels:
        return "stop", f"label budget: {labels_added} labels added >= max_labels {settings.max_labels}{refused}"
    if generation >= generations:
        return "stop", (f"generations exhausted ({generations}); upper end {est.high:.4g} >= target "
                        f"{settings.target:g}" if not refused else f"generations exhausted ({generations}){refused}")
    if refused:
        return "continue", refused[2:]
    return "continue", f"upper end {est.high:.4g} >= target {settings.target:g}"


@dataclass
class Exploration:
    """The frames of an exploration campaign, per trajectory: positions, U, σ_F, P(error > τ), and the
    trajectory's start, temperature and whether it stayed stable."""

    trajectories: list = field(default_factory=list)  # dicts: positions, cells, steps, u, sigma, p, start, ...

    def probabilities(self) -> list:
        return [t["p"] for t in self.trajectories]

    def frames(self) -> list[tuple[int, int]]:
        """(trajectory, frame) of every frame."""
        return [(k, i) for k, t in enumerate(self.trajectories) for i in range(len(t["p"]))]

    def structure(self, k: int, i: int) -> Structure:
        t = self.trajectories[k]
        s0 = t["start"]
        cell = t["cells"][i] if t["cells"] else s0.cell
        s = Structure(s0.numbers.copy(), np.asarray(t["positions"][i], dtype=np.float64).copy(),
                      np.asarray(cell, dtype=np.float64).copy(), np.asarray(s0.pbc).copy())
        s.info = {"sampler": "until", "md_replica": k, "step": int(t["steps"][i]), "temperature_K": t["temperature"]}
        return s


def explore(model, pool, settings: StoppingSettings, calibration: Calibration, *, temperatures_K,
            timestep_fs: float, seed: int, skin: float = 1.0, criteria=None) -> Exploration:
    """Runs the exploration campaign (module docstring) and computes each frame's σ_F and P(error > τ)."""
    R = settings.replicas
    starts = start_structures(pool, R, seed)
    temps = [float(temperatures_K[k % len(temperatures_K)]) for k in range(R)]
    seeds = [int(np.random.default_rng([seed, k]).integers(2 ** 31 - 1)) for k in range(R)]
    fe = settings.frame_every
    md = BatchedMD(model, starts, timestep_fs=timestep_fs, temperatures_K=temps, seeds=seeds, skin=skin,
                   check_every=fe * max(1, 20 // fe), frame_every=fe, record_every=fe, criteria=criteria)
    res = md.run(settings.steps)
    out = Exploration()
    for k, rec in enumerate(res.replicas):
        keep = [t for t, (step, x) in enumerate(zip(rec.frame_steps, rec.frames))
                if step > 0 and np.isfinite(x).all() and np.isfinite(rec.frame_uncertainty[t])]
        u = np.array([float(rec.frame_uncertainty[t]) for t in keep])
        sigma = calibration.sigma(u) if len(u) else np.zeros(0)
        p = exceed_probability(sigma, 3 * starts[k].n_atoms, settings.tolerance) if len(u) else np.zeros(0)
        out.trajectories.append({
            "positions": [rec.frames[t] for t in keep], "steps": [int(rec.frame_steps[t]) for t in keep],
            "cells": [rec.frame_cells[t] for t in keep] if rec.frame_cells else [], "u": u, "sigma": sigma, "p": p,
            "start": starts[k], "temperature": temps[k], "stable": bool(rec.stable), "reason": rec.reason})
    return out


def sample_frames(exploration: Exploration, n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` (trajectory, frame) pairs drawn without replacement (seeded) from ``exploration``, in order."""
    every = exploration.frames()
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(every), size=min(n, len(every)), replace=False).tolist()) if every else []
    return [every[j] for j in pick]


def validate_fraction(model, exploration: Exploration, oracle, store, *, tolerance: float, n_labels: int,
                      seed: int = 0, confidence: float = 0.95, executor=None, provenance: dict | None = None) -> dict:
    """Predicted vs true fraction of frames above ``tolerance`` on ``n_labels`` frames drawn at random (seeded)
    from ``exploration``: the oracle labels them through ``store`` (a frame already in the store is not
    computed again), the model predicts their forces, and each frame's true error is its RMS force error.
    Both fractions with their trajectory-level intervals (module docstring); also the frame-level agreement."""
    chosen = sample_frames(exploration, n_labels, seed)
    structs = [exploration.structure(k, i) for k, i in chosen]
    res = oracle.label(structs, store=store, provenance={"source": "until_validation", **(provenance or {})},
                       executor=executor)
    ok = [(c, s) for c, s in zip(chosen, res.structures) if s is not None]
    f_pred = _model_forces(model, [s for _, s in ok])
    by_traj_true: dict = {}
    by_traj_pred: dict = {}
    rows = []
    for ((k, i), s), fp in zip(ok, f_pred):
        rms = float(np.sqrt(np.mean((np.asarray(fp) - s.forces) ** 2)))
        above = rms > tolerance
        p = float(exploration.trajectories[k]["p"][i])
        by_traj_true.setdefault(k, []).append(int(above))
        by_traj_pred.setdefault(k, []).append(p)
        rows.append({"trajectory": k, "frame": i, "sigma_F": float(exploration.trajectories[k]["sigma"][i]),
                     "p_above": p, "rms_error": rms, "above": bool(above)})
    # the seed_proportion of uqpot's tables with the trajectory as the unit (its label speaks of seeds)
    (t_m, t_lo, t_hi), label = seed_proportion([(sum(v), len(v)) for v in by_traj_true.values()], confidence)
    label = label.replace("within-seed", "within-trajectory").replace("one seed", "one trajectory").replace(
        "seeds", "trajectories")
    pred = fraction_above(list(by_traj_pred.values()), confidence)
    return {"tolerance": tolerance, "n_labelled": len(ok), "n_failed": len(chosen) - len(ok),
            "from_store": res.n_from_store,
            "n_trajectories": len(by_traj_true),
            "predicted": {"fraction": pred.fraction, "low": pred.low, "high": pred.high},
            "true": {"fraction": t_m, "low": t_lo, "high": t_hi, "interval": label},
            "all_frames_predicted": fraction_above(exploration.probabilities(), confidence).record(),
            "frames": rows}


def _model_forces(model, structures: list) -> list:
    """The model's forces (kcal/mol/Å) on ``structures``."""
    if not structures:
        return []
    return list(predict(model, StructureDataset(structures), keys=(F.FORCES,))[F.FORCES])
