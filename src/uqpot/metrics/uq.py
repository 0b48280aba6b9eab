"""Uncertainty-quantification metrics (Tan et al. 2023, "Evaluation metrics"), as pure functions of arrays.

Definitions (kept consistent with DESIGN.md, "Definitions to keep consistent"):

* ``uncertainty`` U(x): one value per structure, shape (n,), as produced by a UQ method (ensemble force
  variance, MVE variance, evidential epistemic variance, GMM negative log-likelihood, ...).  It need not be
  a variance and may be negative (the GMM's NLL, Eq. 11).
* ``error`` ε(x): the per-structure force error, ε(x) = mean over atoms and Cartesian components of
  (F̂ − F)², shape (n,) — see :func:`uqpot.metrics.errors.per_structure_force_error`.  Spearman and ROC-AUC
  rank U against ε.
* ``residuals``: the force-component residuals r = F̂ − F.  Either a list of per-structure arrays (any shape
  per structure, e.g. (n_atoms, 3)), a numeric array whose first axis indexes structures, or — for the
  functions that take a per-component σ — a flat array of components.

Metrics
-------
* Spearman's rank correlation ρ(U, ε) (Eq. 12): :func:`spearman`.
* ROC-AUC: structures whose ε lies above the given percentile of the ε distribution are the positive
  ("high error", ε > ε_c) class and U is the score (20th percentile in the paper, 20th and 50th in Table
  S2): :func:`roc_auc`, :func:`roc_curve`.
* Calibration (Eq. 13-14).  Every force component of structure x is one Gaussian residual
  r ~ N(0, σ²(x)) with the calibrated variance σ²(x) = a·U(x) + b.  a, b minimise the Gaussian NLL on
  validation data (Eq. 13, :func:`fit_calibration`); the cNLL is the NLL of the test residuals under them
  (Eq. 14, :func:`calibrated_nll`), reported as the **mean per force component** (Eq. 14 writes a sum; the
  mean makes values comparable across test sets of different size and does not move the minimiser of
  Eq. 13).  A per-structure RMS residual is not Gaussian and is never used here.
* Calibration curve: for expected proportions p on ``np.linspace(0, 1, n_bins)`` the observed proportion is
  the fraction of components with |r|/σ ≤ Φ⁻¹(½ + p/2), i.e. inside the centred Gaussian interval that
  holds a proportion p (:func:`calibration_curve`).
* Miscalibration area: the exact area between the piecewise-linear calibration curve and the diagonal,
  ∫₀¹ |obs(p) − p| dp with obs linearly interpolated between the grid points; on segments where the
  curve crosses the diagonal the two triangles are added (not a signed trapezoid that would let them
  cancel).  This is the definition of uncertainty-toolbox 0.1.1
  (``metrics_calibration.miscalibration_area``, trapezoid/"hourglass" per segment) and matches it to
  rounding (:func:`miscalibration_area`).

Calibration with negative or widely spread U
--------------------------------------------
:func:`fit_calibration` returns (a, b) for σ² = a·U + b on the *original* U, with a ≥ 0 and
σ² > 0 at every validation U.  Internally U is shifted by its validation minimum and scaled, and the
variance is scaled by the mean squared residual, so the fit sees σ²/v₀ = A·u' + C with u' ∈ [0, …),
A = e^α ≥ 0 and C = e^γ > 0 (optimised in log space after a coarse grid search, so U spanning many
orders of magnitude is fine).  Hence b = v₀·C − a·min(U_val) > −a·min(U_val): when some U are negative
(the GMM's NLL) b is positive and at least a·|min U_val|; when all U are positive, b may be slightly
negative (the line reaches zero below the smallest validation U).  The shift is only a
reparameterisation: the returned (a, b) apply to U as the method produced it.
A test structure with U below the validation minimum would extrapolate the line towards non-positive
variances; :func:`calibrated_variance` therefore takes a floor, and :func:`calibrated_nll` /
:func:`uq_metrics` use floor = a·min(U_val) + b, the variance at the lowest validation uncertainty (the
calibration is not extrapolated below the range it was fitted on).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

__all__ = [
    "spearman",
    "high_error_labels",
    "roc_auc",
    "roc_curve",
    "gaussian_nll",
    "fit_calibration",
    "fit_calibration_with_floor",
    "calibrated_variance",
    "calibrated_nll",
    "calibration_curve",
    "miscalibration_area",
    "miscalibration_area_from_curve",
    "per_component",
    "flatten_residuals",
    "uq_metrics",
    "interval_coverage",
    "gaussian_interval_factor",
    "conformal_scores",
    "conformal_quantile",
    "fit_conformal",
    "coverage_metrics",
]

_LOG_BOUNDS = (np.log(1e-12), np.log(1e8))  # bounds of α = log A and γ = log C in normalised units


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------


def _vector(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one value per structure (1-D), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def _pair(uncertainty, error) -> tuple[np.ndarray, np.ndarray]:
    u = _vector(uncertainty, "uncertainty")
    e = _vector(error, "error")
    if u.shape != e.shape:
        raise ValueError(f"uncertainty and error differ in length: {u.shape[0]} vs {e.shape[0]}")
    if u.size < 2:
        raise ValueError("need at least two structures")
    return u, e


def _structure_list(residuals) -> list[np.ndarray] | None:
    """Per-structure residual arrays when ``residuals`` is a list/tuple (or object array), else None."""
    if isinstance(residuals, (list, tuple)) or (isinstance(residuals, np.ndarray) and residuals.dtype == object):
        return [np.asarray(r, dtype=float) for r in residuals]
    return None


def flatten_residuals(residuals) -> np.ndarray:
    """All force-component residuals as one flat float array (structure by structure, C order)."""
    parts = _structure_list(residuals)
    if parts is not None:
        flat = np.concatenate([p.ravel() for p in parts]) if parts else np.zeros(0)
    else:
        flat = np.asarray(residuals, dtype=float).ravel()
    if not np.all(np.isfinite(flat)):
        raise ValueError("residuals contain non-finite values")
    return flat


def per_component(values, residuals) -> np.ndarray:
    """Broadcast ``values`` (one per structure, one per component, or a scalar) to the flat component
    layout of :func:`flatten_residuals`.

    Rules: a scalar is repeated; an array with the total number of components (or, for a list of
    residual arrays, a list of arrays of matching sizes; for a numeric residual array, an array of its
    shape) is taken per component; an array with one value per structure (the first axis of a numeric
    residual array, the list entries otherwise) is repeated over that structure's components.
    """
    parts = _structure_list(residuals)
    if parts is not None:
        sizes = np.array([p.size for p in parts], dtype=int)
        v_parts = _structure_list(values) if isinstance(values, (list, tuple)) else None
        if v_parts is not None and len(v_parts) == len(parts) and all(
            vp.size == n for vp, n in zip(v_parts, sizes)
        ) and not all(vp.ndim == 0 for vp in v_parts):
            return np.concatenate([vp.ravel() for vp in v_parts]) if v_parts else np.zeros(0)
        v = np.asarray(values, dtype=float)
        if v.ndim == 0:
            return np.full(int(sizes.sum()), float(v))
        v = v.ravel()
        if v.size == len(parts):
            return np.repeat(v, sizes)
        if v.size == sizes.sum():
            return v
        raise ValueError(
            f"cannot match {v.size} values to {len(parts)} structures / {int(sizes.sum())} components"
        )
    r = np.asarray(residuals, dtype=float)
    v = np.asarray(values, dtype=float)
    if v.ndim == 0:
        return np.full(r.size, float(v))
    if v.shape == r.shape:
        return v.ravel()
    if v.ndim == 1 and r.ndim >= 1 and v.size == r.shape[0]:
        return np.repeat(v, r.size // max(r.shape[0], 1))
    if v.size == r.size:
        return v.ravel()
    raise ValueError(f"cannot broadcast values of shape {v.shape} to residuals of shape {r.shape}")


def _structure_stats(uncertainty, residuals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, n_i, S_i): per-structure uncertainty, number of components and sum of squared residuals.

    The first axis of a numeric residual array (or the list entries) indexes structures."""
    u = _vector(uncertainty, "uncertainty")
    parts = _structure_list(residuals)
    if parts is None:
        r = np.asarray(residuals, dtype=float)
        if r.ndim == 0 or r.shape[0] != u.size:
            raise ValueError(f"residuals of shape {r.shape} do not have one entry per structure ({u.size})")
        r = r.reshape(u.size, -1)
        n = np.full(u.size, r.shape[1], dtype=float)
        s = np.sum(r * r, axis=1)
    else:
        if len(parts) != u.size:
            raise ValueError(f"{len(parts)} residual arrays for {u.size} uncertainties")
        n = np.array([p.size for p in parts], dtype=float)
        s = np.array([np.sum(p * p) for p in parts], dtype=float)
    if not np.all(np.isfinite(s)):
        raise ValueError("residuals contain non-finite values")
    if np.any(n == 0):
        raise ValueError("a structure has no residual components")
    return u, n, s


# --------------------------------------------------------------------------------------------------
# ranking metrics
# --------------------------------------------------------------------------------------------------


def spearman(uncertainty, error) -> float:
    """Spearman's rank correlation ρ(U, ε) = cov(R_U, R_ε) / (σ_{R_U} σ_{R_ε}) (Eq. 12).

    Tied values get their average rank.  Raises ValueError when U or ε is constant (ρ undefined)."""
    u, e = _pair(uncertainty, error)
    if np.ptp(u) == 0 or np.ptp(e) == 0:
        raise ValueError("Spearman correlation is undefined for a constant uncertainty or error")
    ru = stats.rankdata(u) - (u.size + 1) / 2.0
    re = stats.rankdata(e) - (e.size + 1) / 2.0
    return float(np.dot(ru, re) / np.sqrt(np.dot(ru, ru) * np.dot(re, re)))


def high_error_labels(error, percentile: float = 20) -> np.ndarray:
    """Boolean "high error" class: ε > ε_c with ε_c the given percentile of ε (NumPy's linear
    interpolation).  Raises ValueError when either class is empty."""
    e = _vector(error, "error")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    threshold = np.percentile(e, percentile)
    labels = e > threshold
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError(
            f"ROC undefined: the {percentile}th-percentile error cutoff ({threshold:.6g}) leaves "
            f"{n_pos} high-error and {labels.size - n_pos} low-error structures; both classes are needed"
        )
    return labels


def roc_auc(uncertainty, error, percentile: float = 20) -> float:
    """Area under the ROC curve of U as a score for the "high error" class ε > ε_c, where ε_c is the
    given percentile of ε (paper: 20th percentile; Table S2 also 50th).

    Exact (Mann-Whitney) computation: the probability that a random high-error structure has a larger
    U than a random low-error one, ties counted ½.  1 for a perfect ranking, 0.5 for none.
    Raises ValueError when one class is empty (e.g. all errors equal)."""
    u, e = _pair(uncertainty, error)
    labels = high_error_labels(e, percentile)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    ranks = stats.rankdata(u)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(uncertainty, error, percentile: float = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr, thresholds) of U for the class ε > percentile(ε), from scikit-learn with all
    thresholds kept (``drop_intermediate=False``); its trapezoid area equals :func:`roc_auc`."""
    from sklearn.metrics import roc_curve as _sk_roc_curve

    u, e = _pair(uncertainty, error)
    labels = high_error_labels(e, percentile)
    fpr, tpr, thresholds = _sk_roc_curve(labels.astype(int), u, drop_intermediate=False)
    return fpr, tpr, thresholds


# --------------------------------------------------------------------------------------------------
# Gaussian likelihood and calibration (Eq. 13-14)
# --------------------------------------------------------------------------------------------------


def gaussian_nll(residuals, variance) -> float:
    """Mean Gaussian NLL per force component, ½·log(2πσ²) + r²/(2σ²) (the summand of Eq. 14).

    ``variance`` is per component, per structure or a scalar (see :func:`per_component`); it must be
    positive."""
    r = flatten_residuals(residuals)
    v = per_component(variance, residuals)
    if r.size == 0:
        raise ValueError("no residuals")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError("variances must be finite and positive")
    return float(np.mean(0.5 * np.log(2.0 * np.pi * v) + r * r / (2.0 * v)))


def _fit_objective(theta, un, w, t):
    """Mean NLL (without the ½log 2π + ½log v₀ constants) in normalised units and its gradient."""
    A, C = np.exp(theta)
    q = A * un + C
    f = np.sum(0.5 * w * np.log(q) + 0.5 * t / q)
    dq = 0.5 * w / q - 0.5 * t / (q * q)
    return f, np.array([np.sum(dq * un) * A, np.sum(dq) * C])


def fit_calibration(uncertainty_val, residuals_val) -> tuple[float, float]:
    """Fit σ²(x) = a·U(x) + b by minimising the Gaussian NLL of the validation residuals (Eq. 13).

    Every force component of structure x is one residual with variance a·U(x) + b.  Returns (a, b) for the
    original U with a ≥ 0 and a·U + b > 0 at every validation U (so b > 0 when some U are negative, and b
    may be negative when all U are positive; see the module docstring).  Robust to U spanning many orders of magnitude: U is shifted by
    its minimum and scaled by its mean excess, the variance by the mean squared residual, and the
    parameters are optimised in log space (coarse grid, then L-BFGS-B).

    Parameters
    ----------
    uncertainty_val : (n,) per-structure U.
    residuals_val : list of n per-structure residual arrays, or an array whose first axis has length n.
    """
    u, n, s = _structure_stats(uncertainty_val, residuals_val)
    total = n.sum()
    v0 = s.sum() / total
    if v0 <= 0:
        raise ValueError("all validation residuals are zero: the variance scale cannot be fitted")
    u_min = float(u.min())
    excess = u - u_min
    scale = float(excess.mean())
    if not scale > 0:  # constant U: only b is identifiable; the scale is arbitrary
        scale = 1.0
    un = excess / scale
    w = n / total
    t = s / (total * v0)

    # coarse grid in (log A, log C): the objective need not be convex in these coordinates
    grid = np.linspace(_LOG_BOUNDS[0], _LOG_BOUNDS[1], 41)
    la, lc = np.meshgrid(grid, grid, indexing="ij")
    f_grid = np.zeros(la.shape)
    A = np.exp(la)[..., None]
    C = np.exp(lc)[..., None]
    for i in range(0, un.size, 2048):  # chunks over structures bound the memory
        sl = slice(i, i + 2048)
        q = A * un[sl] + C
        f_grid += np.sum(0.5 * w[sl] * np.log(q) + 0.5 * t[sl] / q, axis=-1)
    k = np.unravel_index(np.argmin(f_grid), f_grid.shape)
    best, best_f = np.array([la[k], lc[k]]), f_grid[k]

    res = optimize.minimize(
        _fit_objective,
        best,
        args=(un, w, t),
        jac=True,
        method="L-BFGS-B",
        bounds=[_LOG_BOUNDS, _LOG_BOUNDS],
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 1000},
    )
    theta = res.x if res.fun <= best_f else best
    A_fit, C_fit = np.exp(theta)
    a = float(A_fit * v0 / scale)
    b = float(C_fit * v0 - a * u_min)
    return a, b


def calibrated_variance(uncertainty, a: float, b: float, floor: float | None = None) -> np.ndarray:
    """σ² = a·U + b (Eq. 13's "variance"), clipped from below at ``floor`` when given.

    Without a floor a non-positive variance raises ValueError (U below the fitted range)."""
    u = np.asarray(uncertainty, dtype=float)
    var = a * u + b
    if floor is not None:
        if not floor > 0:
            raise ValueError(f"floor must be positive, got {floor}")
        var = np.maximum(var, floor)
    elif np.any(var <= 0):
        raise ValueError(
            "a·U + b is not positive for some U (below the range the calibration was fitted on); "
            "pass floor= (e.g. the variance at the lowest validation U)"
        )
    return var


def fit_calibration_with_floor(u_val, res_val) -> tuple[float, float, float]:
    """(a, b, floor): :func:`fit_calibration` plus the variance at the lowest validation U, below which
    the calibration is not extrapolated."""
    return _fit_with_floor(u_val, res_val)


def _fit_with_floor(u_val, res_val) -> tuple[float, float, float]:
    a, b = fit_calibration(u_val, res_val)
    floor = a * float(np.min(np.asarray(u_val, dtype=float))) + b
    return a, b, floor


def calibrated_nll(u_val, res_val, u_test, res_test) -> float:
    """cNLL (Eq. 13-14): fit σ² = a·U + b on the validation set, then the mean Gaussian NLL per force
    component of the test residuals under it.  Test U below the validation minimum get the variance of
    the validation minimum (no extrapolation to non-positive variances)."""
    a, b, floor = _fit_with_floor(u_val, res_val)
    u_test = _vector(u_test, "u_test")
    var = calibrated_variance(u_test, a, b, floor=floor)
    return gaussian_nll(res_test, per_component(var, res_test))


def calibration_curve(residuals, sigma, n_bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Calibration curve (expected, observed) of Gaussian residuals r with standard deviations σ.

    expected = ``np.linspace(0, 1, n_bins)`` (as uncertainty-toolbox); observed[k] = fraction of
    components with |r|/σ ≤ Φ⁻¹(½ + expected[k]/2), the centred interval holding that proportion.
    ``sigma`` is per component, per structure or a scalar (see :func:`per_component`)."""
    if n_bins < 2:
        raise ValueError("n_bins must be at least 2")
    r = flatten_residuals(residuals)
    sd = per_component(sigma, residuals)
    if r.size == 0:
        raise ValueError("no residuals")
    if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
        raise ValueError("sigma must be finite and positive")
    z = np.sort(np.abs(r) / sd)
    expected = np.linspace(0.0, 1.0, n_bins)
    bounds = stats.norm.ppf(0.5 + expected / 2.0)  # 0 … +inf
    observed = np.searchsorted(z, bounds, side="right") / z.size
    return expected, observed


def miscalibration_area_from_curve(expected, observed) -> float:
    """Exact area between the piecewise-linear curve (expected, observed) and the diagonal.

    Per segment with signed gaps d_l, d_r (observed − expected at its ends) and width h: h·|d_l + d_r|/2
    when the gaps share a sign, h·(d_l² + d_r²)/(2(|d_l| + |d_r|)) (two triangles) when the curve crosses
    the diagonal — uncertainty-toolbox 0.1.1's trapezoid/hourglass rule."""
    x = np.asarray(expected, dtype=float)
    y = np.asarray(observed, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError("expected and observed must be 1-D arrays of equal length ≥ 2")
    d = y - x
    dl, dr, h = d[:-1], d[1:], np.diff(x)
    cross = dl * dr < 0
    area = np.where(
        cross,
        0.5 * h * (dl * dl + dr * dr) / np.where(cross, np.abs(dl) + np.abs(dr), 1.0),
        0.5 * h * np.abs(dl + dr),
    )
    return float(area.sum())


def miscalibration_area(residuals, sigma, n_bins: int = 100) -> float:
    """Miscalibration area: area between the calibration curve (:func:`calibration_curve`) and the
    diagonal, as in uncertainty-toolbox 0.1.1 ``miscalibration_area(y_pred, y_std, y_true, num_bins)``
    with y_pred − y_true = r and y_std = σ.  0 for perfect calibration."""
    return miscalibration_area_from_curve(*calibration_curve(residuals, sigma, n_bins))


# --------------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------------


def uq_metrics(
    u_test,
    err_test,
    res_test,
    u_val=None,
    res_val=None,
    percentiles: Sequence[float] = (20, 50),
    calibration: tuple[float, float, float] | None = None,
) -> dict:
    """The paper's four metrics for one test set.

    Returns a dict with ``spearman`` (Eq. 12), ``roc_auc_p{q}`` for every percentile q, ``miscalibration_area``
    and ``cnll`` (Eq. 13-14; both use σ² = a·U + b fitted on the validation data), ``calibration_a``,
    ``calibration_b``, ``calibration_floor``, ``calibration_fitted_on`` ("validation", or "test" when no
    validation data are given — the cNLL is then optimistic), ``n_structures``, ``n_components`` and
    ``notes`` (why a metric is NaN, e.g. constant U).  ``err_test`` may be None: ε is then computed from
    ``res_test`` as the mean squared residual of each structure.  ``calibration`` = (a, b, floor), fitted
    earlier on validation data (see :func:`fit_calibration_with_floor`), is used instead of a new fit.
    """
    u_test = _vector(u_test, "u_test")
    if err_test is None:
        _, n, s = _structure_stats(u_test, res_test)
        err_test = s / n
    u_t, e_t = _pair(u_test, err_test)
    notes: list[str] = []
    out: dict = {}
    try:
        out["spearman"] = spearman(u_t, e_t)
    except ValueError as exc:
        out["spearman"] = float("nan")
        notes.append(f"spearman: {exc}")
    for q in percentiles:
        key = f"roc_auc_p{q:g}"
        try:
            out[key] = roc_auc(u_t, e_t, q)
        except ValueError as exc:
            out[key] = float("nan")
            notes.append(f"{key}: {exc}")

    if (u_val is None) != (res_val is None):
        raise ValueError("give both u_val and res_val, or neither")
    if calibration is not None:
        a, b, floor = (float(x) for x in calibration)
        fitted_on = "validation"
    else:
        if u_val is None:
            u_val, res_val, fitted_on = u_t, res_test, "test"
            notes.append("calibration fitted on the test data (no validation data given)")
        else:
            fitted_on = "validation"
        a, b, floor = _fit_with_floor(u_val, res_val)
    var = per_component(calibrated_variance(u_t, a, b, floor=floor), res_test)
    out["miscalibration_area"] = miscalibration_area(res_test, np.sqrt(var))
    out["cnll"] = gaussian_nll(res_test, var)
    out.update(
        calibration_a=a,
        calibration_b=b,
        calibration_floor=floor,
        calibration_fitted_on=fitted_on,
        n_structures=int(u_t.size),
        n_components=int(flatten_residuals(res_test).size),
        notes=notes,
    )
    return out


# --------------------------------------------------------------------------------------------------
# interval coverage and split-conformal calibration
# --------------------------------------------------------------------------------------------------
#
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
