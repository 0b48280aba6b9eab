"""Stability campaigns: typed config with the paper's presets, the batched engine against ASE's own
dynamics (same replicas, same initial velocities: same failure steps), and the JSON/CSV outputs."""

import csv
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from uqpot.systems import get_system
from uqpot.data.structures import Structure, StructureDataset
from uqpot.md.analytic import MorsePotential
from uqpot.md.campaign import CampaignConfig, plan_replicas, run_campaign
from uqpot.md.neb import nh3_pyramid
from uqpot.md.stability import StabilityCriteria
from uqpot.nn.potential import Potential
from uqpot.uq import Ensemble


def starts(n=6):
    out = []
    for k in range(n):
        a = nh3_pyramid()
        a.rattle(0.03, seed=k)
        out.append(Structure.from_atoms(a, energy=0.1 * k))
    return out


def test_presets_are_the_papers_settings():
    a = get_system("ammonia").campaign_config()
    assert (a.runs, a.temperatures_K, a.duration_fs, a.timestep_fs, a.thermostat) == (
        100, [300.0, 500.0, 750.0, 1000.0], 5000.0, 0.5, "nose-hoover")
    assert a.n_steps == 10_000
    s = get_system("silica").campaign_config()
    assert (s.runs, s.temperatures_K, s.duration_fs, s.timestep_fs) == (10, [2500.0], 1.0e6, 0.25)
    assert get_system("silica").campaign_config(length_scale=0.001).n_steps == 4000
    with pytest.raises(ValidationError):
        CampaignConfig(system="ammonia", temperature=300)  # unknown key
    with pytest.raises(ValidationError):
        CampaignConfig(thermostat="berendsen")
    # the ammonia energy floor is the optimised minimum's energy, which the caller gives (the loop: its oracle)
    with pytest.raises(ValueError, match="optimised minimum"):
        a.resolved_criteria(starts())
    crit = a.model_copy(update={"ground_state_energy": -1.5}).resolved_criteria(starts())
    assert crit.min_energy == -1.5 and crit.min_distance == 0.75 and crit.max_distance == 2.25
    # 'min_start' (the lowest start energy) stays available when asked for
    assert a.model_copy(update={"ground_state_energy": "min_start"}).resolved_criteria(starts()).min_energy == 0.0
    assert s.resolved_criteria([]) == get_system("silica").stability_criteria()


def test_plan_pairs_starts_across_temperatures():
    cfg = CampaignConfig(runs=4, temperatures_K=[300.0, 600.0], seed=3)
    plans = plan_replicas(cfg, 10)
    assert [p.replica for p in plans] == list(range(8))
    assert [p.start for p in plans[:4]] == [p.start for p in plans[4:]]
    assert len({p.seed for p in plans}) == 8
    assert plans == plan_replicas(cfg, 10)  # deterministic


def test_batched_and_ase_engines_agree():
    """The same campaign through both engines (random float64 PaiNN, which soon breaks the molecules):
    identical failure steps and reasons, energies equal to round-off along the way."""
    torch.manual_seed(0)
    model = Potential(features=16, interactions=2, rbf=8, readout_hidden=16).double().eval()
    model.fit_reference(StructureDataset(starts()))
    cfg = get_system("ammonia").campaign_config(runs=2, temperatures_K=[300.0, 1000.0], duration_fs=60.0,
                                ground_state_energy=None, check_every=10, record_every=10)
    rb = run_campaign(cfg, model, starts(), engine="batched")
    ra = run_campaign(cfg, model, starts(), engine="ase")
    assert len(rb.replicas) == len(ra.replicas) == 4
    for b, a in zip(rb.replicas, ra.replicas):
        assert (b.stable, b.reason, b.failure_step) == (a.stable, a.reason, a.failure_step)
        assert b.record_steps == a.record_steps
        np.testing.assert_allclose(b.energy, a.energy, atol=1e-8)
        np.testing.assert_allclose(b.temperature, a.temperature, rtol=1e-8)
        if b.stable:
            assert np.abs(b.final_positions - a.final_positions).max() < 1e-8
    assert rb.summary()["fraction_stable"] == ra.summary()["fraction_stable"]


def test_ase_engine_with_ensemble_records_uncertainty(tmp_path):
    """A UQ method through the ASE path: U comes from UQPotCalculator's results, and equals the batched
    engine's record."""
    torch.manual_seed(1)
    model = Ensemble(potential=dict(features=8, interactions=1, rbf=6, readout_hidden=8, members=2)).double().eval()
    model.potential.known_elements[[1, 7]] = True
    cfg = CampaignConfig(runs=1, temperatures_K=[300.0], duration_fs=10.0, timestep_fs=0.5, criteria=StabilityCriteria(),
                         record_every=5, check_every=5, skin=2.0)
    ra = run_campaign(cfg, model, starts(2), engine="ase")
    rb = run_campaign(cfg, model, starts(2), engine="batched")
    assert len(ra.replicas[0].uncertainty) == 5
    np.testing.assert_allclose(ra.replicas[0].uncertainty, rb.replicas[0].uncertainty, rtol=1e-6)
    assert "variance" in ra.summary()["uncertainty"]


def test_outputs_json_and_csv(tmp_path):
    cfg = get_system("ammonia").campaign_config(runs=3, temperatures_K=[300.0, 200000.0], duration_fs=50.0,
                                record_every=10, check_every=10, frame_every=50, ground_state_energy=-400.0)
    res = run_campaign(cfg, MorsePotential(with_uncertainty=True), starts(), out_dir=tmp_path / "camp")
    summary = json.loads((tmp_path / "camp" / "summary.json").read_text())
    assert summary["config"]["runs"] == 3
    per_t = summary["summary"]["per_temperature"]
    assert per_t["300"]["fraction_stable"] == 1.0
    assert per_t["200000"]["fraction_stable"] < 1.0  # far too hot: they break
    assert summary["summary"]["fraction_stable"] == pytest.approx(res.stable_fraction)
    rep = summary["replicas"][0]
    assert rep["time_fs"][:2] == [0.0, 5.0] and len(rep["uncertainty"]) == len(rep["energy"])
    failed = [r for r in summary["replicas"] if not r["stable"]]
    assert failed and all(r["time_to_failure_fs"] < 50.0 and r["reason"] != "stable" for r in failed)
    rows = list(csv.DictReader(open(tmp_path / "camp" / "replicas.csv")))
    assert len(rows) == 6 and {"time_to_failure_fs", "mean_uncertainty", "stable_time_fs"} <= set(rows[0])
    traces = list(csv.DictReader(open(tmp_path / "camp" / "traces.csv")))
    assert len(traces) == sum(len(r["time_fs"]) for r in summary["replicas"])
    assert (tmp_path / "camp" / "frames.extxyz").is_file()
