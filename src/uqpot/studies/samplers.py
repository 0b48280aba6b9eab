"""``uqpot reproduce ammonia|silica --samplers adversarial,md,biased_md``: which sampler makes a potential
robust per oracle call.

The study's data set is built once (``OUT/data``) and every sampler runs the study's whole loop once per
seed in ``OUT/<sampler>/seed{s}`` (each sampler directory is a study of its own, with its own report), all
with one label store (``OUT/labels.db``: a structure two samplers both pick is labelled once).  Every
sampler gets the same oracle budget per generation: the attack's ``n_seeds`` candidates, which the MD
samplers' ``sampling.max_candidates`` defaults to.  ``OUT/report.html`` compares the samplers: for every
method and generation, the cumulative oracle calls before the generation's model, the test force MAE (mean
over seeds, 95% t-interval) and the stable-MD fraction with the seed as the unit (mean of the seeds'
fractions, t-interval over them; one seed: the within-seed Wilson interval, so labelled; see
:func:`uqpot.report.loop.stable_md_columns`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..core.config_io import load_config
from ..core.errors import ConfigError
from ..core.schema import option_list
from ..metrics import intervals as iv
from ..core.provenance import write_json
from ..sample import sampler_names


def check_samplers(samplers) -> list[str] | None:
    out = option_list(samplers, "--samplers")  # a comma-separated text or its items; distinct, not empty
    if out is None:
        return None
    bad = [s for s in out if s not in sampler_names()]
    if bad:
        raise ConfigError(None, f"--samplers: {', '.join(map(repr, bad))}; choose from {', '.join(sampler_names())}, each "
                                "once")
    return out


def run_sampler_study(preset, out: Path, samplers: list[str], executor=None, console=None,
                      overrides: dict | None = None, seeds=None) -> Path:
    from ..oracle import get_oracle
    from ..loop.replicates import run_loops
    from ..loop.active_learning import ActiveLearning
    from ..report.loop import build_loop_report
    from .study import Study, _build, _check_study, _data_config, _loop_config, _study_log, study_seeds

    study = load_config(preset, Study)
    out = Path(out)
    seeds = study_seeds(study, seeds, preset)
    cfgs = {s: [_loop_config(study, out, {**(overrides or {}), "sampler": s}, preset, seed=k, subdir=s)
                for k in seeds] for s in samplers}
    data_cfg = _data_config(study, preset)
    oracle = get_oracle(study.oracle.name, **study.oracle.options)
    out.mkdir(parents=True, exist_ok=True)
    for s in samplers:
        (out / s).mkdir(exist_ok=True)
        _check_study(out / s, study.system, seeds)
    log = _study_log(out, console)
    log(f"{study.system}: data set with {oracle.method}")
    _build(study, data_cfg, out / "data", out / "labels.db", oracle, executor, console)
    if len(samplers) > 1:
        log(f"{study.system}: generation 1 (the same for every sampler) with the {samplers[0]} loops; the other "
            "samplers start from copies")
        lead = [ActiveLearning(c, console=console, executor=executor) for c in cfgs[samplers[0]]]
        models_of_generation_one(lead, executor)
        for s in samplers[1:]:
            for src, dst in zip(cfgs[samplers[0]], cfgs[s]):
                share_generation_one(Path(src.out), Path(dst.out), dst.methods)
    flat = [(s, c) for s in samplers for c in cfgs[s]]
    log(f"{study.system}: samplers {', '.join(samplers)} x seeds {', '.join(map(str, seeds))}, "
        f"methods {', '.join(flat[0][1].methods)}")
    loops = [ActiveLearning(c, console=console, executor=executor) for _, c in flat]
    summaries = run_loops(loops, executor, log)
    for s in samplers:
        per = {str(c.seed): summ for (t, c), summ in zip(flat, summaries) if t == s}
        write_json(out / s / "summary.json", {"system": study.system, "sampler": s, "seeds": seeds, "per_seed": per})
        build_loop_report(out / s, title=f"uqpot: the {study.system} study, sampler {s}")
    return build_sampler_report(out, samplers)


def models_of_generation_one(loops, executor=None) -> None:
    """Generation 1's training, test, MD and NEB of every (loop, method), on the executor when it has
    workers (the shared backbones first)."""
    from ..loop.replicates import run_backbone, run_model_steps

    for al in loops:
        al.prepare()
    if executor is None or getattr(executor, "in_process", True):
        for al in loops:
            for m in al.cfg.methods:
                al.model_steps(1, m)
        return
    backbones = [executor.submit(run_backbone, al.cfg.model_dump(mode="json")) for al in loops if al.shared_methods()]
    for f in backbones:
        f.result()
    futures = [executor.submit(run_model_steps, al.cfg.model_dump(mode="json"), 1, m) for al in loops
               for m in al.cfg.methods]
    for f in futures:
        f.result()


def share_generation_one(src: Path, dst: Path, methods) -> None:
    """Copies generation 1's finished training, MD and NEB of every method (and the shared backbone) from
    the loop ``src`` to the loop ``dst`` of another sampler: with the same seed, data and settings they
    are what ``dst`` would compute (results are deterministic for a given seed), and the sampler enters only
    after them.  Each copy is marked with ``shared_from.json``; what ``dst`` already has is kept."""
    import shutil

    parts = [("gen1/backbone/train", None)] + [(f"gen1/{m}/{p}", m) for m in methods for p in ("train", "md", "neb.json")]
    for rel, method in parts:
        a, b = src / rel, dst / rel
        if not a.exists() or b.exists():
            continue
        b.parent.mkdir(parents=True, exist_ok=True)
        if a.is_dir():
            if not (a / "summary.json").is_file():  # an unfinished step: dst computes its own
                continue
            shutil.copytree(a, b)
        else:
            shutil.copy2(a, b)
        write_json(b.parent / "shared_from.json" if method else b / "shared_from.json",
                   {"source": str(src), "generation": 1, "why": "generation 1 does not depend on the sampler"})


def sampler_rows(out: Path, samplers: list[str]) -> list[dict]:
    """Per (sampler, method, generation): cumulative oracle calls before the generation (mean over seeds),
    test force MAE (mean, 95% t), stable-MD fraction with the seed as the unit (``stable_md_columns``)."""
    from ..report.loop import _md_counts, loop_dirs, stable_md_columns

    cells: dict = {}
    for s in samplers:
        # every seed's loop summary (written after each generation), so an unfinished study reports too
        for seed, d in loop_dirs(out / s):
            gens = json.loads((d / "summary.json").read_text())["generations"]
            if not gens:
                continue
            methods = list(next(iter(gens.values())))
            for m in methods:
                calls = 0
                for g in sorted(gens, key=int):
                    r = gens[g].get(m)
                    if not r:
                        continue
                    cell = cells.setdefault((s, m, int(g)), {"calls": [], "mae": [], "md": [], "cand": []})
                    cell["calls"].append(calls)
                    cell["mae"].append(r["test"].get("forces_mae"))
                    counts = _md_counts(r.get("md"))
                    if counts:
                        cell["md"].append(counts)
                    lab = r.get("label") or {}
                    calls += int(lab.get("oracle_calls") or 0) + int(lab.get("from_store") or 0)
                    if r.get("attack"):
                        cell["cand"].append(r["attack"].get("n_candidates"))
    rows = []
    for (s, m, g), c in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2], samplers.index(kv[0][0]))):
        row = {"method": m, "generation": g, "sampler": s, "n_seeds": len(c["mae"]),
               "oracle_labels_before": iv.mean_interval(c["calls"])[0]}
        row["forces_mae"], row["forces_mae_lo"], row["forces_mae_hi"] = iv.mean_interval(c["mae"], bounds=(0.0, None))
        if c["md"]:
            row.update(stable_md_columns(c["md"]))
        if c["cand"]:
            row["candidates_after"] = iv.mean_interval(c["cand"])[0]
        rows.append(row)
    return rows


def format_markdown(rows: list[dict]) -> str:
    def iv_(r, k, fmt="{:.3f}"):
        if r.get(k) is None:
            return "-"
        lo, hi = r.get(f"{k}_lo"), r.get(f"{k}_hi")
        txt = fmt.format(r[k])
        if lo is not None and hi is not None and lo == lo and hi == hi:
            txt += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
        return txt

    lines = ["| method | gen | sampler | seeds | labels before | test F MAE [95%] | stable MD [95%, seed as unit] | "
             "stable MD interval |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['generation']} | {r['sampler']} | {r['n_seeds']} | "
                     f"{r['oracle_labels_before']:.1f} | {iv_(r, 'forces_mae')} | {iv_(r, 'stable_md_fraction')} | "
                     f"{r.get('stable_md_interval', '-')} |")
    return "\n".join(lines) + "\n"


def build_sampler_report(out: Path, samplers: list[str] | None = None) -> Path:
    from ..report.page import Report

    out = Path(out)
    if samplers is None:
        samplers = [s for s in sampler_names() if (out / s / "study.json").is_file()]
    rows = sampler_rows(out, samplers)
    if not rows:
        raise ConfigError(out, "no sampler has a finished loop to compare yet")
    rep = Report("uqpot: samplers compared at equal oracle budget")
    rep.paragraph(f"Samplers: {', '.join(samplers)}; each sampler's own report: "
                  + ", ".join(f"{s}/report.html" for s in samplers) + ". Labels before: oracle labels (new calls "
                  "and labels from the shared store) that trained the generation's model, beyond the initial set, "
                  "mean over seeds. Test force MAE: mean over seeds with the 95% t-interval. Stable MD: the seed is the "
                  "unit (a seed's trajectories share one trained model): mean of the seeds' fractions with the 95% "
                  "t-interval over them, never narrower than the Wilson interval of all trajectories; one seed: the "
                  "within-seed Wilson interval, so labelled in 'stable MD interval'. pooled_wilson columns: all "
                  "trajectories as if independent, for contrast only.")
    rep.table("samplers", rows, caption="per method and generation, each sampler (kcal/mol/Å)")
    rep.pre(format_markdown(rows))
    (out / "samplers.md").write_text(format_markdown(rows))
    write_json(out / "samplers.json", {"samplers": samplers, "rows": rows,
                                       "built": time.strftime("%Y-%m-%d %H:%M:%S")})
    return rep.write(out, {"samplers": samplers, "built": time.strftime("%Y-%m-%d %H:%M:%S")})
