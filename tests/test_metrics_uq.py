"""UQ metrics (uqpot.metrics.uq): hand-computed cases, reference implementations, synthetic Gaussian data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from uqpot.metrics import uq


# ------------------------------------------------------------------ synthetic data


@pytest.fixture(scope="module")
def synthetic():
    """U log-uniform over four decades, true σ² = 2·U + 0.05, 30 components per structure."""
    rng = np.random.default_rng(12345)
    out = {}
    for name, n in (("val", 2000), ("test", 2000)):
        u = 10 ** rng.uniform(-3, 1, n)
        var = 2.0 * u + 0.05
        res = rng.normal(size=(n, 10, 3)) * np.sqrt(var)[:, None, None]
        out[name] = (u, var, res)
    return out


# ------------------------------------------------------------------ Spearman (Eq. 12)


def test_spearman_hand_computed():
    # ranks differ by d = (0, 1, 1, 0): ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 12/60
    assert uq.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8, abs=1e-12)
    # ties get average ranks: R_U = (1.5, 1.5, 3, 4), R_ε = (1, 2, 3, 4) → ρ = 4.5/√(4.5·5) = 3/√10
    assert uq.spearman([1, 1, 2, 3], [10, 20, 30, 40]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)


def test_spearman_perfect_and_inverted_ranking_and_scipy():
    rng = np.random.default_rng(0)
    err = rng.lognormal(size=200)
    assert uq.spearman(np.log(err) * 3 + 7, err) == pytest.approx(1.0, abs=1e-12)
    assert uq.spearman(-err, err) == pytest.approx(-1.0, abs=1e-12)
    u = np.round(err + rng.normal(size=200), 1)  # with ties
    assert uq.spearman(u, err) == pytest.approx(stats.spearmanr(u, err).statistic, abs=1e-12)


def test_spearman_rejects_constant_and_mismatched_input():
    with pytest.raises(ValueError, match="constant"):
        uq.spearman([1, 1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="differ in length"):
        uq.spearman([1, 2, 3], [1, 2])


# ------------------------------------------------------------------ ROC-AUC


def test_roc_auc_hand_computed():
    err = [1.0, 2.0, 3.0, 4.0, 5.0]
    u = [0.2, 0.1, 0.9, 0.7, 0.3]
    # p20: ε_c = 1.8 → negatives {ε=1 (U .2)}; positives U {.1, .9, .7, .3}: 3 of 4 pairs ordered
    assert uq.roc_auc(u, err, 20) == pytest.approx(0.75)
    # p50: ε_c = 3 → positives U {.7, .3}, negatives U {.2, .1, .9}: 4 of 6 pairs ordered
    assert uq.roc_auc(u, err, 50) == pytest.approx(4 / 6)
    # a tie between a positive and a negative score counts 1/2
    # p50: ε_c = 2 → positive U {.5}, negatives U {.5, .9}: (½ + 0)/2
    assert uq.roc_auc([0.5, 0.9, 0.5], [1.0, 2.0, 3.0], 50) == pytest.approx(0.25)
    assert uq.roc_auc([0.5, 0.5, 0.5, 0.9], [1.0, 2.0, 3.0, 4.0], 20) == pytest.approx((0.5 + 0.5 + 1) / 3)


def test_roc_auc_perfect_ranking_and_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    err = rng.lognormal(size=300)
    assert uq.roc_auc(np.sqrt(err), err, 20) == pytest.approx(1.0)
    assert uq.roc_auc(-err, err, 50) == pytest.approx(0.0)
    u = np.round(err + rng.normal(scale=2.0, size=300), 1)
    for q in (20, 50):
        labels = err > np.percentile(err, q)
        assert uq.roc_auc(u, err, q) == pytest.approx(roc_auc_score(labels, u), abs=1e-12)
        fpr, tpr, _ = uq.roc_curve(u, err, q)
        assert np.all(np.diff(fpr) >= 0) and fpr[-1] == 1.0 and tpr[-1] == 1.0
        trapezoid = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
        assert trapezoid == pytest.approx(uq.roc_auc(u, err, q), abs=1e-12)
    assert labels.sum() == 150  # 50th percentile splits evenly


def test_roc_auc_degenerate_class_raises():
    with pytest.raises(ValueError, match="both classes"):
        uq.roc_auc([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="both classes"):
        uq.roc_curve([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])


# ------------------------------------------------------------------ Gaussian NLL


def test_gaussian_nll_hand_computed_and_broadcasting():
    # r = (0, 1), σ² = (1, 4): mean of ½log 2π and ½log 8π + 1/8
    expected = 0.5 * (0.5 * math.log(2 * math.pi) + 0.5 * math.log(8 * math.pi) + 1 / 8)
    assert uq.gaussian_nll([0.0, 1.0], [1.0, 4.0]) == pytest.approx(expected, abs=1e-12)
    # a per-structure variance is repeated over that structure's components
    res = [np.array([[0.0, 1.0, -1.0]]), np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])]
    flat_var = np.array([1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0])
    assert uq.gaussian_nll(res, [1.0, 4.0]) == pytest.approx(uq.gaussian_nll(uq.flatten_residuals(res), flat_var))
    with pytest.raises(ValueError, match="positive"):
        uq.gaussian_nll([0.0, 1.0], [1.0, 0.0])


def test_gaussian_nll_minimised_by_the_mean_square():
    r = np.array([0.3, -1.2, 2.0, 0.1])
    ms = float(np.mean(r * r))
    best = uq.gaussian_nll(r, ms)
    assert best == pytest.approx(0.5 * math.log(2 * math.pi * ms) + 0.5)
    assert uq.gaussian_nll(r, 1.1 * ms) > best and uq.gaussian_nll(r, 0.9 * ms) > best


# ------------------------------------------------------------------ calibration fit (Eq. 13)


def test_fit_calibration_recovers_a_b(synthetic):
    u, _, res = synthetic["val"]
    a, b = uq.fit_calibration(u, res)
    assert a == pytest.approx(2.0, rel=0.03)
    assert b == pytest.approx(0.05, rel=0.05)
    # the same data as a list of per-structure arrays
    assert uq.fit_calibration(u, list(res)) == pytest.approx((a, b), rel=1e-9)


def test_fit_calibration_is_invariant_to_the_scale_of_u(synthetic):
    u, _, res = synthetic["val"]
    a, b = uq.fit_calibration(u, res)
    for scale in (1e-8, 1e8):
        a_s, b_s = uq.fit_calibration(u * scale, res)
        assert a_s * scale == pytest.approx(a, rel=1e-6)
        assert b_s == pytest.approx(b, rel=1e-6)


def test_fit_calibration_negative_u_like_a_gmm_nll(synthetic):
    """U = 3·u − 100 is negative; σ² = 2u + 0.05 = (2/3)·U + (200/3 + 0.05)."""
    u, _, res = synthetic["val"]
    U = 3.0 * u - 100.0
    assert U.max() < 0
    a, b = uq.fit_calibration(U, res)
    assert a == pytest.approx(2.0 / 3.0, rel=0.03)
    assert b == pytest.approx(200.0 / 3.0 + 0.05, rel=0.03)
    var = a * U + b
    assert var.min() > 0
    assert var.min() == pytest.approx(2.0 * u.min() + 0.05, rel=0.1)
    # test structures below the validation range: the line would go negative, the floor keeps it positive
    u_low = np.array([U.min() - 1000.0, U.min()])
    with pytest.raises(ValueError, match="not positive"):
        uq.calibrated_variance(u_low, a, b)
    floor = a * U.min() + b
    np.testing.assert_allclose(uq.calibrated_variance(u_low, a, b, floor=floor), [floor, floor])


def test_fit_calibration_constant_u_gives_the_mean_square():
    rng = np.random.default_rng(3)
    res = rng.normal(scale=0.7, size=(50, 6))
    a, b = uq.fit_calibration(np.full(50, 4.0), res)
    assert a * 4.0 + b == pytest.approx(np.mean(res**2), rel=1e-6)


# ------------------------------------------------------------------ cNLL (Eq. 14)


def test_cnll_not_below_the_true_variance_oracle(synthetic):
    u_val, _, res_val = synthetic["val"]
    u_test, var_test, res_test = synthetic["test"]
    oracle = uq.gaussian_nll(res_test, var_test)
    cnll = uq.calibrated_nll(u_val, res_val, u_test, res_test)
    # a proper scoring rule: no variance model beats the truth (up to sampling noise, ~1e-3 here)
    assert cnll >= oracle - 2e-3
    # a well-specified calibration is close to the oracle ...
    assert cnll - oracle < 0.01
    # ... and an uninformative uncertainty is clearly worse
    rng = np.random.default_rng(7)
    shuffled = uq.calibrated_nll(rng.permutation(u_val), res_val, rng.permutation(u_test), res_test)
    assert shuffled > oracle + 0.1


# ------------------------------------------------------------------ calibration curve and area


def test_calibration_curve_and_area_hand_computed():
    # |r|/σ = (0.5, 1.5, 3); bins p = (0, .5, 1) → bounds (0, 0.674, ∞) → observed (0, 1/3, 1)
    expected, observed = uq.calibration_curve([0.5, -1.5, 3.0], 1.0, n_bins=3)
    np.testing.assert_allclose(expected, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(observed, [0.0, 1 / 3, 1.0])
    # two triangles of base 1/2 and height 1/6
    assert uq.miscalibration_area([0.5, -1.5, 3.0], 1.0, n_bins=3) == pytest.approx(1 / 12)
    # per-structure σ for a list of residual arrays
    res = [np.array([[1.0, -2.0, 6.0]]), np.array([0.5])]
    _, obs = uq.calibration_curve(res, [2.0, 0.5], n_bins=3)  # |r|/σ = (.5, 1, 3, 1)
    np.testing.assert_allclose(obs, [0.0, 0.25, 1.0])


def test_area_counts_both_triangles_where_the_curve_crosses():
    # gap +0.5 then −0.5: a signed trapezoid would give 0, the area is two triangles of 1/8
    assert uq.miscalibration_area_from_curve([0.0, 1.0], [0.5, 0.5]) == pytest.approx(0.25)
    assert uq.miscalibration_area_from_curve([0.0, 0.5, 1.0], [0.0, 0.75, 1.0]) == pytest.approx(0.125)
    assert uq.miscalibration_area_from_curve([0.0, 0.5, 1.0], [0.0, 0.5, 1.0]) == 0.0


# Deterministic, crossing-rich data (Cauchy-like residuals, varying σ).  The reference value was computed
# once with uncertainty-toolbox 0.1.1:
#   uncertainty_toolbox.metrics_calibration.miscalibration_area(r, s, np.zeros(500), num_bins=100)
# (vectorized=False and True agree) → 0.0874331246678324.
def _deterministic_case():
    k = np.arange(500)
    r = np.tan(np.pi * (((k * 0.6180339887498949) % 1.0) - 0.5)) * 0.8
    s = 1.0 + 0.5 * np.sin(k)
    return r, s


def test_miscalibration_area_stored_uncertainty_toolbox_reference():
    r, s = _deterministic_case()
    expected, observed = uq.calibration_curve(r, s)
    gap = observed - expected
    assert np.any(gap[:-1] * gap[1:] < 0)  # the curve crosses the diagonal: the hourglass rule matters
    assert uq.miscalibration_area(r, s) == pytest.approx(0.0874331246678324, abs=1e-9)


def test_miscalibration_area_matches_uncertainty_toolbox_on_random_data():
    ut = pytest.importorskip("uncertainty_toolbox.metrics_calibration")
    rng = np.random.default_rng(11)
    for _ in range(4):
        n = int(rng.integers(5, 2000))
        r = rng.standard_t(3, size=n) * rng.uniform(0.2, 2.0)
        s = rng.uniform(0.3, 3.0, size=n)
        for bins in (100, 17):
            ours = uq.miscalibration_area(r, s, n_bins=bins)
            for vec in (False, True):
                ref = ut.miscalibration_area(r, s, np.zeros(n), num_bins=bins, vectorized=vec)
                assert ours == pytest.approx(ref, abs=1e-6)


def test_miscalibration_area_well_specified_vs_badly_scaled(synthetic):
    u, var, res = synthetic["test"]
    sigma = np.sqrt(var)  # one σ per structure, repeated over its 30 components
    good = uq.miscalibration_area(res, sigma)
    assert good < 0.02
    assert uq.miscalibration_area(res, 3.0 * sigma) > 0.2
    assert uq.miscalibration_area(res, sigma / 3.0) > 0.2


# ------------------------------------------------------------------ all metrics at once


def test_uq_metrics_with_and_without_validation(synthetic):
    u_val, _, res_val = synthetic["val"]
    u_test, var_test, res_test = synthetic["test"]
    err = np.mean(res_test**2, axis=(1, 2))
    m = uq.uq_metrics(u_test, err, res_test, u_val, res_val)
    assert m["calibration_fitted_on"] == "validation" and m["notes"] == []
    assert m["spearman"] == pytest.approx(uq.spearman(u_test, err))
    assert m["roc_auc_p20"] == pytest.approx(uq.roc_auc(u_test, err, 20))
    assert m["roc_auc_p50"] == pytest.approx(uq.roc_auc(u_test, err, 50))
    assert m["cnll"] == pytest.approx(uq.calibrated_nll(u_val, res_val, u_test, res_test))
    assert m["miscalibration_area"] < 0.02
    assert m["spearman"] > 0.8 and m["roc_auc_p20"] > 0.9
    assert m["n_structures"] == 2000 and m["n_components"] == 60000

    m_test = uq.uq_metrics(u_test, None, res_test)  # ε computed from the residuals
    assert m_test["calibration_fitted_on"] == "test" and any("test data" in n for n in m_test["notes"])
    assert m_test["spearman"] == pytest.approx(m["spearman"])
    assert m_test["cnll"] <= m["cnll"] + 1e-9  # fitted on the scored data: optimistic


def test_uq_metrics_constant_uncertainty_reports_nan_with_a_note():
    rng = np.random.default_rng(5)
    res = rng.normal(size=(40, 3))
    m = uq.uq_metrics(np.ones(40), None, res)
    assert math.isnan(m["spearman"]) and any("spearman" in n for n in m["notes"])
    assert m["roc_auc_p20"] == pytest.approx(0.5)
    assert m["cnll"] == pytest.approx(uq.gaussian_nll(res, np.mean(res**2)), abs=1e-9)
