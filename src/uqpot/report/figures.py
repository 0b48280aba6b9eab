"""Figures of the studies (analogues of the paper's Figs. 2-4 and the SI's supporting figures).

Every function takes plain data (dicts and arrays read from a run directory), draws one figure with
matplotlib (Agg), and returns it; :func:`png` turns it into PNG bytes for the self-contained report.
"""

from __future__ import annotations

import io

import numpy as np

from ..metrics.registry import names as metric_names
from ..evaluation.plots import _plt, hexbin
from ..uq import METHODS, PLAIN


def method_colour(method, default=None):
    """The method's colour in figures (its class's ``colour``); ``default`` for a method without one or not
    registered here."""
    return getattr(METHODS.get(method) or PLAIN.get(method), "colour", None) or default


def _signed(method: str) -> bool:
    """Whether the method's U can be negative (its class says so: ``signed_uncertainty``)."""
    return bool(getattr(METHODS.get(method), "signed_uncertainty", False))


def png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def hexbins(entries: list[dict], title: str = ""):
    """One hexbin of U against the force error ε per entry ({name, method, uncertainty, error, metrics})."""
    plt = _plt()
    n = len(entries)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax, e in zip(axes.flat, entries):
        hexbin(ax, e["uncertainty"], e["error"], _signed(e["method"]), e["name"], e.get("metrics"))
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def parity(entries: list[dict], title: str = ""):
    """Energy and force parity per entry ({name, energy_true, energy_pred, forces_true, forces_pred})."""
    plt = _plt()
    n = len(entries)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 6.2), squeeze=False)
    for k, e in enumerate(entries):
        for row, (key, unit) in enumerate((("energy", "kcal/mol"), ("forces", "kcal/mol/Å"))):
            ax = axes[row, k]
            t = np.asarray(e[f"{key}_true"]).ravel()
            p = np.asarray(e[f"{key}_pred"]).ravel()
            if key == "energy":
                ref = t.min()
                t, p = t - ref, p - ref
            ax.scatter(t, p, s=3, alpha=0.5, color=method_colour(e.get("method"), "k"))
            lo, hi = min(t.min(), p.min()), max(t.max(), p.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.7)
            ax.set_xlabel(f"reference {key} ({unit})")
            ax.set_ylabel(f"predicted {key}")
            ax.set_title(f"{e['name']}\nMAE {np.mean(np.abs(p - t)):.3f}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def metric_bars(rows: list[dict], keys=None, title: str = ""):
    """Bars of metrics per method (default: the registered UQ metrics of the summaries); error bars: the 95% interval (``<key>_lo``/``<key>_hi``) where the rows have
    one, else the standard deviation over splits/seeds (``<key>_std``)."""
    keys = metric_names(kind="uq", summary=True) if keys is None else keys
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        names = [r["method"] for r in rows]
        parts = np.array([_split((r.get(k), r.get(k + "_lo"), r.get(k + "_hi")) if k + "_lo" in r
                                 else (r.get(k), (r.get(k) or 0) - (r.get(k + "_std") or 0),
                                       (r.get(k) or 0) + (r.get(k + "_std") or 0))) for r in rows]).reshape(-1, 3)
        ax.bar(names, parts[:, 0], yerr=parts[:, 1:].T, color=[method_colour(m, "grey") for m in names],
               capsize=3)
        ax.set_title(k)
        ax.tick_params(axis="x", rotation=45)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap(matrix: np.ndarray, row_labels, col_labels, title: str, fmt: str = "{:.2f}"):
    """A molecule × method heatmap of one metric (Fig. S2 analogue)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(col_labels) + 2, 0.5 * len(row_labels) + 1.5))
    im = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45)
    ax.set_yticks(range(len(row_labels)), row_labels)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, fmt.format(matrix[i, j]), ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def gmm_selection(curve: list[dict], title: str = "GMM: BIC and silhouette (Fig. S5)"):
    plt = _plt()
    k = [c["components"] for c in curve]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(k, [c["bic"] for c in curve], "o-", color="C0")
    ax.set_xlabel("components")
    ax.set_ylabel("BIC", color="C0")
    ax2 = ax.twinx()
    sil = [np.nan if c["silhouette"] is None else c["silhouette"] for c in curve]
    ax2.plot(k, sil, "s--", color="C1")
    ax2.set_ylabel("silhouette", color="C1")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def gmm_pca(features: np.ndarray, labels: np.ndarray, means: np.ndarray | None = None,
            title: str = "latent features, PCA (Fig. S4)"):
    from sklearn.decomposition import PCA

    plt = _plt()
    pca = PCA(2).fit(features)
    xy = pca.transform(features)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(xy[:, 0], xy[:, 1], c=labels, s=4, cmap="tab10")
    if means is not None:
        m = pca.transform(means)
        ax.scatter(m[:, 0], m[:, 1], marker="x", c="k", s=40)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def energy_histograms(per_generation: dict, title: str = "training energies per generation"):
    """{generation: {method: energies relative to the initial minimum}} → one panel per method."""
    plt = _plt()
    methods = sorted({m for g in per_generation.values() for m in g})
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 3.0), squeeze=False)
    for ax, m in zip(axes[0], methods):
        for g, d in sorted(per_generation.items()):
            if m in d and len(d[m]):
                ax.hist(d[m], bins=30, alpha=0.5, label=f"gen {g}")
        ax.set_title(m)
        ax.set_xlabel("energy (kcal/mol)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def attack_energy_rmsd(samples: dict, title: str = "adversarial samples: energy vs RMSD (Fig. S17)"):
    """{method: (rmsd, energy)} of the labelled adversarial samples."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for m, (r, e) in samples.items():
        ax.scatter(r, e, s=12, label=m, color=method_colour(m))
    ax.set_xlabel("RMSD from seed (Å)")
    ax.set_ylabel("reference energy (kcal/mol, rel. to training min)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _split(v):
    """A bar's value: a number, or (estimate, low, high) of a 95% interval (drawn as an error bar)."""
    if v is None:
        return np.nan, 0.0, 0.0
    if isinstance(v, (tuple, list)):
        est, lo, hi = (np.nan if x is None else float(x) for x in v)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return est, 0.0, 0.0
        return est, max(est - lo, 0.0), max(hi - est, 0.0)
    return float(v), 0.0, 0.0


def _bars(ax, values: dict, ylabel: str) -> None:
    """{group: {method: value or (estimate, low, high)}} as grouped bars on ``ax``, intervals as error bars
    (None or missing values leave a gap)."""
    groups = list(values)
    methods = sorted({m for g in values.values() for m in g})
    w = 0.8 / max(len(methods), 1)
    for k, m in enumerate(methods):
        parts = np.array([_split(values[g].get(m)) for g in groups]).reshape(-1, 3)
        err = parts[:, 1:].T if parts[:, 1:].any() else None
        ax.bar(np.arange(len(groups)) + k * w, parts[:, 0], w, yerr=err, capsize=2, label=m,
               color=method_colour(m))
    ax.set_xticks(np.arange(len(groups)) + w * (len(methods) - 1) / 2, [str(g) for g in groups])
    ax.set_ylabel(ylabel)


def grouped_bars(values: dict, ylabel: str, title: str):
    """{group (e.g. generation): {method: value or (estimate, low, high)}} as grouped bars with error bars."""
    plt = _plt()
    n_methods = len({m for g in values.values() for m in g})
    fig, ax = plt.subplots(figsize=(1.2 + 1.4 * len(values) * max(1, n_methods / 3), 3.3))
    _bars(ax, values, ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def cost_bars(wall: dict, memory: dict, title: str = "training cost per method (Fig. 2b)"):
    """{group: {method: training wall time (s)}} and {group: {method: peak MB of a training step}}."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4))
    _bars(axes[0], wall, "training wall time (s)")
    _bars(axes[1], memory, "peak memory of a training step (MB)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def neb_profiles(profiles: dict, title: str = "NH3 inversion (NEB)"):
    """{label: (reaction coordinate, energy kcal/mol)}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for label, (x, e) in profiles.items():
        ax.plot(x, e, "o-", ms=3, label=label, color="k" if label.startswith("oracle") else None)
    ax.set_xlabel("reaction coordinate (normalised)")
    ax.set_ylabel("energy (kcal/mol)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def distributions(per_generation: dict, xlabel: str, title: str):
    """{generation: values} as overlaid histograms."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.3))
    for g, v in sorted(per_generation.items()):
        if len(v):
            ax.hist(v, bins=40, alpha=0.5, label=f"gen {g}")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig
