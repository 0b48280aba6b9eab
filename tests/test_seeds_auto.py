"""``--seeds auto[:MAX[:BATCH]]``: the alpha-spending function, the parsing of the option and its errors, the
planned looks, the stop rule on constructed claims, Holm at a look's level, and a real tiny study (a toy system
labelled by ASE's Lennard-Jones calculator) that runs two looks and records them in ``sequential.json`` and the
report."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from uqpot.cli.main import cli
from uqpot.core.errors import ConfigError
from uqpot.metrics.significance import spending_alphas
from uqpot.report import claims as C
from uqpot.studies.reproduce import check_seeds
from uqpot.studies.sequential import AutoSeeds, decide, look_alphas, plan_looks

from support.badinput import assert_user_error


# ------------------------------------------------------------------------------------------- spending
@pytest.mark.parametrize("fractions", [[0.25, 0.5, 0.75, 1.0], [1 / 3, 2 / 3, 1.0], [1.0], [0.5, 0.8]])
def test_spending_spends_at_most_alpha_and_rises(fractions):
    a = spending_alphas(fractions)
    cum = np.cumsum(a)
    assert all(x >= 0 for x in a) and cum[-1] <= 0.05 + 1e-15
    assert np.all(np.diff(cum) >= 0)
    if fractions[-1] == 1.0:
        assert cum[-1] == pytest.approx(0.05)
    # O'Brien-Fleming-type: alpha*(t) = 2 - 2 Phi(z_0.975 / sqrt(t)); early looks spend almost nothing
    from scipy.stats import norm

    assert cum[0] == pytest.approx(2 - 2 * norm.cdf(norm.ppf(0.975) / np.sqrt(fractions[0])))


def test_spending_values_and_bonferroni():
    a = spending_alphas([0.25, 0.5, 0.75, 1.0])
    assert a[0] == pytest.approx(8.86e-5, rel=1e-2) and a[-1] == pytest.approx(0.0264, rel=1e-2)
    assert a == sorted(a)  # O'Brien-Fleming: the later looks get more
    assert spending_alphas([0.5, 1.0], kind="bonferroni") == [0.025, 0.025]
    for bad in ([0.5, 0.5], [0.0, 1.0], [0.5, 1.2]):
        with pytest.raises(ValueError):
            spending_alphas(bad)


# ------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, want", [("auto", AutoSeeds()), ("auto:8", AutoSeeds(8)), ("AUTO:8:2", AutoSeeds(8, 2)),
                                        (["auto:8"], AutoSeeds(8)), ("0,1,2", [0, 1, 2]), (None, None)])
def test_seeds_option_parses(text, want):
    assert check_seeds(text) == want


@pytest.mark.parametrize("text, fragment", [("auto:x", "MAX must be a positive integer"),
                                            ("auto:0", "MAX must be a positive integer"),
                                            ("auto:4:0", "BATCH must be a positive integer"),
                                            ("auto:4:2:1", "expected auto, auto:MAX or auto:MAX:BATCH"),
                                            ("autox", "expected auto"), ("auto,3", "stands alone")])
def test_bad_auto_values_are_one_line(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_seeds(text)


def test_planned_looks():
    assert plan_looks([0, 1, 2], AutoSeeds()) == [[0, 1, 2], [0, 1, 2, 3, 4, 5], list(range(9)), list(range(12))]
    assert [len(s) for s in plan_looks([0, 1, 2], AutoSeeds(8))] == [3, 6, 8]
    assert plan_looks([5, 7], AutoSeeds(5, 2)) == [[5, 7], [5, 7, 0, 1], [5, 7, 0, 1, 2]]  # next unused integers
    assert plan_looks([0, 1, 2], AutoSeeds(3)) == [[0, 1, 2]]
    with pytest.raises(ConfigError, match="MAX 2 is below the preset's 3 seeds"):
        plan_looks([0, 1, 2], AutoSeeds(2))
    assert sum(look_alphas(plan_looks([0, 1, 2], AutoSeeds()))) == pytest.approx(0.05)


# ------------------------------------------------------------------------------------------- the rule
def _result(cid, holm):
    return {"id": cid, "verdict": "inconclusive", "verdict_holm": holm}


def test_decide_on_constructed_claims():
    stop, why, n = decide([_result("a", "reproduced"), _result("b", "contradicted")], 3, 12)
    assert stop and "every claim resolved (2)" in why and n["resolved"] == ["a", "b"]
    # "not contradicted" (an absent effect) and "not measured" cannot be resolved by more seeds: no hold-up
    stop, why, n = decide([_result("a", "reproduced"), _result("b", "not contradicted"),
                           _result("c", "not measured")], 3, 12)
    assert stop and n["undecidable"] == ["b", "c"] and "2 cannot be resolved" in why
    stop, why, n = decide([_result("a", "reproduced"), _result("b", "inconclusive")], 6, 12)
    assert not stop and n["unresolved"] == ["b"] and "next batch" in why
    stop, why, _ = decide([_result("a", "reproduced"), _result("b", "inconclusive")], 12, 12)
    assert stop and "MAX 12 seeds reached with 1 claim(s) unresolved" in why


def test_holm_at_a_looks_alpha():
    """check(alpha=0.05) is today's check; a smaller look's level rejects less."""
    q = "forces_mae"
    obs = C.Observations(last_generation=1, unit="(molecule, split, seed)")
    units = ["a", "b", "c", "d"]
    for m, v in (("ensemble", [0.40, 0.42, 0.41, 0.40]), ("mve", [0.46, 0.47, 0.49, 0.45]),
                 ("gmm", [0.50, 0.52, 0.51, 0.55])):
        obs.values[(m, 1, q)] = dict(zip(units, v))
    base, same, strict = C.check("rmd17", obs), C.check("rmd17", obs, alpha=0.05), C.check("rmd17", obs, alpha=1e-4)
    assert json.dumps(base, sort_keys=True) == json.dumps(same, sort_keys=True)
    verdicts = lambda rs: [c["verdict_holm"] for r in rs for c in r["comparisons"]]  # noqa: E731
    assert "reproduced" in verdicts(base) and "reproduced" not in verdicts(strict)
    p_holm = lambda rs: [c["p_holm"] for r in rs for c in r["comparisons"]]  # noqa: E731
    assert p_holm(base) == p_holm(strict)  # the adjusted p-values do not depend on the level


# ------------------------------------------------------------------------------------------- the CLI
TOY_AMMONIA = {"system": "ammonia", "data": {"n_train": 16}, "oracle": {"name": "tblite"}, "seeds": [0, 1, 2],
               "loop": {"methods": ["gmm"], "generations": 2}}


@pytest.mark.parametrize("seeds, fragment", [("auto:x", "MAX must be a positive integer"),
                                             ("auto:2", "MAX 2 is below the preset's 3 seeds"),
                                             ("auto,1", "stands alone")])
def test_bad_auto_on_the_command_line(tmp_path, seeds, fragment):
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_AMMONIA))
    r = CliRunner().invoke(cli, ["reproduce", "ammonia", "--preset", str(tmp_path / "toy.yaml"), "--executor", "none",
                                 "--out", str(tmp_path / "run"), "--seeds", seeds])
    assert_user_error(r, "--seeds", fragment)
    assert not (tmp_path / "run").exists()


def test_auto_is_refused_for_the_grid_study(tmp_path):
    r = CliRunner().invoke(cli, ["reproduce", "rmd17", "--executor", "none", "--out", str(tmp_path / "run"),
                                 "--seeds", "auto"])
    assert_user_error(r, "--seeds auto", "ammonia")
    assert not (tmp_path / "run").exists()


def test_dry_run_plans_for_max_seeds(tmp_path):
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_AMMONIA))
    args = ["reproduce", "ammonia", "--preset", str(tmp_path / "toy.yaml"), "--executor", "none", "--dry-run",
            "--out", str(tmp_path / "run")]
    fixed = CliRunner().invoke(cli, args + ["--seeds", "0,1,2,3,4,5,6,7"])
    auto = CliRunner().invoke(cli, args + ["--seeds", "auto:8"])
    assert fixed.exit_code == 0 and auto.exit_code == 0, auto.output
    assert "planned for MAX = 8 seeds, the upper bound" in auto.output and "3, 6, 8 seeds" in auto.output
    assert set(fixed.output.splitlines()) <= set(auto.output.splitlines())  # the same plan, one note more
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- end to end
from uqpot.md.stability import StabilityCriteria  # noqa: E402
from uqpot.systems import SYSTEMS, register_system  # noqa: E402
from support.toy_argon import LJ, ArgonClusters  # noqa: E402


@dataclasses.dataclass
class ToySeqConfig:
    n_train: int = 10
    n_test: int = 4
    seed: int = 0

    @classmethod
    def quick(cls, **overrides):
        return cls(**overrides)

    def check(self):
        pass


class ToyArgonSeq(ArgonClusters):
    """Four argon atoms labelled by Lennard-Jones; a study system (``uqpot reproduce toy_argon_seq``)."""

    name = "toy_argon_seq"
    config = ToySeqConfig

    def stability_criteria(self, ground_state_energy=None, **overrides):
        return StabilityCriteria(**{"min_distance": 2.0, **overrides})


@pytest.fixture(scope="module", autouse=True)
def _registered_while_this_module_runs():
    """The toy study system for the tests of this module only (they run in-process, ``--executor none``)."""
    register_system(ToyArgonSeq)
    yield
    SYSTEMS.pop("toy_argon_seq", None)


TOY_STUDY = {
    "system": "toy_argon_seq", "data": {"n_train": 10, "n_test": 12}, "oracle": {"name": "ase", "options": LJ},
    "seeds": [0],
    "loop": {"methods": ["ensemble"], "generations": 2, "data": {"align_structures": 2},
             "model": {"features": 8, "interactions": 1, "rbf": 8, "readout_hidden": 8},
             "uq": {"ensemble": {"members": 2}},
             "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "progress": False},
             "attack": {"n_seeds": 2, "iterations": 3, "energy_cutoff": None}, "md": {"length_scale": 1.0}},
}
#: a claim of the toy that one or two seeds cannot resolve: the force MAE falls from generation 1 to 2
TOY_CLAIMS = [{"id": "toy_mae_rises", "source": "test", "quote": "the force error improves", "system": "toy_argon_seq",
               "statement": "ensemble improves", "kind": "rises", "quantity": "forces_mae", "from": 1, "to": 2,
               "methods": ["ensemble"]}]


def test_auto_runs_two_looks_and_records_them(tmp_path, monkeypatch):
    """auto:2 on a one-seed preset: look 1 (seed 0) cannot resolve the claim (one seed, no interval), so the
    study adds seed 1; look 2 is at MAX and stops there.  sequential.json and the report say so, and the claims
    table uses the last look's alpha."""
    real = C.load_claims
    monkeypatch.setattr(C, "load_claims", lambda system=None, path=None:
                        TOY_CLAIMS if system == "toy_argon_seq" else real(system, path))
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_STUDY))
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["reproduce", "toy_argon_seq", "--preset", str(tmp_path / "toy.yaml"), "--executor",
                                 "none", "--out", str(out), "--seeds", "auto:2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    seq = json.loads((out / "sequential.json").read_text())
    assert seq["planned_looks"] == [[0], [0, 1]] and seq["max_seeds"] == 2
    assert [lk["seeds"] for lk in seq["looks"]] == [[0], [0, 1]]
    a1, a2 = seq["planned_alphas"]
    assert a1 + a2 == pytest.approx(0.05) and a1 < a2
    first, last = seq["looks"]
    assert first["decision"] == "continue" and first["n_unresolved"] == 1 and first["alpha"] == a1
    assert last["decision"] == "stop" and seq["stopped_at"] == 2 and last["alpha_spent"] == pytest.approx(0.05)
    assert ("MAX 2 seeds reached" in seq["reason"]) == (last["n_unresolved"] == 1)
    assert json.loads((out / "study.json").read_text())["seeds"] == [0, 1]
    rows = list(csv.DictReader(open(out / "table_sequential.csv")))
    assert [row["decision"] for row in rows] == ["continue", "stop"] and rows[1]["seeds"] == "0 1"
    claims = json.loads((out / "claims.json").read_text())
    assert claims["holm_alpha"] == a2 and claims["seeds"] == [0, 1]
    html = (out / "report.html").read_text()
    assert "It stopped at look 2 of at most 2" in html and f"alpha {a2:g}: the last look" in html
    # the report rebuilt from the directory says the same
    before = (out / "table_claims.csv").read_text()
    r = CliRunner().invoke(cli, ["report", str(out)])
    assert r.exit_code == 0 and (out / "table_claims.csv").read_text() == before


def test_auto_stops_early_when_nothing_is_left_to_resolve(tmp_path, monkeypatch):
    """auto:3 with a claim the study cannot measure (no such method): nothing is left unresolved after look
    1, so the study stops there with the preset's one seed and never runs seeds 1 and 2."""
    claim = {**TOY_CLAIMS[0], "id": "toy_gmm_rises", "methods": ["gmm"]}
    real = C.load_claims
    monkeypatch.setattr(C, "load_claims", lambda system=None, path=None:
                        [claim] if system == "toy_argon_seq" else real(system, path))
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_STUDY))
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["reproduce", "toy_argon_seq", "--preset", str(tmp_path / "toy.yaml"), "--executor",
                                 "none", "--out", str(out), "--seeds", "auto:3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    seq = json.loads((out / "sequential.json").read_text())
    assert len(seq["planned_looks"]) == 3 and [lk["seeds"] for lk in seq["looks"]] == [[0]]
    assert seq["stopped_at"] == 1 and seq["looks"][0]["undecidable"] == ["toy_gmm_rises"]
    assert "no claim to resolve" in seq["reason"] and not (out / "seed1").exists()
    assert "It stopped at look 1 of at most 3" in (out / "report.html").read_text()


def test_loop_command_takes_auto_for_a_study_file(tmp_path, monkeypatch):
    """``uqpot loop STUDY.yaml --seeds auto:1``: one look (MAX = the preset's one seed), recorded; a loop config
    that is no study file is refused (no claims to decide with)."""
    real = C.load_claims
    monkeypatch.setattr(C, "load_claims", lambda system=None, path=None:
                        TOY_CLAIMS if system == "toy_argon_seq" else real(system, path))
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY_STUDY))
    r = CliRunner().invoke(cli, ["loop", str(tmp_path / "toy.yaml"), "--out", str(tmp_path / "run"), "--seeds",
                                 "auto:1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    seq = json.loads((tmp_path / "run" / "sequential.json").read_text())
    assert seq["stopped_at"] == 1 and seq["looks"][0]["alpha"] == pytest.approx(0.05) and "seed 0 gen 2" in r.output
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump({"methods": ["gmm"], "out": str(tmp_path / "plain")}))
    r = CliRunner().invoke(cli, ["loop", str(tmp_path / "plain.yaml"), "--seeds", "auto"])
    assert_user_error(r, "--seeds auto needs a study file")
    assert not (tmp_path / "plain").exists()
