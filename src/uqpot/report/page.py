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
from pathlib import Path

import numpy as np

from ..core.provenance import versions, write_json, write_text
from ..uq import method_class
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


DETERMINISM_NOTE = ("Determinism: every step ran with a fixed number of PyTorch threads ('threads' below), so the "
                    "numbers do not depend on the executor, the number of workers or the order in which they "
                    "finished; a GPU run is reproducible to float tolerance only (atomic scatter-adds).")


def _provenance_section(rep: Report, run: Path, extra_dir: Path | None = None) -> None:
    rep.heading("Run")
    info = {}
    for d in dict.fromkeys([run, extra_dir or run]):
        for name in ("reproduce.json", "run.json"):
            if (d / name).is_file():
                info.update(json.loads((d / name).read_text()))
    vers = info.get("versions") or versions()
    rows = [{"item": k, "value": v} for k, v in vers.items()]
    rows.append({"item": "hardware", "value": f"{platform.machine()} {platform.processor() or ''}".strip()})
    for k in ("system", "preset", "executor", "seeds", "threads", "objective", "stress_weight", "wall_seconds",
              "started", "finished"):
        if k in info:
            rows.append({"item": k, "value": info[k]})
    rep.table("provenance", rows, ["item", "value"], "versions, hardware, wall time")
    rep.paragraph(DETERMINISM_NOTE)
    cfg = (extra_dir or run) / "config.yaml"
    if cfg.is_file():
        rep.heading("Resolved configuration", 3)
        rep.pre(cfg.read_text())


def fidelity_tables() -> list[tuple[str, list[dict]]]:
    """The tables of ``uqpot/fidelity.md`` (every departure from the paper, its reason and effect): (heading,
    rows) per table, read from the markdown shipped with the package."""
    from importlib.resources import files

    tables, heading, rows, cols = [], "", None, None
    for line in files("uqpot").joinpath("fidelity.md").read_text().splitlines() + [""]:
        if line.startswith("## "):
            heading = line[3:].strip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cols is None:
                cols, rows = cells, []
            elif not all(set(c) <= set("-: ") for c in cells):
                rows.append(dict(zip(cols, cells)))
        elif cols is not None:
            tables.append((heading, rows))
            cols, rows = None, None
    return tables


def fidelity_section(rep: Report) -> None:
    """Where uqpot's study departs from the paper (``uqpot/fidelity.md`` of the installed package), as
    tables of the report (``table_fidelity_<k>.csv``)."""
    rep.heading("Where this study departs from the paper")
    rep.paragraph("Every deliberate departure from the paper (main text and SI), with its reason and, where "
                  "measured, its effect; the same tables as fidelity.md in the uqpot package (src/uqpot/fidelity.md "
                  "in its source).")
    for k, (heading, rows) in enumerate(fidelity_tables()):
        rep.table(f"fidelity_{k + 1}", rows, caption=heading)


def _load_npz(path: Path):
    return dict(np.load(path)) if path.is_file() else None


def mixture_figures(method: str) -> bool:
    """Whether the report draws ``method``'s mixture figures (:attr:`UQMethod.mixture_figures`)."""
    try:
        return method_class(method).mixture_figures
    except ValueError:  # a method not registered in this process
        return False


def _gmm_figures(rep: Report, model_dir: Path, train_set, label: str) -> None:
    """BIC and silhouette against the number of components (Fig. S5) and the PCA of the training set's latent
    features coloured by component (Fig. S4), for the GMM model in ``model_dir``."""
    info = json.loads((model_dir / "summary.json").read_text()).get("posthoc", {})
    if info.get("curve"):
        rep.figure(fg.gmm_selection(info["curve"]), f"GMM: BIC and silhouette score against components ({label})")
    try:
        import torch

        from ..evaluation.models import load

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
