"""The ranking metrics: how well U orders the structures by their force error ε (Spearman's ρ, Eq. 12;
ROC-AUC of the "high error" class at an error percentile, the paper's 20th and Table S2's 50th), registered
as the ``spearman``, ``roc_auc_p20`` and ``roc_auc_p50`` metrics."""

from __future__ import annotations

import numpy as np
from scipy import stats

from .registry import Metric, register_metric
from .residuals import _pair, _vector


def spearman(uncertainty, error) -> float:
    """Spearman's rank correlation ρ(U, ε) = cov(R_U, R_ε) / (σ_{R_U} σ_{R_ε}) (Eq. 12).

    Tied values get their average rank.  Raises ValueError when U or ε is constant (ρ undefined)."""
    u, e = _pair(uncertainty, error)
    if np.ptp(u) == 0 or np.ptp(e) == 0:
        raise ValueError("Spearman correlation is undefined for a constant uncertainty or error")
    ru = stats.rankdata(u) - (u.size + 1) / 2.0
    re = stats.rankdata(e) - (e.size + 1) / 2.0
    return float(np.dot(ru, re) / np.sqrt(np.dot(ru, ru) * np.dot(re, re)))


def _rows(uncertainty, error) -> tuple[np.ndarray, np.ndarray]:
    """U and ε as float arrays of shape (rows, n): resamples, one per row."""
    u, e = np.asarray(uncertainty, dtype=float), np.asarray(error, dtype=float)
    if u.ndim != 2 or u.shape != e.shape or u.shape[1] < 2:
        raise ValueError(f"batched metrics take U and ε of one shape (rows, n >= 2), got {u.shape} and {e.shape}")
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(e))):
        raise ValueError("uncertainty or error contains non-finite values")
    return u, e


def spearman_rows(uncertainty, error) -> np.ndarray:
    """:func:`spearman` of each row of U and ε (shape (rows, n)): nan where a row's U or ε is constant.
    Equal to :func:`spearman` row by row, bit for bit: the centred ranks are multiples of ½, so their products'
    sums are exact in any order, and the one square root and division round as there."""
    u, e = _rows(uncertainty, error)
    centre = (u.shape[1] + 1) / 2.0
    ru = stats.rankdata(u, axis=1) - centre
    re = stats.rankdata(e, axis=1) - centre
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ru * re).sum(axis=1) / np.sqrt((ru * ru).sum(axis=1) * (re * re).sum(axis=1))
    rho[(np.ptp(u, axis=1) == 0) | (np.ptp(e, axis=1) == 0)] = np.nan
    return rho


def roc_auc_rows(uncertainty, error, percentile: float = 20) -> np.ndarray:
    """:func:`roc_auc` of each row of U and ε (shape (rows, n)): nan where a row's high- or low-error class is
    empty.  Equal to :func:`roc_auc` row by row (the threshold is the same linear-interpolation percentile of
    the row; sums of ranks, multiples of ½, are exact)."""
    u, e = _rows(uncertainty, error)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    labels = e > np.percentile(e, percentile, axis=1)[:, None]
    n_pos = labels.sum(axis=1)
    n_neg = labels.shape[1] - n_pos
    ranks = stats.rankdata(u, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * labels).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


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


register_metric(Metric("spearman", lambda x: spearman(x.uncertainty, x.error), True, "Spearman", headline=True,
                       table=True, bounds=(-1.0, 1.0), batched=spearman_rows))
for _p in (20, 50):
    register_metric(Metric(f"roc_auc_p{_p}", lambda x, p=_p: roc_auc(x.uncertainty, x.error, p), True,
                           "ROC-AUC", headline=True, table=True, summary=_p == 20, bounds=(0.0, 1.0),
                           percentile=_p, qualifier=f"p{_p}",
                           batched=lambda u, e, p=_p: roc_auc_rows(u, e, p)))
