"""Self-contained HTML reports of a run (``uqpot report RUN_DIR``), with every number also in
``results.json`` and the tables as CSV.

A report embeds its figures as PNG data URIs, has no scripts and no external resources, and states the
resolved config, the versions, the hardware and the wall times.  It is rebuilt from the files of the run
directory alone, so it can be regenerated at any time.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import yaml

from ..provenance import versions, write_json, write_text
from . import figures as fg

CALIBRATION_NOTE = ("Force error ε(x) = mean over atoms and Cartesian components of (F̂ − F)², in (kcal/mol/Å)². "
                    "Spearman and ROC-AUC rank U against ε; ROC-AUC counts structures above the 20th (50th) "
                    "percentile of ε as high-error. Calibration (miscalibration area, cNLL): every force component "
                    "is a Gaussian residual with variance σ² = a·U + b, (a, b) fitted on the validation set "
                    "(Eq. 13); cNLL is the mean NLL per force component on the test set (Eq. 14).")


def _fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float):
        if not np.isfinite(v):
            return "—"
        return f"{v:.4g}"
    return html.escape(str(v))


class Report:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.tables: dict[str, list[dict]] = {}
        self.n_figures = 0

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, name: str, rows: list[dict], columns: list[str] | None = None, caption: str = "") -> None:
        if not rows:
            return
        columns = columns or list(rows[0])
        self.tables[name] = rows
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(f'<table id="{html.escape(name)}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}'
                          "</tbody></table>")

    def figure(self, fig_or_png, caption: str) -> None:
        data = fig_or_png if isinstance(fig_or_png, bytes) else fg.png(fig_or_png)
        b64 = base64.b64encode(data).decode()
        self.n_figures += 1
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                          f"<figcaption>Figure {self.n_figures}. {html.escape(caption)}</figcaption></figure>")

    def pre(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def html(self) -> str:
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
                 "th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
                 "caption{font-weight:bold;text-align:left;padding:4px}"
                 "figure{margin:1em 0}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow-x:auto;"
                 "font-size:85%}")
        return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}"
                f"</title><style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self.parts) + "</body></html>")

    def write(self, out_dir, results: dict) -> Path:
        out = Path(out_dir)
        for name, rows in self.tables.items():
            buf = io.StringIO()
            cols = list(dict.fromkeys(k for r in rows for k in r))
            w = csv.DictWriter(buf, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k) for k in cols})
            write_text(out / f"table_{name}.csv", buf.getvalue())
        write_json(out / "results.json", {**results, "tables": self.tables})
        write_text(out / "report.html", self.html())
        return out / "report.html"


def _provenance_section(rep: Report, run: Path) -> None:
    rep.heading("Run")
    info = {}
    for name in ("reproduce.json", "run.json"):
        if (run / name).is_file():
            info.update(json.loads((run / name).read_text()))
    vers = info.get("versions") or versions()
    rows = [{"item": k, "value": v} for k, v in vers.items()]
    rows.append({"item": "hardware", "value": f"{platform.machine()} {platform.processor() or ''}".strip()})
    for k in ("system", "preset", "executor", "wall_seconds", "started", "finished"):
        if k in info:
            rows.append({"item": k, "value": info[k]})
    rep.table("provenance", rows, ["item", "value"], "versions, hardware, wall time")
    cfg = run / "config.yaml"
    if cfg.is_file():
        rep.heading("Resolved configuration", 3)
        rep.pre(cfg.read_text())


# ---------------------------------------------------------------------------------------------- loops
def _load_npz(path: Path):
    return dict(np.load(path)) if path.is_file() else None


def loop_results(run: Path) -> dict:
    """Everything the report of an active-learning loop needs, from the run directory."""
    summary = json.loads((run / "summary.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    gens = {int(g): v for g, v in summary["generations"].items()}
    return {"summary": summary, "config": cfg, "generations": gens, "methods": cfg["methods"]}


def build_loop_report(run: Path, title: str | None = None) -> Path:
    from ..data.io import ReadOptions, read_structures

    run = Path(run)
    res = loop_results(run)
    gens, methods = res["generations"], res["methods"]
    last = max(gens)
    rep = Report(title or f"uqpot active learning: {res['config'].get('system', 'system')}")
    rep.paragraph(CALIBRATION_NOTE)

    rows = []
    for g in sorted(gens):
        for m in methods:
            r = gens[g].get(m)
            if not r:
                continue
            t = r["test"]
            lab = r.get("label") or {}
            md = r.get("md") or {}
            neb = r.get("neb") or {}
            rows.append({"generation": g, "method": m, "n_train": r["n_train"], "forces_mae": t.get("forces_mae"),
                         "energy_mae": t.get("energy_mae"), "spearman": t.get("spearman"),
                         "roc_auc_p20": t.get("roc_auc_p20"), "miscalibration_area": t.get("miscalibration_area"),
                         "cnll": t.get("cnll"), "samples_added": lab.get("n_added"),
                         "oracle_failures": lab.get("n_failed"),
                         "added_E_min": lab.get("energy_rel_min"), "added_E_max": lab.get("energy_rel_max"),
                         "stable_md_fraction": md.get("fraction_stable"),
                         "neb_barrier": neb.get("barrier"), "neb_barrier_oracle": neb.get("oracle_barrier")})
    rep.heading("Summary per generation and method")
    rep.table("summary", rows, caption="test-set metrics, samples added after the generation, stable-MD "
                                       "fraction, NEB barrier (kcal/mol)")

    # hexbins of the first and last generation (Fig. 3a/3d analogue)
    for g in sorted({min(gens), last}):
        entries = []
        for m in methods:
            p = _load_npz(run / f"gen{g}" / m / "train" / "test_predictions.npz")
            if p is not None and "uncertainty" in p:
                entries.append({"name": f"{m} (gen {g})", "method": m, "uncertainty": p["uncertainty"],
                                "error": p["forces_sq_error"], "metrics": gens[g][m]["test"]})
        if entries:
            rep.figure(fg.hexbins(entries), f"uncertainty against squared force error on the test set, generation {g}")

    # parity plots (SI Figs. S12-S13)
    for g in sorted({min(gens), last}):
        entries = []
        for m in methods:
            p = _load_npz(run / f"gen{g}" / m / "train" / "test_predictions.npz")
            if p is not None:
                entries.append({"name": f"{m} gen {g}", "method": m, **{k: p[k] for k in
                                ("energy_true", "energy_pred", "forces_true", "forces_pred")}})
        if entries:
            rep.figure(fg.parity(entries), f"parity of energies and forces on the test set, generation {g}")

    # training energies per generation (Fig. 3c analogue)
    hist = {}
    e0 = None
    for g in sorted(gens):
        hist[g] = {}
        for m in methods:
            path = run / f"gen{g}" / m / "train" / "train.extxyz"
            if path.is_file():
                e = read_structures(path, ReadOptions(min_distance=0.0)).energies()
                e0 = e.min() if e0 is None else min(e0, e.min())
                hist[g][m] = e
    if any(hist.values()):
        rep.figure(fg.energy_histograms({g: {m: e - e0 for m, e in d.items()} for g, d in hist.items()}),
                   "training-set energies per generation (relative to the initial minimum)")

    # adversarial samples: energy against RMSD (SI Fig. S17)
    samples = {}
    for g in sorted(gens):
        for m in methods:
            path = run / f"gen{g}" / m / "attack" / "labelled.extxyz"
            if path.is_file() and path.stat().st_size:
                ds = read_structures(path, ReadOptions(min_distance=0.0))
                r = [s.info.get("rmsd_from_seed", np.nan) for s in ds]
                e = [s.info.get("energy_rel", np.nan) for s in ds]
                old = samples.get(m, ([], []))
                samples[m] = (old[0] + r, old[1] + e)
    if samples:
        rep.figure(fg.attack_energy_rmsd(samples), "adversarial samples: reference energy against RMSD from the seed")

    # MD stability and NEB (Fig. 3b/3e, 4c)
    md = {g: {m: gens[g][m]["md"]["fraction_stable"] for m in methods
              if gens[g].get(m, {}).get("md")} for g in sorted(gens)}
    if any(md.values()):
        rep.figure(fg.grouped_bars(md, "fraction of stable trajectories", "MD stability per generation"),
                   "fraction of stable NVT trajectories per generation and method")
    profiles = {}
    for g in sorted({min(gens), last}):
        for m in methods:
            neb = gens[g].get(m, {}).get("neb")
            if neb and neb.get("path"):
                profiles[f"{m} gen {g}"] = (neb["path"]["x"], neb["path"]["energy"])
                if neb.get("oracle_path"):
                    profiles["oracle"] = (neb["oracle_path"]["x"], neb["oracle_path"]["energy"])
    if profiles:
        rep.figure(fg.neb_profiles(profiles), "NH3 inversion energy profile by NEB, first and last generation")

    _gmm_section(rep, run, gens, methods)
    _cost_section(rep, [(f"gen {g}", m, gens[g][m]) for g in sorted(gens) for m in methods if m in gens[g]], run)
    _provenance_section(rep, run)
    return rep.write(run, {"summary": res["summary"], "built": time.strftime("%Y-%m-%d %H:%M:%S")})


def _gmm_section(rep: Report, run: Path, gens: dict, methods: list[str]) -> None:
    if "gmm" not in methods:
        return
    g = min(gens)
    d = run / f"gen{g}" / "gmm" / "train"
    if not (d / "summary.json").is_file():
        return

    def train_set():
        from ..data.io import ReadOptions, read_structures

        return read_structures(d / "train.extxyz", ReadOptions(min_distance=0.0))

    _gmm_figures(rep, d, train_set, f"gen {g}")


def _gmm_figures(rep: Report, model_dir: Path, train_set, label: str) -> None:
    """BIC and silhouette against the number of components (Fig. S5) and the PCA of the training set's latent
    features coloured by component (Fig. S4), for the GMM model in ``model_dir``."""
    info = json.loads((model_dir / "summary.json").read_text()).get("posthoc", {})
    if info.get("curve"):
        rep.figure(fg.gmm_selection(info["curve"]), f"GMM: BIC and silhouette score against components ({label})")
    try:
        import torch

        from .. import load

        model = load(model_dir / "model.pt")
        X = model.features_of(train_set())
        with torch.no_grad():
            y = torch.as_tensor(X, dtype=torch.float64)
            yk = torch.einsum("nd,kde->nke", y, model.gmm_prec_chol) - torch.einsum(
                "kd,kde->ke", model.gmm_means, model.gmm_prec_chol)
            logp = -0.5 * yk.pow(2).sum(-1) + model.gmm_log_det + model.gmm_log_weights
            labels = logp.argmax(1).numpy()
        rep.figure(fg.gmm_pca(X, labels, model.gmm_means.numpy()),
                   f"PCA of the training set's latent features, coloured by GMM component (crosses: means; {label})")
    except Exception as exc:  # a figure is never worth failing the report
        rep.paragraph(f"(GMM feature figure skipped: {exc})")


def _cost_section(rep: Report, entries: list[tuple[str, str, dict]], run: Path) -> None:
    """``entries``: (group, method, record with train_seconds, epochs and step_peak_mb)."""
    rows = [{"group": g, "method": m, "train_seconds": r.get("train_seconds"), "epochs": r.get("epochs"),
             "step_peak_mb": r.get("step_peak_mb")} for g, m, r in entries]
    if not any(x["train_seconds"] for x in rows):
        return
    rep.table("cost", rows, caption="training wall time and peak memory of one training step per model "
                                    "(Fig. 2b analogue)")
    wall, memory = {}, {}
    for x in rows:
        wall.setdefault(x["group"], {})[x["method"]] = x["train_seconds"]
        memory.setdefault(x["group"], {})[x["method"]] = x["step_peak_mb"]
    rep.figure(fg.cost_bars(wall, memory), "training wall time and peak memory of a training step per method "
                                           "(Fig. 2b analogue)")


# ---------------------------------------------------------------------------------------------- grids
def build_grid_report(run: Path, title: str | None = None) -> Path:
    """Report of a grid of trainings (rMD17: molecule × split × method)."""
    from .benchmark import PAPER_TABLE_S2, table

    run = Path(run)
    results = [json.loads(p.read_text()) for p in sorted(run.glob("**/summary.json")) if "job" in
               json.loads(p.read_text())]
    rep = Report(title or "uqpot: UQ methods on rMD17")
    rep.paragraph(CALIBRATION_NOTE)
    if not results:
        rep.paragraph("no finished jobs yet")
        return rep.write(run, {})
    molecules = sorted({r["job"].get("molecule", Path(r["job"]["data"]).stem) for r in results})
    for r in results:
        r["job"].setdefault("molecule", Path(r["job"]["data"]).stem)
    rows = table(results, group=("molecule", "method"))
    rep.heading("Metrics per molecule and method (mean ± std over splits)")
    cols = ["molecule", "method", "n", "forces_mae", "forces_mae_std", "energy_mae", "spearman", "spearman_std",
            "roc_auc_p20", "roc_auc_p20_std", "roc_auc_p50", "miscalibration_area", "cnll", "epochs", "wall_seconds"]
    rep.table("metrics", rows, cols)
    # Table S2 analogue
    s2 = [{"molecule": r["molecule"], "method": r["method"], "roc_auc_p20": r["roc_auc_p20"],
           "roc_auc_p50": r["roc_auc_p50"],
           "paper_roc_auc_p20": PAPER_TABLE_S2.get(r["molecule"].replace("rmd17_", "").split("_")[0], {})
           .get(r["method"], (None,))[0]} for r in rows]
    rep.heading("ROC-AUC at the 20th and 50th error percentile (Table S2 analogue)")
    rep.table("table_s2", s2)
    for mol in molecules:
        mrows = [r for r in rows if r["molecule"] == mol]
        rep.figure(fg.metric_bars(mrows, title=mol), f"{mol}: UQ metrics per method (error bars: std over splits)")
        rep.figure(fg.metric_bars(mrows, keys=("forces_mae", "energy_mae"), title=mol),
                   f"{mol}: force and energy MAE per method")
        entries = []
        for r in results:
            if r["job"]["molecule"] != mol:
                continue
            p = _load_npz(Path(r["job"]["out"]) / "test_predictions.npz")
            if p is not None and "uncertainty" in p and not any(e["method"] == r["job"]["method"] for e in entries):
                entries.append({"name": f"{r['job']['method']}", "method": r["job"]["method"],
                                "uncertainty": p["uncertainty"], "error": p["forces_sq_error"], "metrics": r["test"]})
        if entries:
            rep.figure(fg.hexbins(entries, mol), f"{mol}: uncertainty against squared force error (first split)")
    methods = sorted({r["method"] for r in rows})
    for key in ("spearman", "roc_auc_p20", "miscalibration_area", "cnll"):
        mat = np.array([[next((r[key] for r in rows if r["molecule"] == mol and r["method"] == m and r[key] is not None),
                              np.nan) for m in methods] for mol in molecules], dtype=float)
        rep.figure(fg.heatmap(mat, molecules, methods, key), f"{key} per molecule and method (Fig. S2 analogue)")
    _grid_supporting_figures(rep, results, molecules)
    first = min(r["job"].get("split", 0) for r in results)
    _cost_section(rep, [(r["job"]["molecule"], r["job"]["method"],
                         {"train_seconds": r.get("wall_seconds"), "epochs": r["training"].get("epochs_run"),
                          "step_peak_mb": r["training"].get("step_peak_mb")})
                        for r in results if r["job"].get("split", 0) == first], run)
    _provenance_section(rep, run)
    return rep.write(run, {"rows": rows})


def _grid_supporting_figures(rep: Report, results: list[dict], molecules: list[str]) -> None:
    """Parity plots (SI Figs. S12-S13) and the GMM's component selection and latent-space PCA (Figs. S4-S5)
    of each molecule's first split."""
    for mol in molecules:
        jobs = [r for r in results if r["job"]["molecule"] == mol]
        first = min(r["job"].get("split", 0) for r in jobs)
        jobs = sorted((r for r in jobs if r["job"].get("split", 0) == first), key=lambda r: r["job"]["method"])
        entries = []
        for r in jobs:
            p = _load_npz(Path(r["job"]["out"]) / "test_predictions.npz")
            if p is not None:
                entries.append({"name": r["job"]["method"], "method": r["job"]["method"],
                                **{k: p[k] for k in ("energy_true", "energy_pred", "forces_true", "forces_pred")}})
        if entries:
            rep.figure(fg.parity(entries, mol), f"{mol}: parity of energies and forces on the test set (split {first})")
        for r in jobs:
            d = Path(r["job"]["out"])
            if r["job"]["method"] != "gmm":
                continue

            def train_set(r=r, d=d):
                from ..data.io import ReadOptions, read_structures
                from ..data.splits import load_split

                if not (d / "split.json").is_file():
                    raise FileNotFoundError(f"{d / 'split.json'} not found (the job's training indices)")
                data = read_structures(r["job"]["data"], ReadOptions(**r["job"].get("read", {})))
                return data.subset(load_split(d / "split.json")["train"])

            _gmm_figures(rep, d, train_set, f"{mol}, split {first}")


def build_report(run) -> Path:
    """The report that fits the run directory (an active-learning loop or a grid of trainings)."""
    run = Path(run)
    meta = json.loads((run / "reproduce.json").read_text()) if (run / "reproduce.json").is_file() else {}
    if meta.get("kind") == "grid" or (not (run / "summary.json").is_file() and list(run.glob("**/summary.json"))):
        return build_grid_report(run)
    cfg = run / "config.yaml"
    if cfg.is_file() and "generations" in (yaml.safe_load(cfg.read_text()) or {}):
        return build_loop_report(run)
    from ..errors import UqpotError

    raise UqpotError(f"{run}: not a uqpot run directory (no loop summary or grid results found)")
