"""Interval coverage and split-conformal calibration of the force components (``coverage_{p}``,
``conformal_coverage_{p}``)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from .residuals import flatten_residuals, per_component


# Coverage of a nominal proportion p: the fraction of test force components inside the interval ±c·σ.
# * Scaled σ (Gaussian interval): σ² = a·U + b (Eq. 13, with its floor) and c = Φ⁻¹(½ + p/2)
#   (c ≈ 0.994 for 68%, 1.960 for 95%): correct coverage only if the residuals are Gaussian with that σ.
# * Split-conformal σ: nonconformity scores s = |r|/σ of the n validation components; c = q_p, the k-th
#   smallest score with k = ⌈(n + g)·p⌉ (g = 1: the usual ⌈(n+1)p⌉, i.e. the ⌈(n+1)(1−α)⌉/n empirical
#   quantile with α = 1 − p; q_p = +∞ when k > n).  If the n validation scores and the test score are
#   exchangeable, P(|r_test| ≤ q_p·σ_test) ≥ p for any σ, whatever the residual distribution.
#   Force components of one structure are not exchangeable with each other, but whole structures are
#   (random split): with g = the number of components per structure (equal for all structures), pooling
#   the components keeps the guarantee for a random component of a random test structure — its rank among
#   the (n + g) pooled scores of the validation and test structures is uniform, and only the g − 1 other
#   test components can lie below it, so P(rank among validation + itself ≤ k) ≥ k/(n + g) ≥ p.  With
#   g = 1 on pooled components the guarantee holds up to (g − 1)/(n + g).
#   Out of domain (test not exchangeable with validation) nothing is guaranteed; the measured coverage
#   then shows how far off the intervals are.

_COVERAGES = (0.68, 0.95)


def _coverage_key(p: float) -> str:
    return f"{round(100 * float(p)):d}"


def interval_coverage(residuals, sigma, factor) -> float:
    """Fraction of force components with |r| ≤ factor·σ (σ per component, per structure or scalar)."""
    r = flatten_residuals(residuals)
    sd = per_component(sigma, residuals)
    if r.size == 0:
        raise ValueError("no residuals")
    if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
        raise ValueError("sigma must be finite and positive")
    return float(np.mean(np.abs(r) <= float(factor) * sd))


def gaussian_interval_factor(coverage: float) -> float:
    """c with P(|z| ≤ c) = p for z ~ N(0, 1): Φ⁻¹(½ + p/2)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    return float(stats.norm.ppf(0.5 + coverage / 2.0))


def conformal_scores(residuals, sigma) -> np.ndarray:
    """Nonconformity scores |r|/σ of every force component (flat)."""
    r = flatten_residuals(residuals)
    sd = per_component(sigma, residuals)
    if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
        raise ValueError("sigma must be finite and positive")
    return np.abs(r) / sd


def conformal_quantile(scores, coverage: float, group_size: int = 1) -> float:
    """Split-conformal quantile: the k-th smallest of the n scores, k = ⌈(n + g)·p⌉ (g = ``group_size``;
    g = 1 is the finite-sample correction ⌈(n+1)(1−α)⌉ with α = 1 − p); +∞ when k > n (too few scores
    for that coverage)."""
    s = np.sort(np.asarray(scores, dtype=float).ravel())
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("conformal scores must be a non-empty array of finite values")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    if int(group_size) < 1:
        raise ValueError("group_size must be >= 1")
    # a hair below the product guards ⌈⌉ against rounding up an exact integer (e.g. 20 · 0.95)
    k = int(np.ceil((s.size + int(group_size)) * float(coverage) - 1e-9))
    return float(s[k - 1]) if k <= s.size else float("inf")


def fit_conformal(residuals_val, sigma_val, coverages=_COVERAGES, group_size: int = 1) -> dict:
    """Conformal quantiles q_p of |r|/σ on validation data for every coverage p: a JSON-able dict
    ``{"quantiles": {"68": q, "95": q}, "quantiles_structure": {...}, "n_components": n, "group_size": g}``
    with ``quantiles`` from the per-component correction ⌈(n+1)p⌉ (used for ``conformal_coverage_*``) and
    ``quantiles_structure`` from the per-structure one ⌈(n+g)p⌉ (exact guarantee for exchangeable
    structures of g components; +∞ with fewer than p/(1−p) validation structures, e.g. 19 for 95%)."""
    s = conformal_scores(residuals_val, sigma_val)
    return {"quantiles": {_coverage_key(p): conformal_quantile(s, p) for p in coverages},
            "quantiles_structure": {_coverage_key(p): conformal_quantile(s, p, group_size) for p in coverages},
            "n_components": int(s.size), "group_size": int(group_size)}


def coverage_metrics(residuals, sigma, conformal: dict | None = None, coverages=_COVERAGES) -> dict:
    """``coverage_{p}`` (Gaussian intervals ±Φ⁻¹(½+p/2)·σ) and ``conformal_coverage_{p}`` (±q_p·σ with
    the quantiles of :func:`fit_conformal`; NaN without them) of the test components, p in percent."""
    out = {}
    for p in coverages:
        key = _coverage_key(p)
        out[f"coverage_{key}"] = interval_coverage(residuals, sigma, gaussian_interval_factor(p))
        q = None if conformal is None else conformal.get("quantiles", {}).get(key)
        out[f"conformal_coverage_{key}"] = float("nan") if q is None else interval_coverage(residuals, sigma, q)
    return out
