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

A t-interval knows nothing of the range of the quantity: with few seeds it can reach past it (an AUC above
1, a negative error).  ``mean_interval(values, bounds=RANGES[key])`` cuts it at the range, which keeps its
coverage (the true value lies in the range); :data:`RANGES` lists the reported metrics' ranges.

Intervals from a few seeds are wide by design (t_{0.975, 2} = 4.30 for three seeds): they say how much a
ranking of methods can be trusted at that number of replicates.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats

Interval = tuple[float, float, float]
NAN = float("nan")

#: the range of each reported quantity (None: unbounded on that side), where intervals are cut
RANGES: dict[str, tuple[float | None, float | None]] = {
    "forces_mae": (0.0, None), "energy_mae": (0.0, None), "stress_mae": (0.0, None), "forces_rmse": (0.0, None), "energy_rmse": (0.0, None),
    "spearman": (-1.0, 1.0), "roc_auc_p20": (0.0, 1.0), "roc_auc_p50": (0.0, 1.0),
    "miscalibration_area": (0.0, 0.5), "samples_added": (0.0, None), "neb_barrier_error": (0.0, None),
    "md_mean_stable_time_fs": (0.0, None), "stable_md_fraction": (0.0, 1.0),
}


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


def bootstrap(statistic: Callable[..., float], *samples: Sequence, n_resamples: int = 1000,
              level: float = 0.95, seed: int = 0) -> Interval:
    """``statistic(*samples)`` and its percentile-bootstrap interval; the samples (equal lengths) are
    resampled together, with replacement, by a generator seeded with ``seed``.  Resamples on which the
    statistic is not finite (e.g. a constant resample for Spearman) are left out."""
    arrays = [np.asarray(s) for s in samples]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap: samples of different lengths")
    if n == 0:
        return NAN, NAN, NAN
    est = float(statistic(*arrays))
    if n < 2:
        return est, NAN, NAN
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    vals = np.array([statistic(*(a[i] for a in arrays)) for i in idx], dtype=float)
    vals = vals[np.isfinite(vals)]
    if vals.size < max(10, n_resamples // 10):
        return est, NAN, NAN
    alpha = (1 - level) / 2
    lo, hi = np.quantile(vals, [alpha, 1 - alpha])
    return est, float(lo), float(hi)


def fmt(iv: Interval, digits: int = 3) -> str:
    """``0.812 [0.770, 0.851]``, or the estimate alone where there is no interval."""
    est, lo, hi = iv
    if est is None or not np.isfinite(est):
        return "—"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{est:.{digits}f}"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
