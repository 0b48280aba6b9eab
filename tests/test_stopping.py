"""The stopping rule (``loop: {until: ...}``, :mod:`uqpot.sample.stopping`, :mod:`uqpot.loop.stopping`): the
exceedance probability, the fraction's interval over trajectories, the decision, the config checks, and a
tiny loop that stops early when the target is loose and runs every generation when it cannot be met."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from pydantic import ValidationError

from uqpot.data.store import Store
from uqpot.loop.active_learning import ActiveLearning
from uqpot.loop.config import LoopConfig
from uqpot.loop.replicates import run_loop
from uqpot.loop.stopping import read_exploration
from uqpot.report.loop import build_loop_report
from uqpot.sample.stopping import (FractionEstimate, StoppingSettings, check_stop, decide, exceed_probability,
                                   fraction_above, labels_to_show, validate_fraction)
from support.tiny_loop import tiny_loop_config, tiny_loop_files


# ------------------------------------------------------------------------------------------- statistics
def test_exceed_probability_is_the_chi2_of_the_rms():
    rng = np.random.default_rng(0)
    n, sigma, tol = 12, 1.0, 1.1
    rms = np.sqrt((rng.normal(0, sigma, size=(200_000, n)) ** 2).mean(1))
    assert exceed_probability(sigma, n, tol) == pytest.approx((rms > tol).mean(), abs=3e-3)
    # many components: the step 1[σ > τ]; σ = 0 never exceeds
    assert exceed_probability([0.5, 2.0], 3000, 1.0) == pytest.approx([0.0, 1.0], abs=1e-9)
    assert exceed_probability(0.0, 12, 1.0) == 0.0


def test_the_interval_over_trajectories_covers_the_truth():
    """Trajectories with their own exceedance rate (a between-trajectory spread, correlated frames): the 95%
    interval of the mean over trajectories covers the true mean rate in about 95% of repeats."""
    rng = np.random.default_rng(1)
    truth, hits, reps = 0.1, 0, 400
    for _ in range(reps):
        rates = rng.beta(2, 18, size=10)  # mean 0.1
        trajs = [(rng.random(30) < r).astype(float) for r in rates]
        est = fraction_above(trajs)
        hits += est.low <= truth <= est.high
        assert est.n_trajectories == 10 and est.n_frames == 300
    assert 0.9 <= hits / reps <= 0.99


def test_interval_edges():
    one = fraction_above([np.array([0.0, 0.0])])
    assert (one.low, one.high) == (0.0, 1.0)  # one trajectory: no interval, never stops on it
    assert fraction_above([np.array([]), np.array([])]).n_trajectories == 0
    e = fraction_above([np.array([0.0, 0.2]), np.array([0.1, 0.1]), np.array([0.0, 0.0])])
    assert e.fraction == pytest.approx(1 / 15) and 0.0 <= e.low <= e.fraction <= e.high <= 1.0


def test_the_decision():
    st = StoppingSettings(tolerance=1.0, target=0.05, max_labels=10)
    low = FractionEstimate(0.01, 0.0, 0.04, 100, 5)
    high = FractionEstimate(0.03, 0.01, 0.06, 100, 5)
    assert decide(low, st, labels_added=0, generation=1, generations=3)[0] == "stop"
    assert decide(high, st, labels_added=0, generation=1, generations=3) == ("continue", "upper end 0.06 >= target 0.05")
    d, why = decide(high, st, labels_added=10, generation=1, generations=3)
    assert d == "stop" and why.startswith("label budget")
    d, why = decide(high, st, labels_added=0, generation=3, generations=3)
    assert d == "stop" and why.startswith("generations exhausted")


def _validation(above: int, n: int) -> dict:
    """A validate_fraction record of n labelled frames, ``above`` of them above the tolerance."""
    return {"n_labelled": n, "frames": [{"above": i < above} for i in range(n)],
            "true": {"fraction": above / n, "low": 0.0, "high": 1.0}}


def test_a_stop_is_refused_when_the_labels_contradict_the_calibration():
    """The calibration predicts an upper end below the target; 6 of 20 labelled frames above the tolerance
    contradict it (binomial p far below 0.05): the stop is refused, and the last generation says why it stopped.
    None of 20 above does not contradict it: converged, with the check in the reason."""
    st = StoppingSettings(tolerance=2.0, target=0.05)
    assert st.check == 20  # on by default
    est = FractionEstimate(0.0005, 0.0, 0.003, 300, 16)
    bad = check_stop(est, _validation(6, 20), st)
    assert bad["contradicts"] and bad["above"] == 6 and bad["p_value"] < 1e-6
    d, why = decide(est, st, labels_added=0, generation=1, generations=3, check=bad)
    assert d == "continue" and "6 of 20 labelled frames exceed 2" in why and "stop refused" in why
    d, why = decide(est, st, labels_added=0, generation=3, generations=3, check=bad)
    assert d == "stop" and why.startswith("generations exhausted (3)") and "stop refused" in why
    good = check_stop(est, _validation(0, 20), st)
    assert not good["contradicts"] and good["p_value"] == 1.0
    d, why = decide(est, st, labels_added=0, generation=1, generations=3, check=good)
    assert d == "stop" and why.startswith("converged") and "0 of 20 labelled frames above" in why
    # one frame above when 0.3% were predicted: p = 1 - 0.997^20 = 0.058, not a contradiction at 95%
    assert not check_stop(est, _validation(1, 20), st)["contradicts"]
    # the labels alone bound the fraction below the target with none above: (1 - t)^n <= 0.05
    assert (labels_to_show(0.05), labels_to_show(0.01)) == (59, 299)


def test_config_checks(tmp_path):
    base = {"data": {"train": "a.extxyz", "test": "b.extxyz"}, "oracle": {"name": "ase", "options": {}}}
    assert LoopConfig.model_validate(base).until is None
    cfg = LoopConfig.model_validate({**base, "until": {"tolerance": 2.0}})
    assert (cfg.until.target, cfg.until.confidence, cfg.until.max_labels) == (0.01, 0.95, None)
    for bad, word in (({"tolerance": 2.0, "target": 0.0}, "target"), ({"tolerance": 2.0, "target": 1.5}, "target"),
                      ({"tolerance": 2.0, "tolernce": 1}, "tolernce"), ({"target": 0.1}, "tolerance"),
                      ({"tolerance": 2.0, "replicas": 1}, "replicas")):
        with pytest.raises(ValidationError, match=word):
            LoopConfig.model_validate({**base, "until": bad})


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def ammonia_files(tmp_path, ammonia):
    return tiny_loop_files(tmp_path, ammonia)


_raw = tiny_loop_config


def test_a_loop_stops_when_the_target_is_met_and_runs_on_when_it_cannot_be(tmp_path, ammonia_files):
    # loose: every frame far below the tolerance, so generation 1 stops the loop (no sampling, no labels)
    loose = run_loop(ActiveLearning(LoopConfig.model_validate(
        _raw(tmp_path, ammonia_files, "loose", {"tolerance": 1e6, "target": 0.5}))))
    assert list(loose["generations"]) == [1]
    st = loose["generations"][1]["ensemble"]["stopping"]
    assert st["decision"] == "stop" and st["reason"].startswith("converged") and st["high"] < 0.5
    assert st["n_trajectories"] == 3 and st["n_frames"] == 6
    # the stop was checked on the oracle's labels of the exploration frames (6 < check's 20: all of them)
    assert st["check"]["labels"] == 6 and st["check"]["above"] == 0 and not st["check"]["contradicts"]
    assert "checked: 0 of 6 labelled frames above" in st["reason"]
    assert "attack" not in loose["generations"][1]["ensemble"]
    out = tmp_path / "loose"
    assert json.loads((out / "stopping.json").read_text())["records"][0]["decision"] == "stop"
    rows = list(csv.DictReader(open(out / "stopping.csv")))
    assert len(rows) == 1 and rows[0]["decision"] == "stop" and rows[0]["generation"] == "1"
    assert (rows[0]["check_above"], rows[0]["check_labels"]) == ("0", "6")
    assert "ensemble stopped after generation 1: converged" in (out / "loop.log").read_text()
    # impossible: every frame above a tiny tolerance, so the loop runs all its generations
    tight = run_loop(ActiveLearning(LoopConfig.model_validate(
        _raw(tmp_path, ammonia_files, "tight", {"tolerance": 1e-6, "target": 0.01}))))
    assert list(tight["generations"]) == [1, 2]
    s1, s2 = (tight["generations"][g]["ensemble"]["stopping"] for g in (1, 2))
    assert s1["decision"] == "continue" and s1["fraction"] == pytest.approx(1.0)
    assert s2["decision"] == "stop" and s2["reason"].startswith("generations exhausted")
    assert "label" in tight["generations"][1]["ensemble"]
    # validation: the frames of generation 1 labelled through the store, predicted vs true fraction
    al = ActiveLearning(LoopConfig.model_validate(_raw(tmp_path, ammonia_files, "tight",
                                                       {"tolerance": 1e-6, "target": 0.01})))
    ex = read_exploration(al.gen_dir(1, "ensemble"))
    assert len(ex.frames()) == s1["n_frames"]
    store = Store(tmp_path / "labels.db")
    v = validate_fraction(al.model(1, "ensemble"), ex, al.oracle, store, tolerance=1e-6, n_labels=4)
    assert v["n_labelled"] == 4 and v["true"]["fraction"] == 1.0 and v["predicted"]["fraction"] == pytest.approx(1.0)
    calls = al.oracle.calls
    validate_fraction(al.model(1, "ensemble"), ex, al.oracle, store, tolerance=1e-6, n_labels=4)
    assert al.oracle.calls == calls  # nothing computed twice
    # a longer loop continues a shorter one: generation 2's stop (out of generations) is taken again
    longer = run_loop(ActiveLearning(LoopConfig.model_validate(
        {**_raw(tmp_path, ammonia_files, "tight", {"tolerance": 1e-6, "target": 0.01}), "generations": 3})))
    assert longer["generations"][2]["ensemble"]["stopping"]["decision"] == "continue"
    assert "label" in longer["generations"][2]["ensemble"]
    assert longer["generations"][3]["ensemble"]["stopping"]["reason"].startswith("generations exhausted (3)")
    # the report tables the fraction per generation with its interval
    build_loop_report(tmp_path / "tight")
    rows = list(csv.DictReader(open(tmp_path / "tight" / "table_stopping.csv")))
    assert [(r["generation"], r["decision"]) for r in rows] == [("1", "continue"), ("2", "continue"), ("3", "stop")]
