"""Figures of an evaluation: hexbin of U against the force error, calibration curve, ROC curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics import uq as uqm


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def positive_uncertainty(u: np.ndarray, signed: bool) -> np.ndarray:
    """U for log axes: a signed U (the GMM's NLL) is shifted so its minimum is 1, as the paper does."""
    u = np.asarray(u, dtype=float)
    return u - u.min() + 1.0 if signed else u


def hexbin(ax, u, err, signed: bool, title: str, metrics: dict | None = None):
    x = np.maximum(np.asarray(err, dtype=float), 1e-12)
    y = np.maximum(positive_uncertainty(u, signed), 1e-12)
    hb = ax.hexbin(x, y, xscale="log", yscale="log", gridsize=30, mincnt=1, cmap="viridis")
    ax.set_xlabel("force error ε, (kcal/mol/Å)²")
    ax.set_ylabel("uncertainty U" + (" (shifted NLL)" if signed else ""))
    if metrics:
        ax.text(0.03, 0.97, f"ρ = {metrics.get('spearman', float('nan')):.3f}\n"
                            f"AUC = {metrics.get('roc_auc_p20', float('nan')):.3f}",
                transform=ax.transAxes, va="top", fontsize=9)
    ax.set_title(title)
    return hb


def uq_figures(table: dict, metrics: dict, model, out) -> list[Path]:
    """hexbin.png, calibration.png and roc.png in ``out``."""
    plt = _plt()
    out = Path(out)
    u, eps = table["uncertainty"], table["forces_sq_error"]
    name = getattr(model, "method", "model")
    paths = []

    fig, ax = plt.subplots(figsize=(4.5, 4))
    hexbin(ax, u, eps, getattr(model, "signed_uncertainty", False), name, metrics)
    fig.tight_layout()
    paths.append(out / "hexbin.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if "calibration_a" in metrics and "residuals" in table:
        fig, ax = plt.subplots(figsize=(4, 4))
        var = np.maximum(metrics["calibration_a"] * np.asarray(u) + metrics["calibration_b"],
                         metrics["calibration_floor"])
        exp, obs = uqm.calibration_curve(table["residuals"], np.sqrt(var))
        ax.plot(exp, obs, label=f"area {metrics['miscalibration_area']:.3f}")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlabel("expected proportion in interval")
        ax.set_ylabel("observed proportion")
        ax.set_title(f"{name}: calibration")
        ax.legend(loc="upper left")
        fig.tight_layout()
        paths.append(out / "calibration.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 4))
    try:
        fpr, tpr, _ = uqm.roc_curve(u, eps, 20)
        ax.plot(fpr, tpr, label=f"AUC {metrics.get('roc_auc_p20', float('nan')):.3f}")
    except ValueError:
        pass
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{name}: ROC (ε above 20th percentile)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(out / "roc.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
