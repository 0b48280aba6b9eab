"""The claims checker on hand-made observations: effects, intervals and verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from uqpot.report import claims as C


def _obs(values: dict, counts: dict | None = None, last: int = 3) -> C.Observations:
    """values: {(method, generation, quantity): [value per seed]}"""
    obs = C.Observations(last_generation=last)
    for key, vals in values.items():
        obs.values[key] = {s: v for s, v in enumerate(vals)}
    for key, cs in (counts or {}).items():
        obs.counts[key] = {s: c for s, c in enumerate(cs)}
    return obs


def _claim(cid):
    return next(c for c in C.load_claims() if c["id"] == cid)


def test_every_claim_is_well_formed():
    claims = C.load_claims()
    assert len(claims) >= 8 and len({c["id"] for c in claims}) == len(claims)
    assert {c["system"] for c in claims} == {"ammonia", "rmd17", "silica"}
    for c in claims:
        assert c["kind"] in C.KINDS and c["source"] and c["quote"]


def test_order_reproduced_contradicted_and_inconclusive():
    claim = _claim("fig3d_gen1_stability_order")  # ensemble > evidential > gmm > mve
    q = "stable_md_fraction"
    clear = _obs({("ensemble", 1, q): [0.9, 0.92, 0.88], ("evidential", 1, q): [0.7, 0.72, 0.69],
                  ("gmm", 1, q): [0.5, 0.52, 0.49], ("mve", 1, q): [0.2, 0.22, 0.19]})
    r = C.evaluate(claim, clear)
    assert r["verdict"] == "reproduced" and len(r["comparisons"]) == 6
    c0 = r["comparisons"][0]
    assert c0["comparison"] == "ensemble better than evidential"
    assert c0["effect"] == pytest.approx(np.mean([0.2, 0.2, 0.19])) and c0["low"] > 0
    flipped = _obs({("ensemble", 1, q): [0.1, 0.12, 0.11], ("evidential", 1, q): [0.7, 0.72, 0.69],
                    ("gmm", 1, q): [0.5, 0.52, 0.49], ("mve", 1, q): [0.2, 0.22, 0.19]})
    assert C.evaluate(claim, flipped)["verdict"] == "contradicted"
    noisy = _obs({("ensemble", 1, q): [0.9, 0.3, 0.6], ("evidential", 1, q): [0.4, 0.8, 0.5],
                  ("gmm", 1, q): [0.5, 0.52, 0.49], ("mve", 1, q): [0.2, 0.22, 0.19]})
    r = C.evaluate(claim, noisy)
    assert r["verdict"] == "inconclusive" and r["comparisons"][0]["verdict"] == "inconclusive"


def test_lower_is_better_quantities_flip_the_sign():
    claim = _claim("fig2c_ensemble_lowest_force_mae")
    q = "forces_mae"
    obs = _obs({("ensemble", 1, q): [0.40, 0.42, 0.41], ("mve", 1, q): [0.60, 0.61, 0.63],
                ("gmm", 1, q): [0.50, 0.52, 0.51]}, last=1)
    r = C.evaluate(claim, obs)
    assert r["verdict"] == "reproduced"
    assert {c["comparison"] for c in r["comparisons"]} == {"ensemble better than gmm", "ensemble better than mve"}
    assert all(c["effect"] > 0 for c in r["comparisons"])


def test_one_seed_stable_fraction_uses_newcombe():
    claim = _claim("fig3g_stability_rises")
    q = "stable_md_fraction"
    values, counts = {}, {}
    for m in ("ensemble", "mve", "evidential", "gmm"):
        values[(m, 1, q)], values[(m, 3, q)] = [10 / 40], [38 / 40]
        counts[(m, 1)], counts[(m, 3)] = [(10, 40)], [(38, 40)]
    r = C.evaluate(claim, _obs(values, counts))
    assert r["verdict"] == "reproduced"
    assert all(c["interval"].startswith("one seed: Newcombe") for c in r["comparisons"])


def test_one_seed_ranking_bootstrap_scores_each_model_on_its_own_errors():
    """Two models on the same 200 structures with different errors: A's U follows A's errors, B's U is noise.
    The effect is metric(U_A, ε_A) − metric(U_B, ε_B), what the table reports for each, not both on A's ε."""
    from uqpot.metrics.uq import roc_auc

    rng = np.random.default_rng(0)
    ea, eb = rng.exponential(size=200), rng.exponential(size=200)
    ua, ub = ea * np.exp(0.3 * rng.normal(size=200)), rng.exponential(size=200)
    q = "roc_auc_p20"
    claim = {"id": "t", "kind": "better_than", "quantity": q, "source": "test", "statement": "A beats B",
             "better": ["ensemble"], "worse": ["gmm"], "generation": 1}
    obs = _obs({("ensemble", 1, q): [roc_auc(ua, ea, 20)], ("gmm", 1, q): [roc_auc(ub, eb, 20)]}, last=1)
    obs.predictions = lambda m, g, u: (ua, ea) if m == "ensemble" else (ub, eb)
    r = C.evaluate(claim, obs)
    c = r["comparisons"][0]
    assert c["interval"].startswith("one seed: bootstrap")
    assert c["effect"] == pytest.approx(roc_auc(ua, ea, 20) - roc_auc(ub, eb, 20), abs=1e-12)
    assert c["effect"] > 0.2 and r["verdict"] == "reproduced"


def test_only_improves_can_be_contradicted_by_another_method():
    claim = _claim("fig3e_neb_only_ensemble_improves")
    q = "neb_barrier_error"
    base = {("ensemble", 1, q): [2.0, 2.1, 1.9], ("ensemble", 3, q): [0.2, 0.3, 0.25],
            ("gmm", 1, q): [1.0, 1.1, 0.9], ("gmm", 3, q): [1.1, 1.2, 0.9]}
    r = C.evaluate(claim, _obs(base))
    assert r["verdict"] == "reproduced"
    assert r["comparisons"][1]["verdict"] == "not contradicted"
    base[("gmm", 3, q)] = [0.1, 0.2, 0.15]  # GMM improves clearly too
    assert C.evaluate(claim, _obs(base))["verdict"] == "contradicted"


def test_missing_data_is_not_measured():
    r = C.evaluate(_claim("fig3a_ood_ensemble_gmm_over_mve_evidential_spearman"),
                   _obs({("ensemble", 1, "spearman"): [0.8]}))
    assert r["verdict"] == "not measured" and r["comparisons"] == []
    rows = C.table_rows([r])
    assert rows[0]["verdict"] == "not measured"


def test_a_study_with_one_generation_measures_no_change_between_generations():
    """A study stopped after generation 1 ("last" is 1): the claims on a change from generation 1 to the last
    are not measured (not "generation 1 to 1" with a zero effect), the one-generation claims still are."""
    q = "stable_md_fraction"
    vals = {(m, 1, q): [b + 0.01 * s for s in range(3)]
            for m, b in (("ensemble", 0.9), ("evidential", 0.7), ("gmm", 0.5), ("mve", 0.2))}
    vals.update({(m, 1, "neb_barrier_error"): [1.0, 1.2, 0.9] for m in ("ensemble", "gmm")})
    obs = _obs(vals, last=1)
    for cid in ("fig3g_stability_rises", "fig3g_gmm_stability_rises_most", "fig3e_neb_only_ensemble_improves"):
        r = C.evaluate(_claim(cid), obs)
        assert r["verdict"] == "not measured" and r["comparisons"] == [], cid
    assert C.evaluate(_claim("fig3d_gen1_stability_order"), obs)["verdict"] == "reproduced"
    rows = C.table_rows(C.check("ammonia", obs))
    assert not any("generation 1 to 1" in (row.get("comparison") or "") for row in rows)


PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "tan2023_single_model_uq.txt"


def test_every_quote_is_the_papers_own_sentence():
    """Each claim's quote is verbatim in the paper (pieces around an ellipsis each), or names a table row."""
    if not PAPER.is_file():
        pytest.skip(f"the paper's text {PAPER.name} is not beside the checkout")
    text = " ".join(PAPER.read_text().split())
    for c in C.load_claims():
        if c["quote"].startswith("Table "):
            assert c["source"].startswith("Table"), c["id"]
            continue
        for piece in c["quote"].split(" ... "):
            assert " ".join(piece.split()) in text, (c["id"], piece[:60])


def test_claims_without_a_source_or_quote_are_refused(tmp_path):
    good = {"id": "x", "source": "Fig. 1", "quote": "q", "system": "ammonia", "statement": "s", "kind": "best",
            "quantity": "spearman", "method": "ensemble"}
    for drop in ("quote", "source", "method"):
        bad = {k: v for k, v in good.items() if k != drop}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump([bad]))
        with pytest.raises(ValueError, match=drop):
            C.load_claims(path=tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump([good]))
    assert C.load_claims(path=tmp_path / "c.yaml")[0]["id"] == "x"


def test_the_silica_claims_follow_section_3_3():
    """Sec. 3.3: the ensemble's MD time rises most, GMM's too but less, both fall back in generation 3, MVE
    improves steadily, evidential does not improve; no claim that only the ensemble rises."""
    silica = {c["id"]: c for c in C.load_claims("silica")}
    assert not any("only" in cid for cid in silica)
    assert set(silica["fig4c_silica_ensemble_gmm_md_time_rises"]["methods"]) == {"ensemble", "gmm"}
    assert silica["fig4c_silica_ensemble_rises_most"]["than"] == ["gmm"]
    assert silica["fig4c_silica_ensemble_gmm_reversal"]["kind"] == "falls"
    assert silica["fig4c_silica_mve_steady_improvement"]["methods"] == ["mve"]
    assert silica["fig4c_silica_evidential_no_improvement"]["kind"] == "not_improves"


def test_the_full_out_of_domain_claim_covers_both_single_models_on_every_metric():
    ood = [c for c in C.load_claims("ammonia") if c["id"].startswith("fig3a_ood_ensemble_gmm")]
    assert {c["quantity"] for c in ood} == {"spearman", "roc_auc_p20", "miscalibration_area", "cnll"}
    for c in ood:
        assert set(c["better"]) == {"ensemble", "gmm"} and set(c["worse"]) == {"mve", "evidential"}


def test_rise_larger_falls_and_not_improves():
    q = "md_mean_stable_time_fs"
    larger = _claim("fig4c_silica_ensemble_rises_most")
    obs = _obs({("ensemble", 1, q): [100, 110, 90], ("ensemble", 2, q): [900, 950, 880],
                ("gmm", 1, q): [100, 105, 95], ("gmm", 2, q): [300, 320, 290]})
    r = C.evaluate(larger, obs)
    assert r["verdict"] == "reproduced"
    assert r["comparisons"][0]["effect"] == pytest.approx(np.mean([800 - 200, 840 - 215, 790 - 195]))
    swapped = _obs({("ensemble", 1, q): [100, 105, 95], ("ensemble", 2, q): [300, 320, 290],
                    ("gmm", 1, q): [100, 110, 90], ("gmm", 2, q): [900, 950, 880]})
    assert C.evaluate(larger, swapped)["verdict"] == "contradicted"
    falls = _claim("fig4c_silica_ensemble_gmm_reversal")
    obs = _obs({("ensemble", 2, q): [900, 950, 880], ("ensemble", 3, q): [400, 420, 410],
                ("gmm", 2, q): [300, 320, 290], ("gmm", 3, q): [100, 110, 90]})
    assert C.evaluate(falls, obs)["verdict"] == "reproduced"
    flat = _claim("fig4c_silica_evidential_no_improvement")
    still = _obs({("evidential", 1, q): [100, 110, 90], ("evidential", 3, q): [95, 120, 85]})
    r = C.evaluate(flat, still)
    assert r["verdict"] == "not contradicted" and r["comparisons"][0]["verdict"] == "not contradicted"
    up = _obs({("evidential", 1, q): [100, 110, 90], ("evidential", 3, q): [500, 520, 480]})
    assert C.evaluate(flat, up)["verdict"] == "contradicted"
    # a force MAE "rises" (improves) when it falls
    mae = _claim("fig4d_silica_test_error_falls")
    obs = _obs({("ensemble", 2, "forces_mae"): [5.0, 5.2, 5.1], ("ensemble", 3, "forces_mae"): [4.0, 4.1, 4.2],
                ("gmm", 2, "forces_mae"): [6.0, 6.1, 6.2], ("gmm", 3, "forces_mae"): [5.0, 5.1, 5.0]})
    assert C.evaluate(mae, obs)["verdict"] == "reproduced"


def test_claims_table_shows_the_papers_numbers():
    r = C.evaluate(_claim("fig3d_gen1_stability_order"), _obs({}))
    rows = C.table_rows([r])
    assert "ensemble 0.5" in rows[0]["paper"] and "mve 0.25" in rows[0]["paper"]
    assert set(C.TABLE_COLUMNS) >= {"paper", "verdict", "interval_95"}


def test_fidelity_tables_name_every_departure_the_issue_lists():
    from uqpot.report.page import fidelity_tables

    tables = dict(fidelity_tables())
    departures = tables["Deliberate departures"]
    text = " ".join(" ".join(r.values()) for r in departures)
    for needle in ("PySCF", "BKS", "81/2", "log p + log U", "reduced to the structure", "σ² = aU + b",
                   "trial adversarial runs", "BIC"):
        assert needle in text, needle
    assert all(r["why"] for r in departures) and len(tables["Choices the paper leaves open"]) >= 3


def _gen1_order(ensemble, evidential, gmm, mve):
    q = "stable_md_fraction"
    return _obs({("ensemble", 1, q): ensemble, ("evidential", 1, q): evidential, ("gmm", 1, q): gmm,
                 ("mve", 1, q): mve})


def test_p_values_and_holm_across_the_studys_comparisons():
    """The Fig. 3d order over three seeds: six comparisons, the only ammonia claim with data here.  p is scipy's
    paired t-test; Holm (statsmodels) over the six turns two raw 'reproduced' (p ≈ 0.035 each) into
    'inconclusive', and the claim's Holm verdict with them."""
    from statsmodels.stats.multitest import multipletests

    vals = {"ensemble": [0.9, 0.9, 0.9], "evidential": [0.8, 0.7, 0.75], "gmm": [0.5, 0.5, 0.5],
            "mve": [0.4, 0.3, 0.35]}
    results = C.check("ammonia", _gen1_order(**vals))
    r = next(x for x in results if x["id"] == "fig3d_gen1_stability_order")
    comps = {c["comparison"]: c for c in r["comparisons"]}
    assert len(comps) == 6 and all(c["holm_family"] == 6 for c in comps.values())
    ps = []
    for c in comps.values():
        a, b = c["comparison"].split(" better than ")
        d = np.subtract(vals[a], vals[b])
        ref = stats.ttest_rel(vals[a], vals[b]).pvalue if np.ptp(d) > 1e-9 else 0.0
        assert c["p"] == pytest.approx(ref, rel=1e-9)
        assert c["paired_on"] == "seed" and c["interval"] == "t over 3 paired seeds"
        ps.append(c["p"])
    _, adjusted, _, _ = multipletests(ps, method="holm")
    assert [c["p_holm"] for c in comps.values()] == pytest.approx(list(adjusted))
    marginal = comps["ensemble better than evidential"]
    assert marginal["p"] == pytest.approx(0.0349, abs=1e-3)
    assert marginal["verdict"] == "reproduced" and marginal["verdict_holm"] == "inconclusive"
    assert comps["gmm better than mve"]["verdict_holm"] == "inconclusive"
    assert comps["evidential better than gmm"]["verdict_holm"] == "reproduced"  # p 0.013 x 3 < 0.05
    assert r["verdict"] == "reproduced" and r["verdict_holm"] == "inconclusive"


def test_detectable_effect_and_the_claims_table_columns():
    from statsmodels.stats.power import TTestPower

    vals = {"ensemble": [0.9, 0.3, 0.6], "evidential": [0.4, 0.8, 0.5], "gmm": [0.5, 0.52, 0.49],
            "mve": [0.2, 0.22, 0.19]}
    results = C.check("ammonia", _gen1_order(**vals))
    rows = C.table_rows(results)
    for col in ("effect", "interval_95", "p", "comparison_verdict", "comparison_verdict_holm", "detectable_effect",
                "paired_on"):
        assert col in C.TABLE_COLUMNS
    row = next(x for x in rows if x["comparison"] == "ensemble better than evidential")
    d = np.subtract(vals["ensemble"], vals["evidential"])
    es = TTestPower().solve_power(effect_size=None, nobs=3, alpha=0.05, power=0.8, alternative="two-sided")
    assert row["detectable_effect"] == pytest.approx(es * d.std(ddof=1))
    assert abs(row["effect"]) < row["detectable_effect"] and row["comparison_verdict"] == "inconclusive"
    assert row["paired_on"] == "seed" and row["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)


def test_one_seed_has_no_detectable_effect_and_newcombe_is_not_paired():
    claim = _claim("fig3g_stability_rises")
    q = "stable_md_fraction"
    values, counts = {}, {}
    for m in ("ensemble", "mve", "evidential", "gmm"):
        values[(m, 1, q)], values[(m, 3, q)] = [10 / 40], [38 / 40]
        counts[(m, 1)], counts[(m, 3)] = [(10, 40)], [(38, 40)]
    r = C.holm_correct([C.evaluate(claim, _obs(values, counts))])[0]
    for c in r["comparisons"]:
        assert c["paired_on"].startswith("not paired") and 0 < c["p"] < 1e-6
        assert c["verdict_holm"] == "reproduced"
    assert r["comparisons"][0]["holm_family"] == 4  # one hypothesis per method
    assert all(row["detectable_effect"] == "n/a" for row in C.table_rows([r]))


def test_a_comparison_two_claims_share_is_one_hypothesis_in_the_holm_family():
    """Ensemble against MVE on Spearman is in the full out-of-domain claim and in 'MVE worst': one test."""
    q = "spearman"
    obs = _obs({("ensemble", 1, q): [0.80, 0.70, 0.75], ("gmm", 1, q): [0.60, 0.65, 0.62],
                ("mve", 1, q): [0.30, 0.35, 0.32], ("evidential", 1, q): [0.50, 0.45, 0.52]}, last=1)
    results = C.check("ammonia", obs)
    comps = [c for r in results for c in r["comparisons"]]
    hyps = {c["hypothesis"] for c in comps}
    assert len(comps) > len(hyps)  # some comparison appears in two claims
    assert all(c["holm_family"] == len(hyps) for c in comps)
    shared = [c for c in comps if c["hypothesis"] == "spearman: ensemble gen 1 vs mve gen 1"]
    assert len(shared) >= 2 and len({c["p_holm"] for c in shared}) == 1


def test_not_contradicted_keeps_its_meaning_after_holm():
    """'Only the ensemble's barrier improves': another method's improvement can contradict, never prove."""
    claim = _claim("fig3e_neb_only_ensemble_improves")
    q = "neb_barrier_error"
    base = {("ensemble", 1, q): [2.0, 2.1, 1.9], ("ensemble", 3, q): [0.2, 0.3, 0.25],
            ("gmm", 1, q): [1.0, 1.1, 0.9], ("gmm", 3, q): [1.1, 1.2, 0.9]}
    r = C.holm_correct([C.evaluate(claim, _obs(base))])[0]
    assert [c["verdict_holm"] for c in r["comparisons"]] == ["reproduced", "not contradicted"]
    assert r["verdict_holm"] == "reproduced"
    base[("gmm", 3, q)] = [0.1, 0.2, 0.15]  # GMM improves clearly too
    r = C.holm_correct([C.evaluate(claim, _obs(base))])[0]
    assert r["comparisons"][1]["verdict_holm"] == "contradicted" and r["verdict_holm"] == "contradicted"
    flat = _claim("fig4c_silica_evidential_no_improvement")
    mq = "md_mean_stable_time_fs"
    r = C.holm_correct([C.evaluate(flat, _obs({("evidential", 1, mq): [100, 110, 90],
                                               ("evidential", 3, mq): [95, 120, 85]}))])[0]
    assert r["verdict_holm"] == "not contradicted"


def test_the_grid_pairs_on_molecule_split_and_seed():
    q = "forces_mae"
    obs = C.Observations(last_generation=1, unit="(molecule, split, seed)")
    units = ["ethanol/split1/seed0", "ethanol/split2/seed0", "ethanol/split1/seed1"]
    for m, v in (("ensemble", [0.40, 0.42, 0.41]), ("mve", [0.60, 0.61, 0.63]), ("gmm", [0.50, 0.52, 0.51])):
        obs.values[(m, 1, q)] = dict(zip(units, v))
    r = C.check("rmd17", obs)
    c = next(x for x in r if x["id"] == "fig2c_ensemble_lowest_force_mae")["comparisons"][0]
    assert c["paired_on"] == "(molecule, split, seed)"
    assert c["interval"] == "t over 3 paired units (molecule, split, seed)"


def test_the_module_says_what_each_comparison_is_paired_on():
    doc = C.__doc__
    for unit in ("**seed**", "**(molecule, split, seed)**", "**test structure**", "**trajectory start**", "*not paired*"):
        assert unit in doc


def test_one_seed_stable_fraction_is_paired_on_the_trajectory_start():
    """Two methods of one generation ran from the same 40 starts: A is stable on 30, B on 24 of those 30.
    Newcombe (unpaired) cannot tell 0.75 from 0.60; the paired per-start bootstrap sees six discordant starts,
    all one way, and resolves it.  Starts that differ (another generation's MD seed) fall back to Newcombe."""
    claim = _claim("fig3d_gen1_stability_order")  # ensemble > evidential > gmm > mve
    q = "stable_md_fraction"
    starts = [(str(k), "300.0", "7") for k in range(40)]
    a = {s: int(k < 30) for k, s in enumerate(starts)}
    b = {s: int(k < 24) for k, s in enumerate(starts)}
    outcomes = {("ensemble", 1): a, ("evidential", 1): b, ("gmm", 1): b, ("mve", 1): b}
    values = {(m, 1, q): [sum(o.values()) / 40] for (m, _), o in outcomes.items()}
    counts = {(m, 1): [(sum(o.values()), 40)] for (m, _), o in outcomes.items()}
    obs = _obs(values, counts)
    unpaired = {c["comparison"]: c for c in C.evaluate(claim, obs)["comparisons"]}
    obs.outcomes = lambda m, g, s: outcomes.get((m, g))
    paired = {c["comparison"]: c for c in C.evaluate(claim, obs)["comparisons"]}
    key = next(k for k in paired if k.startswith("ensemble") and "evidential" in k)
    assert unpaired[key]["interval"].startswith("one seed: Newcombe") and unpaired[key]["low"] < 0
    assert paired[key]["paired_on"].startswith("trajectory start")
    assert paired[key]["effect"] == pytest.approx(0.15) and paired[key]["low"] > 0
    assert paired[key]["verdict"] == "reproduced" and unpaired[key]["verdict"] == "inconclusive"
    other = {s[:2] + ("8",): v for s, v in b.items()}  # another MD seed: not the same starts
    obs.outcomes = lambda m, g, s: a if m == "ensemble" else other
    assert C.evaluate(claim, obs)["comparisons"][0]["interval"].startswith("one seed: Newcombe")
