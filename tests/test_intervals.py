"""The interval functions against the reference implementations in scipy and statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from uqpot.metrics import intervals as iv

sm_proportion = pytest.importorskip("statsmodels.stats.proportion")


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (20, 40), (39, 40), (40, 40), (7, 120), (1, 1)])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_wilson_matches_statsmodels(k, n, level):
    p, lo, hi = iv.wilson(k, n, level)
    ref_lo, ref_hi = sm_proportion.proportion_confint(k, n, alpha=1 - level, method="wilson")
    assert p == pytest.approx(k / n)
    assert lo == pytest.approx(ref_lo, abs=1e-12)
    assert hi == pytest.approx(ref_hi, abs=1e-12)


def test_wilson_half_width_of_120_trajectories_is_below_0_10():
    """The quick presets' design: 3 seeds x 40 trajectories keep every stable fraction within ±0.10."""
    worst = max((iv.wilson(k, 120)[2] - iv.wilson(k, 120)[1]) / 2 for k in range(121))
    assert worst < 0.10
    assert max((iv.wilson(k, 40)[2] - iv.wilson(k, 40)[1]) / 2 for k in range(41)) > 0.10


@pytest.mark.parametrize("k1,n1,k2,n2", [(20, 40, 10, 40), (0, 40, 3, 40), (40, 40, 35, 40), (55, 120, 80, 120)])
def test_newcombe_matches_statsmodels(k1, n1, k2, n2):
    d, lo, hi = iv.newcombe_difference(k1, n1, k2, n2)
    ref_lo, ref_hi = sm_proportion.confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff")
    assert d == pytest.approx(k1 / n1 - k2 / n2)
    assert lo == pytest.approx(ref_lo, abs=1e-10)
    assert hi == pytest.approx(ref_hi, abs=1e-10)


def test_mean_interval_is_students_t():
    x = np.array([0.81, 0.76, 0.79, 0.84, 0.72])
    m, lo, hi = iv.mean_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert m == pytest.approx(x.mean())
    assert (lo, hi) == pytest.approx(ref, abs=1e-12)
    # three seeds: t_{0.975,2} = 4.303
    m3, lo3, hi3 = iv.mean_interval([1.0, 2.0, 3.0])
    assert (hi3 - m3) == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3), rel=1e-9)


def test_mean_interval_is_cut_at_the_range_of_the_quantity():
    """Three AUCs near 1: the t-interval reaches past 1 and is cut there; the low side is untouched."""
    x = [0.99, 0.93, 0.995]
    m, lo, hi = iv.mean_interval(x)
    assert hi > 1.0
    mc, loc, hic = iv.mean_interval(x, bounds=iv.RANGES["roc_auc_p20"])
    assert (mc, loc, hic) == (m, lo, 1.0)
    _, lo_e, _ = iv.mean_interval([0.1, 2.0, 0.2], bounds=iv.RANGES["forces_mae"])
    assert lo_e == 0.0


def test_mean_interval_edge_cases():
    assert np.isnan(iv.mean_interval([])[0])
    m, lo, hi = iv.mean_interval([0.5, None, float("nan")])
    assert m == 0.5 and np.isnan(lo) and np.isnan(hi)


def test_paired_difference_matches_scipy_ttest():
    a = np.array([0.80, 0.75, 0.83])
    b = np.array([0.70, 0.72, 0.71])
    d, lo, hi = iv.paired_difference(a, b)
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    assert d == pytest.approx((a - b).mean())
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-12)
    with pytest.raises(ValueError):
        iv.paired_difference([1.0, 2.0], [1.0])


def test_bootstrap_percentile_matches_scipy_and_is_seeded():
    rng = np.random.default_rng(3)
    u = rng.normal(size=300)
    e = u + rng.normal(scale=1.5, size=300)

    def rho(x, y):
        return stats.spearmanr(x, y).statistic

    est, lo, hi = iv.bootstrap(rho, u, e, n_resamples=4000, seed=1)
    ref = stats.bootstrap((u, e), rho, paired=True, vectorized=False, n_resamples=4000, method="percentile",
                          random_state=np.random.default_rng(2)).confidence_interval
    assert est == pytest.approx(rho(u, e))
    assert lo < est < hi
    assert lo == pytest.approx(ref.low, abs=0.02)
    assert hi == pytest.approx(ref.high, abs=0.02)
    assert iv.bootstrap(rho, u, e, n_resamples=500, seed=7) == iv.bootstrap(rho, u, e, n_resamples=500, seed=7)


def test_fmt():
    assert iv.fmt((0.5, 0.4, 0.6)) == "0.500 [0.400, 0.600]"
    assert iv.fmt((0.5, float("nan"), float("nan"))) == "0.500"
    assert iv.fmt((float("nan"), 0, 0)) == "—"



def test_stable_md_interval_treats_the_seed_as_the_unit():
    """Three seeds of 40 trajectories at 0.1, 0.9 and 0.5: pooled over 120 trajectories the Wilson interval is
    0.50 [0.41, 0.59]; the seeds' own fractions span most of [0, 1].  The reported interval is the t-interval
    over the three seed fractions (scipy's), cut at [0, 1]."""
    counts = [(4, 40), (36, 40), (20, 40)]
    (p, lo, hi), how = iv.seed_proportion(counts)
    fr = np.array([0.1, 0.9, 0.5])
    ref = stats.t.interval(0.95, 2, loc=fr.mean(), scale=stats.sem(fr))
    assert p == pytest.approx(0.5) and how == "t over 3 seeds"
    assert (lo, hi) == pytest.approx((max(0.0, ref[0]), min(1.0, ref[1])))
    _, wlo, whi = iv.wilson(60, 120)
    assert (hi - lo) > 5 * (whi - wlo)  # the pooled interval is far too narrow


def test_stable_md_interval_of_one_seed_is_the_labelled_within_seed_wilson():
    (p, lo, hi), how = iv.seed_proportion([(30, 40)])
    assert (p, lo, hi) == iv.wilson(30, 40) and how.startswith("within-seed Wilson")


def test_seed_level_interval_is_never_narrower_than_the_pooled_wilson():
    """Seeds that happen to agree (all 40/40) give a zero-width t-interval; it is widened to the Wilson interval
    of all trajectories, and the label says so."""
    (p, lo, hi), how = iv.seed_proportion([(40, 40)] * 3)
    assert p == 1.0 and (lo, hi) == pytest.approx(iv.wilson(120, 120)[1:]) and lo < 0.98
    assert how == "t over 3 seeds, widened to the pooled Wilson"


def test_the_reported_stable_md_interval_of_a_study_is_the_seed_level_one():
    """The summary table (and the stability figure, which reads its columns) of a study with the seeds of the
    case above: the default columns hold the seed-level interval; the pooled one only under its own name."""
    from uqpot.report.loop import _interval_bars, stable_md_columns, summary_rows

    recs = [{"seed": s, "generation": 1, "method": "mve", "n_train": 62, "md_stable": k, "md_runs": 40,
             "stable_md_fraction": k / 40} for s, k in enumerate((4, 36, 20))]
    row = summary_rows(recs)[0]
    (p, lo, hi), how = iv.seed_proportion([(4, 40), (36, 40), (20, 40)])
    assert (row["stable_md_fraction"], row["stable_md_fraction_lo"], row["stable_md_fraction_hi"]) == (p, lo, hi)
    assert row["stable_md_interval"] == how == "t over 3 seeds" and row["stable_md_runs"] == 120
    assert (row["stable_md_fraction_pooled_wilson_lo"], row["stable_md_fraction_pooled_wilson_hi"]) == \
        iv.wilson(60, 120)[1:]
    assert row["stable_md_fraction_hi"] - row["stable_md_fraction_lo"] > 0.9
    assert _interval_bars([row], "stable_md_fraction") == {"gen 1": {"mve": (p, lo, hi)}}
    assert stable_md_columns([(4, 40), (36, 40), (20, 40)])["stable_md_fraction_lo"] == lo  # the samplers' table
    one = summary_rows(recs[:1])[0]
    assert one["stable_md_interval"].startswith("within-seed Wilson") and "stable_md_fraction_pooled_wilson_lo" not in one


def test_bootstrap_leaves_out_resamples_where_the_statistic_is_undefined():
    """Four test structures: some resamples repeat one structure, on which Spearman's ρ is undefined (our
    spearman raises ValueError); they are left out instead of stopping the report."""
    from uqpot.metrics.ranking import spearman

    u, e = np.array([0.1, 0.4, 0.2, 0.9]), np.array([1.0, 3.0, 2.5, 4.0])
    est, vals = iv.bootstrap_distribution(spearman, u, e, n_resamples=2000, seed=0)
    assert est == pytest.approx(stats.spearmanr(u, e).statistic)
    assert 0 < vals.size < 2000 and np.all(np.isfinite(vals))  # a resample of one repeated structure has no ρ
    lo_hi = iv.bootstrap(spearman, u, e, n_resamples=2000)
    assert lo_hi[1] <= est <= lo_hi[2]


@pytest.mark.parametrize("name", ["spearman", "roc_auc_p20", "roc_auc_p50"])
def test_batched_ranking_metrics_equal_the_metric_row_by_row(name):
    """The batched form a bootstrap uses gives each resample's value bit for bit, nan where the metric raises:
    ties (errors and U on a coarse grid), rows with one repeated structure (constant U and ε), small and
    larger sets."""
    from uqpot.metrics.registry import MetricInputs, get_metric

    m = get_metric(name)
    rng = np.random.default_rng(11)
    for n in (4, 7, 200):
        u = np.round(rng.gamma(2.0, size=n), 1)
        e = np.round(u * rng.gamma(3.0, size=n), 0)
        idx = rng.integers(0, n, size=(500, n))
        idx[:3] = rng.integers(0, n)  # whole rows of one structure: undefined
        got = m.batched(u[idx], e[idx])
        want = np.array([iv._defined(lambda a, b: m.function(MetricInputs(a, b, None)), u[i], e[i]) for i in idx])
        assert np.isnan(got[:3]).all()
        np.testing.assert_array_equal(got, want)  # nan where nan, every other value identical
        est, vals = iv.bootstrap_distribution(lambda a, b: m.function(MetricInputs(a, b, None)), u, e,
                                              n_resamples=300, seed=n)
        est_b, vals_b = iv.bootstrap_distribution(lambda a, b: m.function(MetricInputs(a, b, None)), u, e,
                                                  n_resamples=300, seed=n, batched=m.batched)
        assert est == est_b and vals.size > 0
        np.testing.assert_array_equal(vals, vals_b)


def test_batched_bootstrap_chunks_its_resamples(monkeypatch):
    """Past :data:`iv.BATCH_VALUES` the resamples go in chunks of rows; the values are the same."""
    from uqpot.metrics.ranking import spearman, spearman_rows

    rng = np.random.default_rng(5)
    u, e = rng.normal(size=50), rng.normal(size=50)
    whole = iv.bootstrap_distribution(spearman, u, e, n_resamples=250, seed=3, batched=spearman_rows)
    monkeypatch.setattr(iv, "BATCH_VALUES", 50 * 7)  # seven rows a chunk, the last one shorter
    chunked = iv.bootstrap_distribution(spearman, u, e, n_resamples=250, seed=3, batched=spearman_rows)
    assert whole[1].size == 250
    np.testing.assert_array_equal(whole[1], chunked[1])
    with pytest.raises(ValueError):
        spearman_rows(u, e)  # one resample is not a batch
