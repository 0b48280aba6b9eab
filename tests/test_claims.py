"""The claims checker on hand-made observations: effects, intervals and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from uqpot import claims as C


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
        assert c["kind"] in ("order", "best", "better_than", "rises", "only_improves") and c["source"]


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
    r = C.evaluate(_claim("ood_ranking_ensemble_gmm_over_mve"), _obs({("ensemble", 1, "spearman"): [0.8]}))
    assert r["verdict"] == "not measured" and r["comparisons"] == []
    rows = C.table_rows([r])
    assert rows[0]["verdict"] == "not measured"
