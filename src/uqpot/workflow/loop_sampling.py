"""The loop's sampling step for the MD samplers (``sampler: md | biased_md``): the ``sampling`` settings and
the step that turns them, the generation's model and its stored calibration into candidates for the oracle
(:mod:`uqpot.sample.md`, :mod:`uqpot.sample.biased_md`), written where and as the attack writes its own
(``GEN/METHOD/attack/candidates.extxyz``, ``history.npz``), so that labelling, the store and resuming work
unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from ..schema import Strict


class SamplingSettings(Strict):
    """``sampling``: the MD samplers (``sampler: md | biased_md``; :mod:`uqpot.sample.md`,
    :mod:`uqpot.sample.biased_md`).  Trust levels are calibrated force errors σ_F (kcal/mol/Å), turned into
    each method's U through its stored calibration.  Unset: the system's campaign temperatures and time step
    (:data:`uqpot.md.campaign.PRESETS`), and ``max_candidates`` = ``attack.n_seeds`` (the attack's oracle
    budget per generation, so that samplers are compared at equal cost)."""

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
    # eligible frames lies in the band (uqpot.sample.md); unset: the fixed trust_lo
    adaptive_fraction: Optional[float] = Field(None, gt=0.0, le=1.0)
    # candidates among the in-band frames: most uncertain first, min_distance Å apart ("geometric"), or by
    # farthest-point sampling in the model's last-layer features, away from the training data ("features")
    selection: Literal["geometric", "features"] = "geometric"

    @model_validator(mode="after")
    def _band(self):
        if not self.trust_lo < self.trust_hi:
            raise ValueError(f"trust_lo ({self.trust_lo}) must be below trust_hi ({self.trust_hi}) kcal/mol/Å")
        return self


SamplerName = Literal["adversarial", "md", "biased_md"]


def md_sample_for_loop(al, g: int, method: str, train, d: Path) -> dict:
    """Runs the method's MD sampler for generation ``g`` of the loop ``al``; writes the candidates into ``d``
    and returns the step's record."""
    from ..data.io import write_extxyz
    from ..data.structures import StructureDataset
    from ..md.campaign import PRESETS
    from ..md.stability import StabilityCriteria
    from ..modelfile import read as read_model_file
    from ..sample.adversarial import BoltzmannReference
    from ..sample.biased_md import biased_md_sample
    from ..sample.md import MDSamplerConfig, md_sample
    from ..sample.trust import Calibration

    sampler, sm = al.cfg.sampler_for(method), al.cfg.sampling
    preset = PRESETS.get(al.cfg.system, {})
    cfg = MDSamplerConfig(
        trust_lo=sm.trust_lo, trust_hi=sm.trust_hi, replicas=sm.replicas,
        temperatures_K=sm.temperatures_K or preset.get("temperatures_K", [300.0]),
        steps=sm.steps, timestep_fs=sm.timestep_fs or preset.get("timestep_fs", 0.5),
        frame_every=sm.frame_every, max_candidates=sm.max_candidates or al.cfg.attack.n_seeds,
        min_distance=sm.min_distance, energy_cutoff=al.cfg.cutoff_for(g), stop_above_trust=sm.stop_above_trust,
        skin=preset.get("skin", 1.0), seed=al.cfg.seed + g, adaptive_fraction=sm.adaptive_fraction,
        selection=sm.selection)
    path = al.gen_dir(g, method) / "train" / "model.pt"
    cal = Calibration.from_extra(read_model_file(path).get("extra", {}), where=str(path))
    model = al.model(g, method)
    ref = BoltzmannReference.from_energies(train.energies(), [s.n_atoms for s in train], al.cfg.attack.kT)
    criteria = {"ammonia": StabilityCriteria.ammonia(ground_state_energy=None),
                "silica": StabilityCriteria.silica()}.get(al.cfg.system)
    t0 = time.perf_counter()
    if sampler == "biased_md":
        res = biased_md_sample(model, train, cfg, cal, ref, strength=sm.bias_strength, width=sm.bias_width,
                               criteria=criteria)
    else:
        res = md_sample(model, train, cfg, cal, ref, criteria=criteria)
    d.mkdir(parents=True, exist_ok=True)
    write_extxyz(StructureDataset(res.samples), d / "candidates.extxyz")
    np.savez(d / "history.npz", **res.history)
    return {**res.summary, "n_seeds": cfg.replicas, "n_candidates": len(res.samples), "rejected": res.rejected,
            "energy_cutoff": cfg.energy_cutoff, "calibration": {"a": cal.a, "b": cal.b, "floor": cal.floor},
            "seconds": round(time.perf_counter() - t0, 2)}
