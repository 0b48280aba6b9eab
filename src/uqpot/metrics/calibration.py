"""The Gaussian likelihood and the calibration σ² = a·U + b (Eq. 13-14; see :mod:`uqpot.metrics.uq` on
negative or widely spread U), the calibration curve and the miscalibration area, registered as the
``miscalibration_area`` and ``cnll`` metrics (both of the calibrated variance)."""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats

from .registry import Metric, register_metric
from .residuals import _structure_stats, _vector, flatten_residuals, per_component

_LOG_BOUNDS = (np.log(1e-12), np.log(1e8))  # bounds of α = log A and γ = log C in normalised units


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


register_metric(Metric("miscalibration_area", lambda x: miscalibration_area(x.residuals, np.sqrt(x.variance)),
                       False, "miscalibration area", headline=True, table=True, needs_calibration=True,
                       bounds=(0.0, 0.5)))
register_metric(Metric("cnll", lambda x: gaussian_nll(x.residuals, x.variance), False, "cNLL", headline=True,
                       table=True, needs_calibration=True))
