"""The ``md`` sampler: candidates for the oracle from uncertainty-selected MD frames (DP-GEN's and FLARE's
exploration, made method-agnostic through the calibration; see :mod:`uqpot.sample.trust`).

``replicas`` trajectories start from training structures (a seeded random draw of distinct ones) at the
study's temperatures (cycled over the replicas), with the batched MD engine (:mod:`uqpot.md.batched`) and
the system's stability criteria.  Every ``frame_every`` steps a frame is kept with its U; a replica whose
calibrated σ_F passes ``trust_hi`` stops there (frames beyond the upper trust level are likely unphysical:
DP-GEN discards them, and the trajectory has left the region where it means anything).  Candidates are the
frames with trust_lo ≤ σ_F < trust_hi and a predicted energy at most ``energy_cutoff`` above the training
minimum (the attack's rule); the highest-σ_F ones are taken greedily, each at least ``min_distance`` Å
(:func:`~uqpot.sample.trust.structural_distance`) from those already taken (``selection: features``: by
farthest-point sampling in the model's features instead, :mod:`uqpot.sample.select`), up to ``max_candidates`` (the
oracle budget of a generation: by default the attack's number of seeds, so that samplers are compared at
equal oracle cost).

Adaptive lower trust level (``adaptive_fraction`` f, DP-GEN's adaptive ``trust_lo``): instead of the fixed
``trust_lo``, the lower level of each run is chosen from its frames so that a fraction f of the eligible
frames (after the start, finite, below the upper level, within the energy cut-off) lie in the band: trust_lo =
the (1 − f) quantile of their calibrated σ_F (taken in U, on which σ_F is non-decreasing; the ``higher`` of
two neighbours, so at least f are in).  The upper level stays the calibrated ``trust_hi``.  A model that
has become good everywhere then still proposes its most uncertain frames, and one that is bad everywhere does
not flood the band; the level chosen is in the summary (``trust_lo``, with ``trust_lo_rule``).

The same routine runs uncertainty-biased MD (:mod:`uqpot.sample.biased_md`): the model is replaced by the
biased one, and the frames' energies are the unbiased ones (the bias is a closed-form function of U).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from ..data.structures import Structure
from ..md.batched import BatchedMD
from ..md.checks import UncertaintyStop
from ..core.schema import Strict
from .adversarial import BoltzmannReference
from .base import Proposal, Sampler, SamplingContext, register_sampler
from .select import pick_in_feature_space
from .trust import Calibration, TrustBand, pick_diverse


class SamplingSettings(Strict):
    """``sampling``: the MD samplers' settings in a loop config (``sampler: md | biased_md``).  Trust levels
    are calibrated force errors σ_F (kcal/mol/Å), turned into each method's U through its stored calibration.
    Unset: the system's campaign temperatures and time step (the context's ``md_preset``), and
    ``max_candidates`` = the oracle budget of a generation (the loop's ``attack.n_seeds``, so that samplers
    are compared at equal cost)."""

    trust_lo: float = Field(1.0, ge=0.0)
    trust_hi: float = Field(15.0, gt=0.0)
    replicas: int = Field(20, ge=1)
    temperatures_K: Optional[list[float]] = None
    steps: int = Field(1000, ge=1)
    timestep_fs: Optional[float] = Field(None, gt=0.0)
    frame_every: int = Field(10, ge=1)
    max_candidates: Optional[int] = Field(None, ge=1)
    min_distance: float = Field(0.05, ge=0.0)  # Å between picked frames
    stop_above_trust: bool = True
    # the UDD bias of biased_md: A (kcal/mol) and B (kcal/mol/Å); by default it reaches −A(1 − 1/e) = −12.6
    # kcal/mol (13 kT at 500 K) where σ_F = B, half the upper trust level, and fades beyond
    bias_strength: float = Field(20.0, ge=0.0)
    bias_width: float = Field(7.5, gt=0.0)
    # DP-GEN's adaptive lower trust level: trust_lo chosen each generation so that this fraction of the
    # eligible frames lies in the band (see the module docstring); unset: the fixed trust_lo
    adaptive_fraction: Optional[float] = Field(None, gt=0.0, le=1.0)
    # candidates among the in-band frames: most uncertain first, min_distance Å apart ("geometric"), or by
    # farthest-point sampling in the model's last-layer features, away from the training data ("features")
    selection: Literal["geometric", "features"] = "geometric"

    @model_validator(mode="after")
    def _band(self):
        if not self.trust_lo < self.trust_hi:
            raise ValueError(f"trust_lo ({self.trust_lo}) must be below trust_hi ({self.trust_hi}) kcal/mol/Å")
        return self


@dataclass
class MDSamplerConfig:
    """The resolved parameters of one :func:`md_sample` call (temperatures, time step and skin filled from
    the system's presets, the generation's cut-off and seed): built from :class:`SamplingSettings` by
    :meth:`MDSampler.run_config`."""

    trust_lo: float = 1.0  # kcal/mol/Å, calibrated σ_F
    trust_hi: float = 15.0
    replicas: int = 20
    temperatures_K: list = field(default_factory=lambda: [300.0, 500.0, 750.0, 1000.0])
    steps: int = 1000
    timestep_fs: float = 0.5
    frame_every: int = 10
    max_candidates: int = 20
    min_distance: float = 0.05  # Å
    energy_cutoff: float | None = 100.0  # kcal/mol above the training minimum (predicted)
    thermostat: str = "nose-hoover"
    stop_above_trust: bool = True
    skin: float = 1.0
    seed: int = 0
    #: DP-GEN's adaptive lower trust level: the fraction of eligible frames the band holds (None: fixed trust_lo)
    adaptive_fraction: float | None = None
    #: how candidates are chosen among the in-band frames: "geometric" (most uncertain first, min_distance Å
    #: apart) or "features" (farthest-point in the model's features, :mod:`uqpot.sample.select`)
    selection: str = "geometric"

    def __post_init__(self):
        if not 0 <= self.trust_lo < self.trust_hi:
            raise ValueError("need 0 <= trust_lo < trust_hi (kcal/mol/Å)")
        if self.adaptive_fraction is not None and not 0 < self.adaptive_fraction <= 1:
            raise ValueError("adaptive_fraction must lie in (0, 1]")
        if self.selection not in ("geometric", "features"):
            raise ValueError(f"selection must be 'geometric' or 'features', not {self.selection!r}")
        if min(self.replicas, self.steps, self.frame_every, self.max_candidates) < 1:
            raise ValueError("replicas, steps, frame_every and max_candidates must be >= 1")


@dataclass
class SampleResult:
    samples: list[Structure]  # accepted, unlabelled structures (info: sampler, replica, time, U, σ_F, ...)
    rejected: list[dict]  # why each in-band frame or replica was left out
    history: dict = field(default_factory=dict)  # per frame: replica, step, U, σ_F, predicted energy
    summary: dict = field(default_factory=dict)


def start_structures(train, n: int, seed: int) -> list[Structure]:
    """``n`` training structures for the replicas: the first n of a seeded random permutation of the set
    (distinct ones; the permutation cycled when n exceeds the set)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(train))
    return [train[int(idx[k % len(idx)])] for k in range(n)]


def md_sample(model, train, cfg: MDSamplerConfig, calibration: Calibration, reference, *, criteria=None,
              dynamics_model=None, unbias=None, sampler: str = "md") -> SampleResult:
    """Runs the replicas and picks the candidates (see the module docstring).  ``reference``: the
    :class:`~uqpot.sample.adversarial.BoltzmannReference` of the training set (its per-atom minimum is the
    zero of the energy cut-off).  ``dynamics_model``: the model that drives the MD (default ``model``; the
    biased one for ``biased_md``), ``unbias(energy, u)``: the model's own energy from the recorded one."""
    band = TrustBand.from_calibration(cfg.trust_lo, cfg.trust_hi, calibration)
    starts = start_structures(train, cfg.replicas, cfg.seed)
    temps = [float(cfg.temperatures_K[k % len(cfg.temperatures_K)]) for k in range(cfg.replicas)]
    seeds = [int(np.random.default_rng([cfg.seed, k]).integers(2 ** 31 - 1)) for k in range(cfg.replicas)]
    checks = [UncertaintyStop(band.u_hi)] if cfg.stop_above_trust and math.isfinite(band.u_hi) else []
    md = BatchedMD(dynamics_model if dynamics_model is not None else model, starts, timestep_fs=cfg.timestep_fs,
                   temperatures_K=temps, seeds=seeds, thermostat=cfg.thermostat, skin=cfg.skin,
                   check_every=cfg.frame_every * max(1, 20 // cfg.frame_every), frame_every=cfg.frame_every,
                   record_every=cfg.frame_every, criteria=criteria, checks=checks)
    res = md.run(cfg.steps)
    frames, hist = [], {"replica": [], "step": [], "uncertainty": [], "sigma_F": [], "energy_rel": [], "in_band": []}
    rejected = []
    seen = []  # every recorded frame: (replica, index, step, U, energy above the minimum, eligible)
    for k, rec in enumerate(res.replicas):
        s0 = starts[k]
        if not rec.stable:
            rejected.append({"replica": k, "reason": f"replica stopped at step {rec.failure_step}: {rec.reason}"})
        for t, (step, x) in enumerate(zip(rec.frame_steps, rec.frames)):
            u = rec.frame_uncertainty[t]
            e = rec.frame_energy[t] if unbias is None else unbias(rec.frame_energy[t], u)
            e_rel = float(e - reference.e_min * s0.n_atoms)
            # the start (step 0) is a training structure, never a candidate
            eligible = step > 0 and np.isfinite(x).all() and math.isfinite(e_rel) and float(u) < band.u_hi
            if eligible and cfg.energy_cutoff is not None and e_rel > cfg.energy_cutoff:
                eligible = False
                if bool(band.inside(u)):
                    rejected.append({"replica": k, "step": int(step), "reason": f"predicted energy {e_rel:.1f} "
                                     f"kcal/mol above the cut-off {cfg.energy_cutoff}"})
            seen.append((k, t, int(step), float(u), e_rel, eligible))
    rule = "fixed"
    if cfg.adaptive_fraction is not None:  # DP-GEN's adaptive lower level (module docstring)
        us = np.array([u for *_, u, _, ok in seen if ok])
        if len(us):  # the quantile in U (σ_F is non-decreasing in U), so the frame at the level is in the band
            u_lo = float(np.quantile(us, 1.0 - cfg.adaptive_fraction, method="higher"))
            band = TrustBand(float(calibration.sigma(u_lo)), band.sigma_hi, u_lo, band.u_hi)
            rule = f"adaptive: {cfg.adaptive_fraction:g} of {len(us)} eligible frames"
    for k, t, step, u, e_rel, eligible in seen:
        rec, s0 = res.replicas[k], starts[k]
        x = rec.frames[t]
        ok = eligible and bool(band.inside(u))
        for key, v in (("replica", k), ("step", step), ("uncertainty", u), ("sigma_F", float(calibration.sigma(u))),
                       ("energy_rel", e_rel), ("in_band", ok)):
            hist[key].append(v)
        if ok:
            cell = rec.frame_cells[t] if rec.frame_cells else s0.cell
            frames.append({"positions": x, "numbers": s0.numbers, "cell": cell, "pbc": s0.pbc, "replica": k,
                           "step": int(step), "u": float(u), "e_rel": e_rel, "start": s0,
                           "temperature": temps[k]})
    score = np.array([f["u"] for f in frames])
    if cfg.selection == "features":
        picked, left = pick_in_feature_space(model, frames, score, cfg.max_candidates, train)
    else:
        picked, left = pick_diverse(frames, score, cfg.max_candidates, cfg.min_distance)
    rejected += [{"replica": frames[d["frame"]]["replica"], "step": frames[d["frame"]]["step"], "reason": d["reason"]}
                 for d in left]
    samples = []
    for k in picked:
        f = frames[k]
        s = Structure(f["numbers"].copy(), np.asarray(f["positions"], dtype=np.float64).copy(),
                      np.asarray(f["cell"], dtype=np.float64).copy(), np.asarray(f["pbc"]).copy())
        s.info = {"sampler": sampler, "md_replica": f["replica"],
                  "source_frame": f["start"].frame if f["start"].frame is not None else -1,
                  "time_fs": f["step"] * cfg.timestep_fs, "temperature_K": f["temperature"],
                  "predicted_energy_rel": f["e_rel"], "uncertainty": f["u"],
                  "sigma_F": float(calibration.sigma(f["u"]))}
        samples.append(s)
    hist = {k: np.asarray(v) for k, v in hist.items()}
    summary = {"sampler": sampler, "replicas": cfg.replicas, "steps": cfg.steps, "frames": int(len(hist["step"])),
               "frames_in_band": int(hist["in_band"].sum()) if len(hist["in_band"]) else 0,
               "picked": len(samples), "stopped": int(sum(not r.stable for r in res.replicas)),
               "stop_reasons": sorted({r.reason for r in res.replicas if not r.stable}),
               "trust_lo": band.sigma_lo, "trust_hi": band.sigma_hi, "trust_lo_rule": rule,
               "selection": cfg.selection,
               "u_lo": band.u_lo if math.isfinite(band.u_lo) else None,
               "u_hi": band.u_hi if math.isfinite(band.u_hi) else None,
               "md_seconds": round(res.wall_time_s, 2), "model_calls": res.model_calls}
    return SampleResult(samples, rejected, hist, summary)


@register_sampler("md")
class MDSampler(Sampler):
    """Uncertainty-selected frames of plain MD from the pool's structures (see the module docstring)."""

    settings = SamplingSettings
    section = "sampling"

    @staticmethod
    def run_config(sm: SamplingSettings, ctx: SamplingContext) -> MDSamplerConfig:
        """One generation's :class:`MDSamplerConfig`: unset values from the system's presets and the budget."""
        preset = ctx.md_preset
        return MDSamplerConfig(
            trust_lo=sm.trust_lo, trust_hi=sm.trust_hi, replicas=sm.replicas,
            temperatures_K=sm.temperatures_K or preset.get("temperatures_K", [300.0]),
            steps=sm.steps, timestep_fs=sm.timestep_fs or preset.get("timestep_fs", 0.5),
            frame_every=sm.frame_every, max_candidates=sm.max_candidates or ctx.budget,
            min_distance=sm.min_distance, energy_cutoff=ctx.energy_cutoff, stop_above_trust=sm.stop_above_trust,
            skin=preset.get("skin", 1.0), seed=ctx.seed, adaptive_fraction=sm.adaptive_fraction,
            selection=sm.selection)

    def run(self, model, train, cfg: MDSamplerConfig, cal: Calibration, ref, ctx: SamplingContext) -> SampleResult:
        return md_sample(model, train, cfg, cal, ref, criteria=ctx.criteria)

    def propose(self, ctx: SamplingContext) -> Proposal:
        cfg = self.run_config(ctx.settings, ctx)
        cal = ctx.calibration()
        train = ctx.pool
        ref = BoltzmannReference.from_energies(train.energies(), [s.n_atoms for s in train], ctx.kT)
        t0 = time.perf_counter()
        res = self.run(ctx.model, train, cfg, cal, ref, ctx)
        rec = {**res.summary, "n_seeds": cfg.replicas, "n_candidates": len(res.samples), "rejected": res.rejected,
               "energy_cutoff": cfg.energy_cutoff, "calibration": {"a": cal.a, "b": cal.b, "floor": cal.floor},
               "seconds": round(time.perf_counter() - t0, 2)}
        return Proposal(res.samples, rec, res.history,
                        f"{rec['sampler']} gave {rec['n_candidates']} candidates from {rec['frames_in_band']} frames "
                        f"in the trust band ({rec['frames']} frames of {rec['replicas']} replicas)")
