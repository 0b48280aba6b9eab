"""Confidence intervals for the numbers a study reports (every figure carries its own uncertainty).

Small pure functions of arrays; each returns ``(estimate, low, high)`` for a two-sided interval of level
``level`` (default 95%), with ``nan`` bounds where the data cannot give one (a single seed for a t-interval).

* :func:`mean_interval`: the mean over replicates (seeds) with Student's t-interval,
  x̄ ± t_{1-α/2, n-1}·s/√n (s with 1/(n-1)).  What the tables use for metrics and errors over seeds.
* :func:`paired_difference`: the mean of paired differences a_s − b_s (same seed, same data) with the same
  t-interval; the effect of a claim on metrics (paired by seed).
* :func:`wilson`: the Wilson score interval of a binomial proportion k/n (what ``statsmodels``'
  ``proportion_confint(method="wilson")`` gives); the stable-MD fraction over trajectories.
* :func:`newcombe_difference`: Newcombe's hybrid score interval (his method 10) for the difference of two
  independent proportions k1/n1 − k2/n2, built from the two Wilson intervals (``statsmodels``'
  ``confint_proportions_2indep(method="newcomb")``).
* :func:`bootstrap`: the percentile bootstrap of a statistic of paired samples (resampled together), with a
  seeded generator so that a report is reproducible; Spearman and ROC-AUC over test structures.

* :func:`seed_proportion`: a stable-MD fraction of a study with the **seed as the unit** (what every table
  and figure of a study reports): the mean of the seeds' fractions p̄ = (1/S)·Σ_s k_s/n_s with the
  t-interval over the S seed fractions, p̄ ± t_{1-α/2, S-1}·sd(p_s)/√S, cut at [0, 1] and never narrower than
  the Wilson interval of all Σk_s of Σn_s trajectories; one seed: that seed's Wilson interval, labelled
  *within-seed*.

Why the seed is the unit: the n_s trajectories of a seed share one trained model, so they are not
independent draws: the model's own quality (its training's seed, its data) moves all of them together.
Pooling them into one Wilson interval of Σn_s trajectories counts every trajectory as a unit and is far too
narrow (three seeds at 0.1, 0.9 and 0.5 of 40 trajectories: pooled Wilson 0.50 [0.41, 0.59], seed-level
0.50 [0.00, 1.00]).  Why the t-interval over seed fractions and not a cluster bootstrap over seeds: with
the 3-10 seeds a study runs, the bootstrap's percentile interval is too narrow (its variance carries the
factor (S−1)/S, its quantiles are normal rather than t_{S−1}, and three seeds have 10 distinct resamples
only); the t-interval is exact for normal seed means and is what the claims' paired comparisons use, so
the summary and the claims agree.  Not a random-effects binomial: statsmodels' binomial mixed GLM is
variational Bayes (no frequentist interval) and its variance component is unstable at three clusters.
The floor at the pooled Wilson interval: the variance of a seed fraction is the between-seed variance
plus the binomial p(1−p)/n_s, so no honest interval is narrower than the one with no between-seed
variance; a sample of seeds whose fractions happen to agree (all 40/40) would otherwise give a zero-width
t-interval.  Widening only ever raises the coverage.

A t-interval knows nothing of the range of the quantity: with few seeds it can reach past it (an AUC above
1, a negative error).  ``mean_interval(values, bounds=RANGES[key])`` cuts it at the range, which keeps its
coverage (the true value lies in the range); :data:`RANGES` lists the reported metrics' ranges.

Intervals from a few seeds are wide by design (t_{0.975, 2} = 4.30 for three seeds): they say how much a
ranking of methods can be trusted at that number of replicates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from .registry import METRICS

Interval = tuple[float, float, float]
NAN = float("nan")


class _Ranges(Mapping):
    """Metric name -> (low, high), read from the metric registry (:mod:`uqpot.metrics.registry`)."""

    def __getitem__(self, name: str) -> tuple[float | None, float | None]:
        return METRICS[name].bounds

    def __iter__(self):
        return iter(list(METRICS))

    def __len__(self) -> int:
        return len(METRICS)


#: the range of each reported quantity (None: unbounded on that side), where intervals are cut: every
#: registered metric's ``bounds``
RANGES: Mapping[str, tuple[float | None, float | None]] = _Ranges()


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(stats.norm.ppf(0.5 + level / 2))


def mean_interval(values: Sequence[float], level: float = 0.95,
                  bounds: tuple[float | None, float | None] = (None, None)) -> Interval:
    """Mean of the finite ``values`` and its t-interval, cut at ``bounds`` (the quantity's range, see
    :data:`RANGES`); bounds are nan for fewer than two values."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return NAN, NAN, NAN
    m = float(x.mean())
    if x.size < 2:
        return m, NAN, NAN
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    lo, hi = bounds
    return m, m - half if lo is None else max(lo, m - half), m + half if hi is None else min(hi, m + half)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of a_i − b_i over pairs where both are finite, with its t-interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples of different lengths: {a.shape} and {b.shape}")
    d = a - b
    return mean_interval(d[np.isfinite(d)], level)


def wilson(k: int, n: int, level: float = 0.95) -> Interval:
    """k successes of n trials: (k/n, low, high) of the Wilson score interval."""
    if n <= 0:
        return NAN, NAN, NAN
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = _z(level)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, level: float = 0.95) -> Interval:
    """k1/n1 − k2/n2 with Newcombe's hybrid score interval (independent samples)."""
    if n1 <= 0 or n2 <= 0:
        return NAN, NAN, NAN
    p1, l1, u1 = wilson(k1, n1, level)
    p2, l2, u2 = wilson(k2, n2, level)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def seed_proportion(counts: Sequence[tuple[int, int]], level: float = 0.95) -> tuple[Interval, str]:
    """A stable-MD fraction with the seed as the unit (see the module docstring): ``counts`` holds one
    (stable, runs) pair per seed.  Returns ((estimate, low, high), label), the label saying which interval it
    is: ``"t over S seeds"`` (``", widened to the pooled Wilson"`` where that was wider), or ``"within-seed
    Wilson (one seed)"``."""
    cs = [(int(k), int(n)) for k, n in counts if int(n) > 0]
    if not cs:
        return (NAN, NAN, NAN), "no trajectories"
    if len(cs) == 1:
        return wilson(*cs[0], level), f"within-seed Wilson (one seed, {cs[0][1]} trajectories)"
    m, lo, hi = mean_interval([k / n for k, n in cs], level, bounds=(0.0, 1.0))
    _, wlo, whi = wilson(sum(k for k, _ in cs), sum(n for _, n in cs), level)
    label = f"t over {len(cs)} seeds"
    if wlo < lo or whi > hi:
        lo, hi = min(lo, wlo), max(hi, whi)
        label += ", widened to the pooled Wilson"
    return (m, lo, hi), label


#: resampled values held at once by a batched bootstrap (rows x samples), to bound its memory
BATCH_VALUES = 2_000_000


def bootstrap_distribution(statistic: Callable[..., float], *samples: Sequence, n_resamples: int = 1000,
                           seed: int = 0, batched: Callable[..., np.ndarray] | None = None
                           ) -> tuple[float, np.ndarray]:
    """``statistic(*samples)`` and its finite values on ``n_resamples`` resamples: the samples (equal lengths)
    are resampled together, with replacement, by a generator seeded with ``seed``.  Resamples on which the
    statistic is not finite or undefined (it raises ValueError: e.g. Spearman of a resample whose values are all
    one structure's) are left out; none for fewer than two.

    ``batched``, where given, is the statistic on many resamples at once (each sample as an array of shape
    (rows, n); nan where undefined) and must equal ``statistic`` row by row: the same resamples, the same values,
    in a few array calls instead of ``n_resamples`` Python calls (:attr:`uqpot.metrics.registry.Metric.batched`)."""
    arrays = [np.asarray(s) for s in samples]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap: samples of different lengths")
    if n == 0:
        return NAN, np.empty(0)
    est = float(statistic(*arrays))
    if n < 2:
        return est, np.empty(0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    if batched is None:
        vals = np.array([_defined(statistic, *(a[i] for a in arrays)) for i in idx], dtype=float)
    else:
        rows = max(1, BATCH_VALUES // n)
        vals = np.concatenate([np.asarray(batched(*(a[idx[i:i + rows]] for a in arrays)), dtype=float)
                               for i in range(0, n_resamples, rows)])
    return est, vals[np.isfinite(vals)]


def _defined(statistic: Callable[..., float], *arrays) -> float:
    """``statistic(*arrays)``, or nan where it is undefined on them (ValueError)."""
    try:
        return float(statistic(*arrays))
    except ValueError:
        return NAN


def percentile_interval(est: float, values: np.ndarray, level: float = 0.95, n_resamples: int = 1000) -> Interval:
    """The percentile interval of bootstrap ``values`` around ``est``: their (1−level)/2 and (1+level)/2
    quantiles; nan bounds where fewer than max(10, n_resamples/10) resamples were finite."""
    if values.size < max(10, n_resamples // 10):
        return est, NAN, NAN
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return est, float(lo), float(hi)


def bootstrap(statistic: Callable[..., float], *samples: Sequence, n_resamples: int = 1000,
              level: float = 0.95, seed: int = 0, batched: Callable[..., np.ndarray] | None = None) -> Interval:
    """``statistic(*samples)`` and its percentile-bootstrap interval (:func:`bootstrap_distribution`,
    :func:`percentile_interval`)."""
    est, vals = bootstrap_distribution(statistic, *samples, n_resamples=n_resamples, seed=seed, batched=batched)
    return percentile_interval(est, vals, level, n_resamples)


def fmt(iv: Interval, digits: int = 3) -> str:
    """``0.812 [0.770, 0.851]``, or the estimate alone where there is no interval."""
    est, lo, hi = iv
    if est is None or not np.isfinite(est):
        return "—"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{est:.{digits}f}"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
