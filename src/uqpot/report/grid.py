"""The report of a grid of trainings (``uqpot reproduce rmd17``: molecule × split × seed × method): the
paper's rMD17 claims checked first (Fig. 2c, Table S2), then every metric as a mean over splits and seeds
with its 95% t-interval, the Table S2 analogue beside the paper's values, and the supporting figures.

A claim's effect is paired by (molecule, split, seed): both methods of a comparison are trained on the same
structures with the same seed; one unit alone falls back on the bootstrap over its test structures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import claims as claims_mod
from ..metrics.registry import metrics, names, table_names
from ..core.provenance import write_json
from ..systems import system_names
from . import figures as fg
from .page import (CALIBRATION_NOTE, Report, _cost_section, _gmm_figures, _load_npz, _provenance_section,
                   fidelity_section, mixture_figures)

def _unit(job: dict) -> str:
    return f"{job['molecule']}/split{job.get('split', 0)}/seed{job.get('seed', 0)}"


def observations(results: list[dict]) -> claims_mod.Observations:
    """Every job's test metrics for the claims, one replicate unit per (molecule, split, seed)."""
    obs = claims_mod.Observations(last_generation=1, unit="(molecule, split, seed)")
    outs = {}
    for r in results:
        u, m = _unit(r["job"]), r["job"]["method"]
        outs[(m, u)] = Path(r["job"]["out"])
        for q in claims_mod.quantities():
            v = r["test"].get(q)
            if v is not None and np.isfinite(v):
                obs.values.setdefault((m, 1, q), {})[u] = float(v)

    def predictions(m, g, u):
        p = _load_npz(outs[(m, u)] / "test_predictions.npz") if (m, u) in outs else None
        if p is None or "uncertainty" not in p:
            return None
        return np.asarray(p["uncertainty"], dtype=float), np.asarray(p["forces_sq_error"], dtype=float)

    obs.predictions = predictions
    return obs


def _interval_columns(keys) -> list[str]:
    return [c for k in keys for c in (k, f"{k}_lo", f"{k}_hi")]


def grid_system(run: Path) -> str | None:
    """The system of the grid in ``run``: the one its ``reproduce.json`` names, else the registered grid system
    when there is one only (a grid run by hand), else None (no claims checked)."""
    meta = Path(run) / "reproduce.json"
    if meta.is_file():
        system = json.loads(meta.read_text()).get("system")
        if system:
            return system
    known = system_names("grid")
    return known[0] if len(known) == 1 else None


def build_grid_report(run: Path, title: str | None = None, system: str | None = None) -> Path:
    """Report of a grid of trainings (rMD17: molecule × split × seed × method); ``system``: whose claims are
    checked (None: :func:`grid_system`)."""
    from ..fit.grid import PAPER_TABLE_S2, table

    run = Path(run)
    system = system or grid_system(run)
    results = [json.loads(p.read_text()) for p in sorted(run.glob("**/summary.json")) if "job" in
               json.loads(p.read_text())]
    rep = Report(title or "uqpot: UQ methods on rMD17")
    if not results:
        rep.paragraph("no finished jobs yet")
        return rep.write(run, {})
    for r in results:
        r["job"].setdefault("molecule", Path(r["job"]["data"]).stem)
        r["job"]["molecule"] = _short(r["job"]["molecule"])
    molecules = sorted({r["job"]["molecule"] for r in results})
    seeds = sorted({r["job"].get("seed", 0) for r in results})
    splits = sorted({r["job"].get("split", 0) for r in results})
    rep.paragraph(f"Molecules {', '.join(molecules)}; splits {', '.join(map(str, splits))}; seeds "
                  f"{', '.join(map(str, seeds))}. Every number is a mean over splits and seeds with its 95% "
                  "t-interval (none from a single run); a claim's effect is paired by molecule, split and seed.")
    claim_results = claims_mod.check(system, observations(results)) if system else []
    rep.heading("The paper's claims, checked")
    claims_mod.add_to_report(rep, claim_results)
    fidelity_section(rep)
    rep.paragraph(CALIBRATION_NOTE)
    rows = table(results, group=("molecule", "method"))
    overall = table(results, group=("method",))
    rep.heading("Metrics per molecule and method (mean over splits and seeds, 95% intervals)")
    # Table S2's columns: the ROC-AUC metrics at the paper's error percentiles (20th and 50th)
    roc_auc = tuple(m.name for m in metrics(kind="uq") if m.percentile in (20, 50))
    keys = table_names(optional=False)
    rep.table("metrics", rows, ["molecule", "method", "n", *_interval_columns(keys), "epochs", "wall_seconds"])
    s2 = []
    for r in rows + [dict(o, molecule="mean") for o in overall] if len(molecules) > 1 else rows:
        paper = PAPER_TABLE_S2.get(r["molecule"], {}).get(r["method"], (None, None))
        s2.append({"molecule": r["molecule"], "method": r["method"], "n": r["n"],
                   **{c: r.get(c) for c in _interval_columns(roc_auc)},
                   "paper_roc_auc_p20": paper[0], "paper_roc_auc_p50": paper[1]})
    rep.heading("ROC-AUC at the 20th and 50th error percentile (Table S2 analogue)")
    rep.table("table_s2", s2, caption="uqpot's mean with its 95% interval beside the paper's value")
    for mol in molecules:
        mrows = [r for r in rows if r["molecule"] == mol]
        rep.figure(fg.metric_bars(mrows, title=mol), f"{mol}: UQ metrics per method (error bars: 95% interval)")
        rep.figure(fg.metric_bars(mrows, keys=names(kind="error", table=True, optional=False), title=mol),
                   f"{mol}: force and energy MAE per method (error bars: 95% interval)")
        entries = []
        for r in results:
            if r["job"]["molecule"] != mol:
                continue
            p = _load_npz(Path(r["job"]["out"]) / "test_predictions.npz")
            if p is not None and "uncertainty" in p and not any(e["method"] == r["job"]["method"] for e in entries):
                entries.append({"name": f"{r['job']['method']}", "method": r["job"]["method"],
                                "uncertainty": p["uncertainty"], "error": p["forces_sq_error"], "metrics": r["test"]})
        if entries:
            rep.figure(fg.hexbins(entries, mol), f"{mol}: uncertainty against squared force error (first split "
                                                 "and seed)")
    methods = sorted({r["method"] for r in rows})
    for key in names(kind="uq", summary=True):
        mat = np.array([[next((r[key] for r in rows if r["molecule"] == mol and r["method"] == m and r[key] is not None),
                              np.nan) for m in methods] for mol in molecules], dtype=float)
        rep.figure(fg.heatmap(mat, molecules, methods, key), f"{key} per molecule and method (Fig. S2 analogue)")
    _grid_supporting_figures(rep, results, molecules)
    first = min((r["job"].get("split", 0), r["job"].get("seed", 0)) for r in results)
    _cost_section(rep, [(r["job"]["molecule"], r["job"]["method"],
                         {"train_seconds": r.get("wall_seconds"), "epochs": r["training"].get("epochs_run"),
                          "step_peak_mb": r["training"].get("step_peak_mb")})
                        for r in results if (r["job"].get("split", 0), r["job"].get("seed", 0)) == first], run)
    _provenance_section(rep, run)
    write_json(run / "claims.json", {"system": system, "seeds": seeds, "claims": claim_results})
    return rep.write(run, {"rows": rows, "claims": claim_results})


def _short(molecule: str) -> str:
    """``rmd17_ethanol_800`` or ``ethanol`` -> ``ethanol`` (the paper's row name), else unchanged."""
    from ..fit.grid import PAPER_TABLE_S2

    name = molecule.replace("rmd17_", "").split("_")[0]
    return name if name in PAPER_TABLE_S2 else molecule


def _grid_supporting_figures(rep: Report, results: list[dict], molecules: list[str]) -> None:
    """Parity plots (SI Figs. S12-S13) and the GMM's component selection and latent-space PCA (Figs. S4-S5)
    of each molecule's first split."""
    for mol in molecules:
        jobs = [r for r in results if r["job"]["molecule"] == mol]
        first = min((r["job"].get("split", 0), r["job"].get("seed", 0)) for r in jobs)
        jobs = sorted((r for r in jobs if (r["job"].get("split", 0), r["job"].get("seed", 0)) == first),
                      key=lambda r: r["job"]["method"])
        first = f"{first[0]}, seed {first[1]}"
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
            if not mixture_figures(r["job"]["method"]):
                continue

            def train_set(r=r, d=d):
                from ..data.io import ReadOptions, read_structures
                from ..data.splits import load_split

                if not (d / "split.json").is_file():
                    raise FileNotFoundError(f"{d / 'split.json'} not found (the job's training indices)")
                data = read_structures(r["job"]["data"], ReadOptions(**r["job"].get("read", {})))
                return data.subset(load_split(d / "split.json")["train"])

            _gmm_figures(rep, d, train_set, f"{mol}, split {first}")

