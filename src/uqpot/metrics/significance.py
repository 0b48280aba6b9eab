"""p-values, the multiple-comparison correction and the power of the comparisons a study reports.

Small pure functions of arrays, each from scipy or statsmodels where they have it:

* :func:`paired_t_p`: the two-sided p-value of the paired t-test over the units (seeds), i.e. the one-sample
  t-test of the per-unit differences d_u against 0 (``scipy.stats.ttest_1samp``, = ``ttest_rel(a, b)``):
  t = d̄ / (s_d/√n), p = 2·(1 − F_{t, n−1}(|t|)), s_d with 1/(n−1).  It matches the t-interval of
  :func:`uqpot.metrics.intervals.paired_difference`: p < α exactly when the (1−α) interval excludes 0.
* :func:`detectable_effect`: the smallest |mean difference| that a two-sided paired t-test over n units
  detects with probability ``power`` at level ``alpha``, at the observed standard deviation s_d of the
  differences: δ = d*·s_d, where the standardised effect d* solves
  P(|T'| > t_{1−α/2, n−1}) = power for T' noncentral t with n−1 degrees of freedom and noncentrality
  d*·√n (``statsmodels.stats.power.TTestPower().solve_power``).  nan for fewer than two units.
* :func:`newcombe_p`: the p-value of Newcombe's hybrid score interval for a difference of two independent
  proportions (one seed: the trajectories of two models), by inverting the interval: the α at which the
  (1−α) interval's bound touches 0 (``scipy.optimize.brentq`` on :func:`~uqpot.metrics.intervals.
  newcombe_difference`, which equals statsmodels' ``confint_proportions_2indep(method="newcomb")``).
  Written here because neither library gives the p-value of that interval; inverting it keeps the p-value and
  the reported interval consistent (p < 0.05 exactly when the 95% interval excludes 0).
* :func:`bootstrap_p`: the percentile-bootstrap p-value of "the statistic is 0", p = min(1, 2·min(P*(θ* ≤ 0),
  P*(θ* ≥ 0))) over the resampled values θ* (the inversion of the percentile interval: p < α exactly when 0
  lies outside its α/2 and 1−α/2 quantiles, up to the quantiles' interpolation).  Written here because
  ``scipy.stats.bootstrap`` gives intervals but no p-value.
* :func:`holm`: Holm's step-down adjustment of a family of p-values
  (``statsmodels.stats.multitest.multipletests(method="holm")``): with p_(1) ≤ … ≤ p_(m),
  p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j)); it controls the family-wise error rate at α under any
  dependence between the comparisons.
* :func:`spending_alphas`: the per-look levels of a group-sequential study that looks at its accumulating
  seeds K times (``--seeds auto``).  Lan-DeMets O'Brien-Fleming-type spending function (Lan & DeMets 1983,
  Biometrika 70:659-663, eq. for α₁*(t)), two-sided: α*(t) = 2 − 2·Φ(z_{1−α/2} / √t) for the information
  fraction t ∈ (0, 1] (here seeds at the look / the planned maximum), α*(1) = α; look k gets the increment
  α_k = α*(t_k) − α*(t_{k−1}).  The increments are used directly as the nominal level of each look, so
  Σ α_k = α*(t_K) ≤ α and the overall false-positive rate is at most α by the union bound, whatever the
  correlation between looks (conservative: the exact Lan-DeMets boundaries, from the joint distribution of
  the looks' statistics, would be slightly wider).  ``kind="bonferroni"``: α/K at every look.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import optimize, stats

from . import intervals as iv

NAN = float("nan")


def _finite(d: Sequence[float]) -> np.ndarray:
    x = np.asarray([v for v in d if v is not None], dtype=float)
    return x[np.isfinite(x)]


def paired_t_p(differences: Sequence[float]) -> float:
    """Two-sided p of the paired t-test on the per-unit differences (nan for fewer than two, or when every
    difference is 0; 0 when they are all equal and not 0)."""
    d = _finite(differences)
    if d.size < 2:
        return NAN
    if np.ptp(d) <= 1e-9 * np.abs(d).max():  # no spread (to rounding): scipy would divide by ~zero
        return NAN if np.abs(d).max() == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def detectable_effect(differences: Sequence[float], power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest mean difference the paired two-sided t-test over these units detects with ``power`` at
    ``alpha``, at their observed standard deviation (in the differences' unit); nan for fewer than two."""
    from statsmodels.stats.power import TTestPower

    d = _finite(differences)
    if d.size < 2:
        return NAN
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return 0.0
    es = TTestPower().solve_power(effect_size=None, nobs=d.size, alpha=alpha, power=power,
                                  alternative="two-sided")
    return float(es) * sd


def units_needed(differences: Sequence[float], power: float = 0.8, alpha: float = 0.05, most: int = 10_000) -> float:
    """How many units (seeds) the paired two-sided t-test would need to detect the observed mean difference
    with ``power`` at ``alpha``, at the observed standard deviation (statsmodels' ``TTestPower``, rounded up;
    at least 2); inf where the observed mean is 0 or more than ``most`` would be needed, nan for fewer than
    two differences.  A projection from the study's own estimates, which are themselves uncertain: an
    order of magnitude, not a promise."""
    from statsmodels.stats.power import TTestPower

    d = _finite(differences)
    if d.size < 2:
        return NAN
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if mean == 0.0:
        return math.inf
    if sd == 0.0:
        return 2.0
    es = abs(mean) / sd

    def enough(n: int) -> bool:
        p = float(TTestPower().power(effect_size=es, nobs=n, alpha=alpha, alternative="two-sided"))
        if math.isnan(p):  # scipy's noncentral t fails at a large noncentrality (power near 1): its normal limit
            crit, nc = float(stats.t.ppf(1.0 - alpha / 2.0, n - 1)), es * math.sqrt(n)
            p = float(stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc))
        return p >= power

    # the power rises with n: double from 2 until it is enough, then bisect (never evaluating far past the answer)
    lo, hi = 1, 2
    while not enough(hi):
        if hi >= most:
            return math.inf
        lo, hi = hi, min(2 * hi, most)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return float(max(2, hi))


def newcombe_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """p-value of "k1/n1 = k2/n2" by inverting Newcombe's interval (see the module docstring)."""
    if n1 <= 0 or n2 <= 0:
        return NAN
    d = k1 / n1 - k2 / n2
    if d == 0:
        return 1.0

    def bound(alpha: float) -> float:  # the bound nearest 0 of the (1 - alpha) interval, signed towards 0
        _, lo, hi = iv.newcombe_difference(k1, n1, k2, n2, level=1.0 - alpha)
        return lo if d > 0 else -hi

    a_lo, a_hi = 1e-12, 1.0 - 1e-12
    if bound(a_lo) > 0:  # excludes 0 even at the widest interval
        return a_lo
    if bound(a_hi) <= 0:
        return 1.0
    return float(optimize.brentq(bound, a_lo, a_hi, xtol=1e-12))


def bootstrap_p(values: np.ndarray, n_resamples: int = 1000) -> float:
    """Percentile-bootstrap p-value of "the statistic is 0" from its resampled ``values``; nan where fewer than
    max(10, n_resamples/10) are finite (as :func:`~uqpot.metrics.intervals.percentile_interval`)."""
    v = _finite(values)
    if v.size < max(10, n_resamples // 10):
        return NAN
    return float(min(1.0, 2.0 * min(np.mean(v <= 0.0), np.mean(v >= 0.0))))


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """(rejected, adjusted p) of Holm's correction over the family ``pvalues`` (all finite)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return [], []
    if not np.all(np.isfinite(p)):
        raise ValueError("holm: every p-value of the family must be finite")
    reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    return [bool(r) for r in reject], [float(min(1.0, a)) for a in adjusted]


def spending_alphas(fractions: Sequence[float], alpha: float = 0.05, kind: str = "obrien_fleming") -> list[float]:
    """The level of each look at the information ``fractions`` t_1 < … < t_K (in (0, 1]) that spends at most
    ``alpha`` in all (see the module docstring): the increments of the O'Brien-Fleming-type spending function,
    or ``kind="bonferroni"``: alpha/K each.  The cumulative sums rise monotonically to at most ``alpha``
    (exactly ``alpha`` when t_K = 1)."""
    t = np.asarray(fractions, dtype=float)
    if t.size == 0:
        return []
    if not (np.all(t > 0) and np.all(t <= 1) and np.all(np.diff(t) > 0)):
        raise ValueError(f"information fractions must rise within (0, 1], got {list(t)}")
    if kind == "bonferroni":
        return [alpha / t.size] * t.size
    if kind != "obrien_fleming":
        raise ValueError(f"unknown spending function {kind!r} (obrien_fleming, bonferroni)")
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    spent = np.minimum(alpha, 2.0 - 2.0 * stats.norm.cdf(z / np.sqrt(t)))
    spent[t == 1.0] = alpha
    return [float(a) for a in np.diff(np.concatenate([[0.0], spent]))]


def fmt_p(p) -> str:
    """``0.013``, ``<0.001``, or ``—`` where there is no p-value."""
    if p is None or not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
