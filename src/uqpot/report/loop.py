"""The report of an active-learning study (``uqpot reproduce ammonia|silica``, ``uqpot loop``): the paper's
claims checked first, then every number with its 95% interval.

A study runs its loop once per seed (``OUT/seed{s}``, see :mod:`uqpot.studies.study`); a plain loop is one
seed in ``OUT``.  Kept whole (under 400 lines): one report, read top to bottom in the order its sections appear;
the optional sections (samplers, --seeds auto, the stopping rule) live in modules of their own.  Tables
(``table_<name>.csv``, and ``results.json``):

* ``claims``: each claim of the paper for this system, its comparisons, effects, intervals and verdicts
  (:mod:`uqpot.report.claims`); also ``claims.json``;
* ``summary``: per generation and method, the mean over seeds of every metric with its t-interval over
  seeds (``<key>_lo``, ``<key>_hi``), and the stable-MD fraction with the **seed as the unit**
  (:func:`stable_md_columns`): the mean of the seeds' fractions with the t-interval over them
  (``stable_md_fraction_lo/_hi``; :func:`uqpot.metrics.intervals.seed_proportion`), its kind in
  ``stable_md_interval`` (one seed: the within-seed Wilson interval, so labelled); the trajectories of a
  seed share one trained model and are not independent units.  For contrast only, the Wilson interval of
  all ``stable_md_runs`` trajectories pooled as if independent (``stable_md_fraction_pooled_wilson_lo/_hi``,
  two or more seeds: far too narrow);
  ``md_failed_<reason>`` counts the failed trajectories by their first failure (collision, dissociation,
  below_ground_state, ...): for NH3 most failures of an inaccurate model are ``below_ground_state`` (the
  model's energy falls below the training minimum near the minimum), not a broken molecule;
* ``sequential`` (a study run with ``--seeds auto``, :mod:`uqpot.studies.sequential`, whose record
  ``OUT/sequential.json`` ends with the seeds reported): one row per look, its seeds, level α_k, the claims
  resolved / unresolved / undecidable and the decision; the claims table then uses the last look's α_k;
* ``final`` (a loop with ``until``): every method's final model and what it is good for
  (:mod:`uqpot.report.final`);
* ``seeds``: one row per seed, generation and method, with bootstrap intervals over the test structures
  for Spearman and ROC-AUC (1000 resamples, seeded) and the within-seed Wilson interval of its stable-MD
  fraction over its own trajectories (``stable_md_fraction_within_seed_lo/_hi``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml

from . import claims as claims_mod
from ..metrics import intervals as iv
from ..metrics.registry import MetricInputs, metrics, table_names
from ..core.provenance import write_json
from . import figures as fg
from .sequential import sequential_record, sequential_section
from .observations import uq_predictions, observations
from .page import (CALIBRATION_NOTE, Report, _cost_section, _gmm_figures, _load_npz, _provenance_section,
                   fidelity_section, mixture_figures)
from .final import final_section
from ..loop.stopping import record_column

#: a seed's values besides the table metrics (uqpot.metrics.registry.table_names), averaged over seeds
LOOP_KEYS = ("samples_added", "neb_barrier", "neb_barrier_error", "md_mean_stable_time_fs")
BOOTSTRAP_RESAMPLES = 1000
INTERVAL_NOTE = (
    "Intervals are 95%. Metrics and errors: mean over seeds with Student's t-interval (none for one seed), "
    "cut at the quantity's range (an AUC at 1, an error at 0). "
    "Stable-MD fraction: the seed is the unit (the trajectories of a seed share one trained model): mean of the "
    "seeds' fractions with the t-interval over them, never narrower than the Wilson interval of all trajectories "
    "(a cluster bootstrap over 3-10 seeds would be too narrow); with one seed the within-seed Wilson interval, so "
    "labelled (stable_md_interval). The pooled Wilson interval (…_pooled_wilson) treats trajectories as "
    "independent and is shown for contrast only. Per seed: Spearman and ROC-AUC with the percentile bootstrap "
    "over test structures, the stable fraction with its within-seed Wilson interval. A claim's effect is paired "
    "by seed (t over seeds, p of the paired t-test, Holm's correction over the report's comparisons); with one "
    "seed, Newcombe's interval over trajectories or the bootstrap over test structures.")


def loop_dirs(run: Path) -> list[tuple[int, Path]]:
    """(seed, loop directory) of every finished or running replicate of a study or loop directory."""
    run = Path(run)
    study = run / "study.json"
    if study.is_file():
        seeds = json.loads(study.read_text())["seeds"]
        return [(int(s), run / f"seed{s}") for s in seeds if (run / f"seed{s}" / "summary.json").is_file()]
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
        if "per_seed" in summary:
            return [(int(s), run / f"seed{s}") for s in summary["per_seed"]]
        cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
        return [(int(cfg.get("seed", 0)), run)]
    return []


def _md_counts(md: dict | None) -> tuple[int, int] | None:
    if not md:
        return None
    per_t = md.get("per_temperature") or {}
    if per_t:
        return int(sum(v["stable"] for v in per_t.values())), int(sum(v["runs"] for v in per_t.values()))
    n = int(md.get("runs", 0))
    return int(round(md["fraction_stable"] * n)), n


def _md_failures(md: dict) -> dict:
    """Failed trajectories per reason (collision, dissociation, below_ground_state, ...), all temperatures."""
    out: dict = {}
    for v in (md.get("per_temperature") or {}).values():
        for reason, n in (v.get("failure_reasons") or {}).items():
            out[reason] = out.get(reason, 0) + int(n)
    return out


def records(run: Path) -> tuple[list[dict], dict]:
    """One record per (seed, generation, method), and the first seed's loop config."""
    out, cfg0 = [], None
    for seed, d in loop_dirs(run):
        summary = json.loads((d / "summary.json").read_text())
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg0 = cfg0 or cfg
        for g, gsum in summary["generations"].items():
            for m in cfg["methods"]:
                r = gsum.get(m)
                if not r:
                    continue
                t, lab, md, neb = r["test"], r.get("label") or {}, r.get("md"), r.get("neb") or {}
                rec = {"seed": seed, "generation": int(g), "method": m, "dir": str(d), "n_train": r["n_train"],
                       **{k: t.get(k) for k in table_names()}, "samples_added": lab.get("n_added"),
                       "oracle_failures": lab.get("n_failed"), "added_E_min": lab.get("energy_rel_min"),
                       "added_E_max": lab.get("energy_rel_max"), "neb_barrier": neb.get("barrier"),
                       "neb_barrier_oracle": neb.get("oracle_barrier"),
                       "train_seconds": r.get("train_seconds"), "epochs": r.get("epochs"),
                       "step_peak_mb": r.get("step_peak_mb")}
                if neb.get("barrier") is not None and neb.get("oracle_barrier") is not None:
                    rec["neb_barrier_error"] = abs(neb["barrier"] - neb["oracle_barrier"])
                counts = _md_counts(md)
                if counts:
                    rec["md_stable"], rec["md_runs"] = counts
                    rec["md_failures"] = _md_failures(md)
                    rec["stable_md_fraction"] = counts[0] / counts[1] if counts[1] else None
                    rec["md_mean_stable_time_fs"] = md.get("mean_stable_time_fs")
                out.append(rec)
    return out, cfg0 or {}


def seed_rows(recs: list[dict]) -> list[dict]:
    """Per seed: the metrics, bootstrap intervals of Spearman and ROC-AUC, Wilson of the stable fraction."""
    rows = []
    for r in recs:
        row = {k: r.get(k) for k in ("seed", "generation", "method", "n_train", *table_names(), "samples_added",
                                     "added_E_min", "added_E_max", "neb_barrier", "neb_barrier_oracle")}
        if row.get("stress_mae") is None:  # molecules: no stress
            row.pop("stress_mae", None)
        pred = uq_predictions(r)
        if pred is not None:
            for m in metrics(kind="uq", needs_calibration=False, summary=True):  # of U and ε alone
                _, lo, hi = iv.bootstrap(lambda u, e, f=m.function: f(MetricInputs(u, e, None)), *pred,
                                         n_resamples=BOOTSTRAP_RESAMPLES, seed=1000 * r["seed"] + r["generation"],
                                         batched=m.batched)
                row[f"{m.name}_lo"], row[f"{m.name}_hi"] = lo, hi
        if r.get("md_runs"):
            p, lo, hi = iv.wilson(r["md_stable"], r["md_runs"])
            row.update(stable_md_fraction=p, stable_md_fraction_within_seed_lo=lo,
                       stable_md_fraction_within_seed_hi=hi, stable_md_runs=r["md_runs"])
        rows.append(row)
    return rows


def stable_md_columns(counts: list[tuple[int, int]]) -> dict:
    """The stable-MD columns of one (generation, method) cell from its seeds' (stable, runs) counts: the
    fraction and its interval with the seed as the unit (``stable_md_fraction``, ``_lo``, ``_hi``; which
    interval in ``stable_md_interval``), the trajectories (``stable_md_runs``) and, with two or more seeds,
    the pooled Wilson interval labelled as such (``stable_md_fraction_pooled_wilson_lo/_hi``)."""
    (p, lo, hi), how = iv.seed_proportion(counts)
    k, n = sum(int(a) for a, _ in counts), sum(int(b) for _, b in counts)
    out = {"stable_md_fraction": p, "stable_md_fraction_lo": lo, "stable_md_fraction_hi": hi,
           "stable_md_interval": how, "stable_md_runs": n}
    if len(counts) > 1:
        _, out["stable_md_fraction_pooled_wilson_lo"], out["stable_md_fraction_pooled_wilson_hi"] = iv.wilson(k, n)
    return out


def summary_rows(recs: list[dict]) -> list[dict]:
    """Per (generation, method): means over seeds with intervals (see the module docstring)."""
    cells: dict[tuple, list[dict]] = {}
    for r in recs:
        cells.setdefault((r["generation"], r["method"]), []).append(r)
    rows = []
    for (g, m), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], [r["method"] for r in recs].index(kv[0][1]))):
        row = {"generation": g, "method": m, "n_seeds": len(rs),
               "n_train": iv.mean_interval([r["n_train"] for r in rs])[0]}
        for k in (*table_names(), *LOOP_KEYS):
            vals = [r.get(k) for r in rs]
            if all(v is None for v in vals):
                continue
            row[k], row[f"{k}_lo"], row[f"{k}_hi"] = iv.mean_interval(vals, bounds=iv.RANGES.get(k, (None, None)))
        md = [r for r in rs if r.get("md_runs")]
        if md:
            row.update(stable_md_columns([(r["md_stable"], r["md_runs"]) for r in md]))
            for r in md:
                for reason, c in r.get("md_failures", {}).items():
                    row[f"md_failed_{reason}"] = row.get(f"md_failed_{reason}", 0) + c
        oracle = [r["neb_barrier_oracle"] for r in rs if r.get("neb_barrier_oracle") is not None]
        if oracle:
            row["neb_barrier_oracle"] = oracle[0]
        rows.append(row)
    return rows


def _interval_bars(rows: list[dict], key: str) -> dict:
    """{generation: {method: (estimate, low, high)}} of a summary column."""
    out: dict = {}
    for r in rows:
        if r.get(key) is not None:
            out.setdefault(f"gen {r['generation']}", {})[r["method"]] = (r[key], r.get(f"{key}_lo"), r.get(f"{key}_hi"))
    return out


def build_loop_report(run: Path, title: str | None = None) -> Path:
    from ..data.io import ReadOptions, read_structures

    run = Path(run)
    recs, cfg = records(run)
    dirs = loop_dirs(run)
    if not recs:
        from ..core.errors import UqpotError

        raise UqpotError(f"{run}: no finished generation to report yet")
    system = cfg.get("system", "system")
    methods = cfg["methods"]
    seeds = sorted({r["seed"] for r in recs})
    gens = sorted({r["generation"] for r in recs})
    rep = Report(title or f"uqpot active learning: {system}")
    rep.paragraph(f"Seeds: {', '.join(map(str, seeds))} ({len(seeds)} replicate(s) of the whole loop on one data "
                  f"set). {INTERVAL_NOTE}")

    seq = sequential_record(run, seeds)
    alpha = seq["final_alpha"] if seq else 0.05
    claim_results = claims_mod.check(system, observations(recs), alpha=alpha)
    rep.heading("The paper's claims, checked")
    if seq:
        sequential_section(rep, seq)
    claims_mod.add_to_report(rep, claim_results, alpha, f": the last look's share of 0.05, {seq['spending']}; see "
                                                        "table sequential" if seq else "")
    fidelity_section(rep)
    rows = summary_rows(recs)
    rep.heading("Summary per generation and method (mean over seeds, 95% intervals)")
    rep.paragraph(CALIBRATION_NOTE)
    rep.table("summary", rows, _summary_columns(rows), caption="test-set metrics, samples added after the "
              "generation, stable-MD fraction (the seed as the unit: t over the seeds' fractions, or within-seed "
              "Wilson for one seed, as stable_md_interval says; pooled_wilson: all trajectories as if independent, "
              "for contrast only), NEB barrier (kcal/mol)")
    rep.heading("Per seed", 3)
    rep.table("seeds", seed_rows(recs), caption="bootstrap intervals over the test structures (Spearman, ROC-AUC) "
                                                "and within-seed Wilson intervals over the seed's own trajectories "
                                                "(stable-MD fraction)")

    stopping_section(rep, dirs)
    final_section(rep, dirs)
    md = _interval_bars(rows, "stable_md_fraction")
    if md:
        kinds = sorted({r["stable_md_interval"].split(",")[0].split(" (")[0] for r in rows if r.get("stable_md_interval")})
        rep.figure(fg.grouped_bars(md, "fraction of stable trajectories", "MD stability per generation"),
                   "fraction of stable NVT trajectories per generation and method (mean of the seeds' fractions; "
                   f"error bars: 95% interval with the seed as the unit: {'; '.join(kinds)}; a t-interval is never narrower "
                   "than the Wilson interval of all trajectories)")
    for key, label in (("spearman", "Spearman ρ"), ("roc_auc_p20", "ROC-AUC (20th percentile)"),
                       ("forces_mae", "test force MAE (kcal/mol/Å)"), ("neb_barrier_error", "|NEB barrier error| (kcal/mol)")):
        bars = _interval_bars(rows, key)
        if bars:
            rep.figure(fg.grouped_bars(bars, label, f"{label} per generation"),
                       f"{label} per generation and method (mean over seeds; error bars: 95% t-interval)")

    first_seed, first_dir = dirs[0]
    for g in sorted({gens[0], gens[-1]}):
        entries = []
        for m in methods:
            r = next((x for x in recs if x["seed"] == first_seed and x["generation"] == g and x["method"] == m), None)
            p = _load_npz(first_dir / f"gen{g}" / m / "train" / "test_predictions.npz")
            if r is not None and p is not None and "uncertainty" in p:
                entries.append({"name": f"{m} (gen {g})", "method": m, "uncertainty": p["uncertainty"],
                                "error": p["forces_sq_error"], "metrics": r})
        if entries:
            rep.figure(fg.hexbins(entries), f"uncertainty against squared force error on the test set, generation "
                                            f"{g} (seed {first_seed})")
        entries = []
        for m in methods:
            p = _load_npz(first_dir / f"gen{g}" / m / "train" / "test_predictions.npz")
            if p is not None:
                entries.append({"name": f"{m} gen {g}", "method": m, **{k: p[k] for k in
                                ("energy_true", "energy_pred", "forces_true", "forces_pred")}})
        if entries:
            rep.figure(fg.parity(entries), f"parity of energies and forces on the test set, generation {g} "
                                           f"(seed {first_seed})")

    hist, e0 = {}, None
    for g in gens:
        hist[g] = {}
        for m in methods:
            path = first_dir / f"gen{g}" / m / "train" / "train.extxyz"
            if path.is_file():
                e = read_structures(path, ReadOptions(min_distance=0.0)).energies()
                e0 = e.min() if e0 is None else min(e0, e.min())
                hist[g][m] = e
    if any(hist.values()):
        rep.figure(fg.energy_histograms({g: {m: e - e0 for m, e in d.items()} for g, d in hist.items()}),
                   f"training-set energies per generation (relative to the initial minimum; seed {first_seed})")

    samples: dict = {}
    for _, d in dirs:
        for g in gens:
            for m in methods:
                path = d / f"gen{g}" / m / "attack" / "labelled.extxyz"
                if path.is_file() and path.stat().st_size:
                    ds = read_structures(path, ReadOptions(min_distance=0.0))
                    old = samples.get(m, ([], []))
                    samples[m] = (old[0] + [s.info.get("rmsd_from_seed", np.nan) for s in ds],
                                  old[1] + [s.info.get("energy_rel", np.nan) for s in ds])
    if samples:
        rep.figure(fg.attack_energy_rmsd(samples), "adversarial samples of every seed: reference energy against "
                                                   "RMSD from the seed structure")

    profiles = {}
    for g in sorted({gens[0], gens[-1]}):
        for m in methods:
            neb = _summary_entry(first_dir, g, m, "neb")
            if neb and neb.get("path"):
                profiles[f"{m} gen {g}"] = (neb["path"]["x"], neb["path"]["energy"])
                if neb.get("oracle_path"):
                    profiles["oracle"] = (neb["oracle_path"]["x"], neb["oracle_path"]["energy"])
    if profiles:
        rep.figure(fg.neb_profiles(profiles), f"NH3 inversion energy profile by NEB, first and last generation "
                                              f"(seed {first_seed})")

    for m in methods:
        d = first_dir / f"gen{gens[0]}" / m / "train"
        if mixture_figures(m) and (d / "summary.json").is_file():
            _gmm_figures(rep, d, lambda d=d: read_structures(d / "train.extxyz", ReadOptions(min_distance=0.0)),
                         f"gen {gens[0]}, seed {first_seed}")
    _cost_section(rep, [(f"gen {r['generation']}", r["method"], r) for r in recs if r["seed"] == first_seed], run)
    _provenance_section(rep, run if (run / "reproduce.json").is_file() else first_dir, extra_dir=first_dir)
    extra = {"holm_alpha": alpha, "sequential": seq} if seq else {}
    write_json(run / "claims.json", {"system": system, "seeds": seeds, "claims": claim_results, **extra})
    return rep.write(run, {"seeds": seeds, "claims": claim_results, **extra,
                           "built": time.strftime("%Y-%m-%d %H:%M:%S")})


#: the columns of the report's ``stopping`` table (a loop with ``until``: :mod:`uqpot.loop.stopping`)
STOPPING_COLUMNS = ("seed", "generation", "method", "fraction", "low", "high", "n_frames", "n_trajectories",
                    "labels_added", "check_above", "check_labels", "decision", "reason")


def stopping_section(rep: Report, dirs: list[tuple[int, Path]]) -> None:
    """The stopping rule's record (``OUT/stopping.json`` of every seed), when the loop has one: the fraction
    of exploration frames above the tolerance per generation and method with its 95% interval over the
    trajectories, the decision and its reason (a table, and the first seed's fractions as bars)."""
    rows = []
    for seed, d in dirs:
        path = d / "stopping.json"
        if path.is_file():
            rows += [{"seed": seed, **{k: record_column(r, k) for k in STOPPING_COLUMNS if k != "seed"}}
                     for r in json.loads(path.read_text())["records"]]
    if not rows:
        return
    first = rows[0]
    rep.heading("Stopping rule (until)")
    rep.paragraph(f"Per generation and method: the fraction of exploration frames whose calibrated RMS force error "
                  f"exceeds the tolerance, with its 95% t-interval over the trajectories (the trajectory is the unit; "
                  f"see uqpot.sample.stopping); a method stops when the upper end is below the target and the check "
                  f"(check_above of check_labels frames labelled by the oracle above the tolerance) does not "
                  f"contradict the prediction.")
    rep.table("stopping", rows, list(STOPPING_COLUMNS), caption="fraction above tolerance per generation (low, high: "
              "95% interval over trajectories), the decision and its reason")
    bars: dict = {}
    for r in rows:
        if r["seed"] == first["seed"] and r.get("fraction") is not None:
            bars.setdefault(f"gen {r['generation']}", {})[r["method"]] = (r["fraction"], r["low"], r["high"])
    if bars:
        rep.figure(fg.grouped_bars(bars, "fraction above tolerance", "stopping rule per generation"),
                   f"fraction of exploration frames above the tolerance (seed {first['seed']}; error bars: 95% "
                   "t-interval over the trajectories)")


def _summary_entry(loop_dir: Path, g: int, m: str, key: str):
    summary = json.loads((loop_dir / "summary.json").read_text())
    return (summary["generations"].get(str(g)) or summary["generations"].get(g) or {}).get(m, {}).get(key)


def _summary_columns(rows: list[dict]) -> list[str]:
    cols = ["generation", "method", "n_seeds", "n_train"]
    for k in (*table_names(summary=True), "stable_md_fraction", "md_mean_stable_time_fs", "samples_added",
              "neb_barrier"):
        if any(k in r or f"{k}_lo" in r for r in rows):
            cols += [c for c in (k, f"{k}_lo", f"{k}_hi") if any(c in r for r in rows)]
        if k == "stable_md_fraction" and any("stable_md_interval" in r for r in rows):
            cols += [c for c in ("stable_md_interval", "stable_md_fraction_pooled_wilson_lo",
                                 "stable_md_fraction_pooled_wilson_hi") if any(c in r for r in rows)]
    if any("stable_md_runs" in r for r in rows):
        cols.append("stable_md_runs")
        cols += sorted({k for r in rows for k in r if k.startswith("md_failed_")})
    if any("neb_barrier_oracle" in r for r in rows):
        cols.append("neb_barrier_oracle")
    return cols
