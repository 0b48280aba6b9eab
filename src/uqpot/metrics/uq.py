"""Uncertainty-quantification metrics (Tan et al. 2023, "Evaluation metrics"), as pure functions of arrays:
:func:`uq_metrics` computes every registered UQ metric of a test set (:mod:`uqpot.metrics.registry`) around
one calibration fit, and this module gathers the functions of :mod:`~uqpot.metrics.residuals` (inputs),
:mod:`~uqpot.metrics.ranking` (Spearman, ROC-AUC), :mod:`~uqpot.metrics.calibration` (NLL, calibration,
miscalibration area) and :mod:`~uqpot.metrics.coverage` (intervals, conformal) under one name.

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

from .calibration import (_fit_with_floor, calibrated_nll, calibrated_variance, calibration_curve,  # noqa: F401
                          fit_calibration, fit_calibration_with_floor, gaussian_nll, miscalibration_area,
                          miscalibration_area_from_curve)
from .coverage import (conformal_quantile, conformal_scores, coverage_metrics, fit_conformal,  # noqa: F401
                       gaussian_interval_factor, interval_coverage)
from .ranking import high_error_labels, roc_auc, roc_curve, spearman  # noqa: F401
from .registry import MetricInputs, metrics
from .residuals import _pair, _structure_stats, _vector, flatten_residuals, per_component  # noqa: F401

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


def uq_metrics(
    u_test,
    err_test,
    res_test,
    u_val=None,
    res_val=None,
    percentiles: Sequence[float] = (20, 50),
    calibration: tuple[float, float, float] | None = None,
) -> dict:
    """The paper's four metrics for one test set, and every other registered UQ metric
    (:mod:`uqpot.metrics.registry`), in the order of registration: first those of U and ε alone, then those
    of the calibrated variance.

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
    ranked = MetricInputs(u_t, e_t, res_test)
    for m in _chosen(percentiles, needs_calibration=False):
        try:
            out[m.name] = m.function(ranked)
        except ValueError as exc:
            out[m.name] = float("nan")
            notes.append(f"{m.name}: {exc}")
    for q in percentiles:  # an error percentile without a registered ROC-AUC metric: its ROC-AUC all the same
        key = f"roc_auc_p{q:g}"
        if key not in out:
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
    calibrated = MetricInputs(u_t, e_t, res_test, var)
    for m in _chosen(percentiles, needs_calibration=True):
        out[m.name] = m.function(calibrated)
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


def _chosen(percentiles, needs_calibration: bool):
    """The registered UQ metrics of one kind; of the ROC-AUC ones, those of ``percentiles``."""
    want = {float(q) for q in percentiles}
    return [m for m in metrics(kind="uq", needs_calibration=needs_calibration)
            if m.percentile is None or float(m.percentile) in want]
