"""p-values, Holm's correction and the detectable effect against scipy and statsmodels, and each p-value
against the interval it goes with."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from uqpot.metrics import intervals as iv
from uqpot.metrics import significance as sig

sm_proportion = pytest.importorskip("statsmodels.stats.proportion")


def test_paired_t_p_is_scipys_paired_t_test_and_agrees_with_the_interval():
    rng = np.random.default_rng(0)
    for n in (2, 3, 6):
        a, b = rng.normal(size=n), rng.normal(size=n) + 0.5
        p = sig.paired_t_p(a - b)
        assert p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
        _, lo, hi = iv.paired_difference(a, b)
        assert (p < 0.05) == (lo > 0 or hi < 0)
    assert np.isnan(sig.paired_t_p([0.3])) and np.isnan(sig.paired_t_p([0.0, 0.0, 0.0]))
    assert sig.paired_t_p([0.2, 0.2, 0.2]) == 0.0


@pytest.mark.parametrize("n", [2, 3, 6, 10])
def test_detectable_effect_has_80_percent_power(n):
    """At the detectable effect δ, the noncentral t (scipy) gives the paired two-sided test 80% power."""
    d = np.random.default_rng(n).normal(0.1, 0.3, size=n)
    delta = sig.detectable_effect(d)
    sd = d.std(ddof=1)
    tcrit = stats.t.ppf(0.975, n - 1)
    nc = delta / sd * np.sqrt(n)
    power = stats.nct.sf(tcrit, n - 1, nc) + stats.nct.cdf(-tcrit, n - 1, nc)
    assert power == pytest.approx(0.8, abs=1e-4)
    assert np.isnan(sig.detectable_effect([0.1]))


def test_more_seeds_detect_smaller_effects():
    """At the same spread of the differences, 3 seeds detect about 2.3x the effect 6 seeds do (t_{0.975,2})."""
    base = np.array([-1.0, 0.0, 1.0])  # standard deviation 1
    six = np.repeat(base, 2) / np.repeat(base, 2).std(ddof=1)
    assert six.std(ddof=1) == pytest.approx(1.0)
    assert sig.detectable_effect(base) / sig.detectable_effect(six) > 2.0


@pytest.mark.parametrize("k1,n1,k2,n2", [(20, 40, 10, 40), (36, 40, 30, 40), (5, 40, 3, 40), (40, 40, 35, 40),
                                          (0, 40, 6, 40)])
def test_newcombe_p_inverts_newcombes_interval(k1, n1, k2, n2):
    """At level 1 − p the statsmodels Newcombe interval touches 0; p < 0.05 exactly when the 95% one excludes 0."""
    p = sig.newcombe_p(k1, n1, k2, n2)
    lo, hi = sm_proportion.confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff", alpha=p)
    assert min(abs(lo), abs(hi)) == pytest.approx(0.0, abs=1e-8)
    _, lo95, hi95 = iv.newcombe_difference(k1, n1, k2, n2)
    assert (p < 0.05) == (lo95 > 0 or hi95 < 0)
    assert sig.newcombe_p(10, 40, 10, 40) == 1.0


def test_bootstrap_p_goes_with_the_percentile_interval():
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.1, 0.3):
        x = rng.normal(shift, 1.0, size=200)
        est, vals = iv.bootstrap_distribution(np.mean, x, n_resamples=2000, seed=3)
        _, lo, hi = iv.percentile_interval(est, vals, n_resamples=2000)
        p = sig.bootstrap_p(vals, n_resamples=2000)
        assert (p < 0.05) == (lo > 0 or hi < 0)
        assert p == pytest.approx(stats.ttest_1samp(x, 0).pvalue, abs=0.03)  # a mean: close to the t-test's


def test_holm_is_statsmodels():
    rej, adj = sig.holm([0.01, 0.04, 0.03, 0.5])
    assert rej == [True, False, False, False] and adj == pytest.approx([0.04, 0.09, 0.09, 0.5])
    with pytest.raises(ValueError):
        sig.holm([0.01, float("nan")])


def test_units_needed_inverts_the_detectable_effect():
    """The seeds the paired t-test needs for the observed effect: at that many, the detectable effect is at
    most the observed one, and at one fewer it is larger; no effect needs infinitely many."""
    rng = np.random.default_rng(3)
    d = 0.1 + 0.2 * rng.standard_normal(6)
    n = sig.units_needed(d)
    assert 6 < n < 1000
    sd = d.std(ddof=1)
    for k, ok in ((int(n), True), (int(n) - 1, False)):
        z = (d - d.mean()) / sd  # k differences with d's mean and standard deviation
        z = np.resize(z, k)
        z = (z - z.mean()) / z.std(ddof=1) * sd + d.mean()
        assert (sig.detectable_effect(z) <= abs(d.mean())) == ok
    assert sig.units_needed([0.1, -0.1, 0.2, -0.2]) == float("inf")
    # large standardised effects: statsmodels' power is nan (for 1) at large n, which once sent the bisection
    # astray (773 seeds for an effect of 1.1 SD); the count falls as the effect grows
    needed = [sig.units_needed(np.array([-1.0, 1.0]) / np.sqrt(2) + es) for es in (0.5, 0.8, 1.1, 2.0, 4.0)]
    assert needed == sorted(needed, reverse=True) and 8 <= needed[2] <= 10 and needed[-1] <= 3
    assert np.isnan(sig.units_needed([0.3]))
