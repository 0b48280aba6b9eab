"""The MD samplers: trust levels through the calibration, the `md` sampler picks exactly the frames inside
the trust band (a toy potential with closed-form U), the UDD bias has the documented form and gradient,
a replica stopped by an uncertainty check leaves the others bit-identical, and a loop runs on each sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uqpot.core import fields as F
from uqpot.data.batch import collate
from uqpot.data.structures import Structure, StructureDataset
from uqpot.md.analytic import MorsePotential
from uqpot.md.batched import BatchedMD
from uqpot.md.checks import UncertaintyStop
from uqpot.md.neb import nh3_pyramid
from uqpot.sample.adversarial import BoltzmannReference
from uqpot.sample.biased_md import UncertaintyBias, biased_md_sample
from uqpot.sample.md import MDSamplerConfig, md_sample
from uqpot.sample.trust import Calibration, TrustBand, pick_diverse, structural_distance


def nh3(seed=0, rattle=0.05):
    a = nh3_pyramid()
    a.rattle(rattle, seed=seed)
    return a


def _train(n=6):
    out = []
    for k in range(n):
        s = Structure.from_atoms(nh3(k))
        s.energy, s.frame = -1.0 * k, k
        out.append(s)
    return StructureDataset(out)


def _u(model, positions):
    s = Structure(np.array([7, 1, 1, 1]), positions, np.zeros((3, 3)), np.zeros(3, bool))
    return float(model(collate([s], cutoff=model.cutoff, dtype="float64"))[F.UNCERTAINTY][0].detach())


def test_trust_levels_through_the_calibration():
    cal = Calibration(a=2.0, b=1.0, floor=4.0)
    assert cal.u_of_sigma(3.0) == pytest.approx((9.0 - 1.0) / 2.0)
    assert cal.u_of_sigma(1.5) == -math.inf  # the floor (σ = 2) already exceeds it: every U
    assert float(cal.sigma(cal.u_of_sigma(5.0))) == pytest.approx(5.0)
    band = TrustBand.from_calibration(3.0, 5.0, cal)
    u = np.array([3.9, 4.0, 11.9, 12.0])
    assert band.inside(u).tolist() == [False, True, True, False]
    assert Calibration(0.0, 2.0).u_of_sigma(1.0) == -math.inf and Calibration(0.0, 2.0).u_of_sigma(2.0) == math.inf
    with pytest.raises(ValueError, match="trust_lo < trust_hi"):
        TrustBand.from_calibration(5.0, 3.0, cal)
    with pytest.raises(ValueError, match="no stored calibration"):
        Calibration.from_extra({}, "m.pt")


def test_structural_distance_and_diverse_picks():
    a = nh3(1).positions
    rot = a @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) + 3.0
    z = np.array([7, 1, 1, 1])
    assert structural_distance(a, rot, numbers=z) < 1e-12  # rotation and translation invariant
    assert structural_distance(a, nh3(2).positions, numbers=z) > 1e-3
    frames = [{"positions": p, "numbers": z, "cell": np.zeros((3, 3)), "pbc": np.zeros(3, bool)}
              for p in (a, rot, nh3(2).positions, nh3(3).positions)]
    picked, left = pick_diverse(frames, np.array([4.0, 3.0, 2.0, 1.0]), max_picks=2, min_distance=1e-6)
    assert picked == [0, 2]  # frame 1 is frame 0 moved rigidly; frame 3 is over the budget
    assert {d["frame"] for d in left} == {1, 3} and "budget" in [d for d in left if d["frame"] == 3][0]["reason"]


def test_md_sampler_picks_exactly_the_frames_in_the_trust_band():
    """Morse with U = mean |F_i|² and the calibration σ² = U: every candidate's U, evaluated afresh, lies in
    the band, and every in-band frame (after the start) is a candidate when budget and spacing allow."""
    model = MorsePotential(with_uncertainty=True)
    train = _train()
    ref = BoltzmannReference.from_energies(train.energies(), [4] * len(train), 0.7)
    cal = Calibration(1.0, 0.0)
    probe = md_sample(model, train, MDSamplerConfig(trust_lo=0.0, trust_hi=1e9, replicas=6, steps=200,
                                                    frame_every=5, max_candidates=10 ** 6, min_distance=0.0,
                                                    energy_cutoff=None), cal, ref)
    s = np.sqrt(probe.history["uncertainty"][probe.history["step"] > 0])
    lo, hi = np.quantile(s, [0.3, 0.7])
    cfg = MDSamplerConfig(trust_lo=lo, trust_hi=hi, replicas=6, steps=200, frame_every=5, max_candidates=10 ** 6,
                          min_distance=0.0, energy_cutoff=None, stop_above_trust=False)
    res = md_sample(model, train, cfg, cal, ref)
    h = res.history
    inside = (h["step"] > 0) & (h["uncertainty"] >= lo ** 2) & (h["uncertainty"] < hi ** 2)
    assert 0 < inside.sum() < (h["step"] > 0).sum()
    assert len(res.samples) == inside.sum() == res.summary["picked"]
    got = {(s.info["md_replica"], round(s.info["time_fs"] / cfg.timestep_fs)) for s in res.samples}
    assert got == {(int(r), int(k)) for r, k in zip(h["replica"][inside], h["step"][inside])}
    for smp in res.samples:
        u = _u(model, smp.positions)
        assert lo <= math.sqrt(u) < hi and u == pytest.approx(smp.info["uncertainty"], rel=1e-10)
        assert smp.info["sigma_F"] == pytest.approx(math.sqrt(u), rel=1e-10) and smp.info["sampler"] == "md"
    # a budget keeps the highest-σ ones
    top = md_sample(model, train, MDSamplerConfig(**{**cfg.__dict__, "max_candidates": 3}), cal, ref)
    assert sorted(s.info["uncertainty"] for s in top.samples) == sorted(h["uncertainty"][inside])[-3:]


def test_adaptive_lower_trust_level_puts_the_set_fraction_of_frames_in_the_band():
    """DP-GEN's adaptive trust_lo: the band holds the requested fraction of the eligible frames (after the start,
    below trust_hi), whatever the fixed trust_lo says; the level is the frames' own σ_F quantile."""
    model = MorsePotential(with_uncertainty=True)
    train = _train()
    ref = BoltzmannReference.from_energies(train.energies(), [4] * len(train), 0.7)
    cal = Calibration(1.0, 0.0)
    base = dict(replicas=6, steps=200, frame_every=5, max_candidates=10 ** 6, min_distance=0.0, energy_cutoff=None,
                stop_above_trust=False)
    probe = md_sample(model, train, MDSamplerConfig(trust_lo=0.0, trust_hi=1e9, **base), cal, ref)
    s = np.sqrt(probe.history["uncertainty"][probe.history["step"] > 0])
    hi = float(np.quantile(s, 0.9))
    for fraction in (0.1, 0.25):
        res = md_sample(model, train, MDSamplerConfig(trust_lo=1e-6, trust_hi=hi, adaptive_fraction=fraction, **base),
                        cal, ref)
        h = res.history
        eligible = (h["step"] > 0) & (np.sqrt(h["uncertainty"]) < hi)
        share = h["in_band"][eligible].mean()
        assert fraction <= share <= fraction + 2.0 / eligible.sum()
        lo = res.summary["trust_lo"]
        assert lo == pytest.approx(np.quantile(np.sqrt(h["uncertainty"][eligible]), 1 - fraction, method="higher"))
        assert res.summary["trust_lo_rule"].startswith(f"adaptive: {fraction:g}") and lo > 1e-6
        assert all(lo <= smp.info["sigma_F"] < hi for smp in res.samples)
    with pytest.raises(ValueError, match="adaptive_fraction"):
        MDSamplerConfig(adaptive_fraction=1.5)


def test_uncertainty_bias_has_the_documented_form_and_gradient():
    """E_b = E + A[exp(−σ²/B²) − 1], σ² = max(aU + b, floor); forces = −∇E_b by central differences."""
    base = MorsePotential(with_uncertainty=True)
    cal = Calibration(0.7, 0.5, 0.6)
    A, B = 4.0, 30.0
    biased = UncertaintyBias(base, A, B, cal)
    at = nh3(4, rattle=0.08)
    s = Structure.from_atoms(at)
    batch = collate([s], cutoff=5.0, dtype="float64")
    out, ref = biased(batch), base(batch)
    u = float(ref[F.UNCERTAINTY][0].detach())
    var = max(0.7 * u + 0.5, 0.6)
    assert float(out[F.ENERGY][0]) - float(ref[F.ENERGY][0].detach()) == pytest.approx(A * (math.exp(-var / B ** 2) - 1))
    assert biased.unbias(float(out[F.ENERGY][0]), u) == pytest.approx(float(ref[F.ENERGY][0].detach()), abs=1e-10)
    h = 1e-5
    fd = np.zeros((4, 3))
    for i in range(4):
        for c in range(3):
            e = []
            for sgn in (1, -1):
                p = s.positions.copy()
                p[i, c] += sgn * h
                b = collate([Structure(s.numbers, p, s.cell, s.pbc)], cutoff=5.0, dtype="float64")
                e.append(float(biased(b)[F.ENERGY][0]))
            fd[i, c] = -(e[0] - e[1]) / (2 * h)
    f = out[F.FORCES].numpy()
    assert np.abs(f - fd).max() < 1e-6 * max(1.0, np.abs(f).max())
    assert np.abs(f - ref[F.FORCES].detach().numpy()).max() > 1e-4  # the bias moves the forces


def test_stopped_replica_leaves_the_others_bit_identical():
    model = MorsePotential(with_uncertainty=True)
    starts = [nh3(10), nh3(11, 0.15), nh3(12)]
    kw = dict(timestep_fs=0.5, temperatures_K=[300.0, 3000.0, 500.0], seeds=[1, 2, 3], check_every=10,
              record_every=5)
    free = BatchedMD(model, starts, **kw).run(100)
    umax = [max(r.uncertainty) for r in free.replicas]
    thr = 0.5 * (umax[1] + max(umax[0], umax[2]))
    assert max(umax[0], umax[2]) < thr < umax[1]
    stopped = BatchedMD(model, starts, checks=[UncertaintyStop(thr)], **kw).run(100)
    hot = stopped.replicas[1]
    assert not hot.stable and hot.reason == "uncertain" and hot.failure_step < 100
    for k in (0, 2):
        a, b = free.replicas[k], stopped.replicas[k]
        assert np.array_equal(a.final_positions, b.final_positions) and np.array_equal(a.energy, b.energy)
        assert np.array_equal(a.uncertainty, b.uncertainty)
    with pytest.raises(ValueError, match="needs a model that returns an uncertainty"):
        BatchedMD(MorsePotential(), starts, checks=[UncertaintyStop(1.0)], **kw)


def test_biased_md_climbs_into_uncertainty():
    """At the same temperature and seeds, the UDD bias drives frames to higher U than plain MD."""
    model = MorsePotential(with_uncertainty=True)
    train = _train()
    ref = BoltzmannReference.from_energies(train.energies(), [4] * len(train), 0.7)
    cal = Calibration(1.0, 0.0)
    cfg = MDSamplerConfig(trust_lo=0.0, trust_hi=1e9, replicas=4, steps=200, frame_every=5, temperatures_K=[200.0],
                          max_candidates=1000, min_distance=0.0, energy_cutoff=None)
    plain = md_sample(model, train, cfg, cal, ref)
    biased = biased_md_sample(model, train, cfg, cal, ref, strength=20.0, width=40.0)
    assert biased.summary["sampler"] == "biased_md" and all(s.info["sampler"] == "biased_md" for s in biased.samples)
    assert np.mean(biased.history["uncertainty"]) > 1.5 * np.mean(plain.history["uncertainty"])


def test_farthest_point_picks_away_from_the_data_and_each_other():
    """Feature-space selection (uqpot.sample.select): the most uncertain first, then each time the candidate
    farthest from the training points and the picks so far."""
    from uqpot.sample.select import farthest_point

    cand = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 4.0], [4.9, 0.1]])
    score = np.array([1.0, 9.0, 2.0, 3.0, 1.0])
    assert farthest_point(cand, score, 3) == [1, 2, 3]  # after the top-U point, the farthest ones
    assert farthest_point(cand, score, 3, reference=np.array([[5.0, 0.0]]))[:2] == [1, 3]
    assert farthest_point(cand, score, 10) == [1, 2, 3, 4, 0] and farthest_point(cand, score, 0) == []


def test_md_sampler_selects_in_feature_space():
    """``selection: features`` on an ensemble: every pick lies in the band, the first is the most uncertain,
    the others follow farthest-point sampling on the model's own (scaled) features."""
    import torch

    from uqpot.sample.select import farthest_point, feature_vectors
    from uqpot.uq.ensemble import Ensemble

    torch.manual_seed(0)
    train = _train()
    model = Ensemble(dict(features=16, interactions=1, rbf=8, readout_hidden=8, members=2, seeds=[1, 2],
                          cutoff=4.0)).double()
    model.fit_reference(train)
    ref = BoltzmannReference.from_energies(train.energies(), [4] * len(train), 0.7)
    cfg = MDSamplerConfig(trust_lo=0.0, trust_hi=1e9, replicas=4, steps=60, frame_every=5, max_candidates=4,
                          min_distance=0.0, energy_cutoff=None, selection="features", temperatures_K=[300.0])
    res = md_sample(model, train, cfg, Calibration(1.0, 0.0), ref)
    assert res.summary["selection"] == "features" and len(res.samples) == 4
    frames = [s for s in res.samples]
    u = [s.info["uncertainty"] for s in frames]
    h = res.history
    assert u[0] == pytest.approx(h["uncertainty"][h["in_band"]].max())  # the most uncertain frame first
    feats = feature_vectors(model, frames)
    base = feature_vectors(model, list(train))
    scale = np.where(base.std(0) > 1e-12, base.std(0), 1.0)
    assert farthest_point(feats / scale, np.array(u), 4, base / scale) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="selection"):
        MDSamplerConfig(selection="random")
