"""The ammonia and silica studies of the paper (sections 3.2-3.3): build the data with the reference method,
then run the active-learning loop (every UQ method, adversarial generations, MD stability, NEB), then the
report.  Both share one store of labels (``OUT/labels.db``), so nothing is ever labelled twice.

A study file (``configs/ammonia.yaml``, ``configs/ammonia_quick.yaml``, ...) has five sections: ``data``
(options of the data-set build), ``oracle`` (the reference method), ``seeds`` (the replicates), ``loop`` (the
active-learning config without its seed, data paths, oracle and output directory) and ``executor`` (options
per executor kind).

Replicates: the data set is built once (``OUT/data``, with its own seed in the ``data`` section) and every
seed runs the whole loop (training, attacks, MD, NEB) in ``OUT/seed{s}``; all seeds share one label store
(``OUT/labels.db``), so a structure two seeds both sample is labelled once.  ``OUT/study.json`` lists the
seeds; the report gives every number as a mean over seeds with its interval.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

from ..core.schema import Strict
from ..core.config_io import apply_overrides, load_config, parse
from ..core.schema import Distinct, Seed, check_seed
from ..core.errors import ConfigError, UqpotError
from ..core.provenance import write_json
from ..systems import StudySystemName, get_system
from ..loop.config import LoopConfig, OracleSettings


class Study(Strict):
    system: StudySystemName  # a registered system with a data build (uqpot.systems)
    data: dict = {}
    oracle: OracleSettings
    seeds: Optional[Distinct[Seed]] = None  # replicates; default [loop.seed] (or [0])
    loop: dict = {}
    executor: dict[str, dict] = {}


def study_seeds(study: Study, seeds=None, path=None) -> list[int]:
    """The replicates to run: ``seeds`` (the command line's ``--seeds``), else the study's own."""
    if study.seeds is not None and "seed" in study.loop:
        raise ConfigError(path, "give the replicates as 'seeds' or one 'loop.seed', not both")
    chosen = list(seeds) if seeds else (study.seeds or [int(study.loop.get("seed", 0))])
    if len(set(chosen)) != len(chosen) or not chosen:
        raise ConfigError(path, f"seeds must be distinct integers, got {chosen}")
    return chosen


def _loop_config(study: Study, out: Path, overrides: dict | None = None, path=None, seed: int = 0,
                 subdir: str | None = None) -> LoopConfig:
    raw = copy.deepcopy(study.loop)
    loop_out = out / subdir / f"seed{seed}" if subdir else out / f"seed{seed}"
    raw.update(out=str(loop_out), seed=seed, store=str(out / "labels.db"), system=study.system,
               oracle=study.oracle.model_dump(),
               data={**raw.get("data", {}), "train": str(out / "data" / "train.extxyz"),
                     "test": str(out / "data" / "test.extxyz")})
    return parse(LoopConfig, apply_overrides(raw, overrides), path, prefix="loop")


def _data_config(study: Study, path=None):
    """The options of the study's data-set build (``data`` section), validated."""
    model = get_system(study.system).config
    unknown = sorted(set(study.data) - {f.name for f in dataclasses.fields(model)})
    if unknown:
        raise ConfigError(path, "; ".join(f"unknown key 'data.{k}'" for k in unknown))
    try:
        cfg = model(**study.data)
        check_seed(cfg.seed, "data.seed")
        if hasattr(cfg, "check"):
            cfg.check()  # the build's own checks, now rather than after the output folder is written
    except (TypeError, ValueError, UqpotError) as exc:
        raise ConfigError(path, f"data: {str(exc).removeprefix('data.seed: ')}" if "data.seed" not in str(exc)
                          else str(exc)) from None
    return cfg


def _build(study: Study, data_cfg, d: Path, store: Path, oracle, executor, console) -> None:
    """The study's data set (skipped when already built; a partial build resumes from the store)."""
    if (d / "summary.json").is_file():
        return
    get_system(study.system).build(d, config=data_cfg, oracle=oracle, store=store, executor=executor, console=console)


def run_study_loop(preset, out: Path, executor=None, console=None, overrides: dict | None = None, seeds=None,
                   restart: bool = False):
    """Builds the study's data (if needed) and runs its active-learning loop once per seed; returns
    (the study summary, the first seed's loop config).  This is what ``uqpot loop STUDY.yaml`` does;
    ``restart`` starts every seed's loop afresh (the built data and the label store are kept)."""
    from ..oracle import get_oracle
    from ..loop.replicates import run_replicates

    study = load_config(preset, Study)
    out = Path(out)
    # every section validated before anything is written or computed
    seeds = study_seeds(study, seeds, preset)
    cfgs = [_loop_config(study, out, overrides, preset, seed=s) for s in seeds]
    data_cfg = _data_config(study, preset)
    oracle = get_oracle(study.oracle.name, **study.oracle.options)
    out.mkdir(parents=True, exist_ok=True)
    _check_study(out, study.system, seeds)
    if console is not None:
        console.print(f"[bold]{study.system}[/bold]: data set with {oracle.method}")
    _build(study, data_cfg, out / "data", out / "labels.db", oracle, executor, console)
    cfg = cfgs[0]
    if console is not None:
        console.print(f"[bold]{study.system}[/bold]: active learning, {cfg.generations} generations, "
                      f"{', '.join(cfg.methods)}, seeds {', '.join(map(str, seeds))}")
    summary = run_replicates(cfgs, out, executor, console, _study_log(out, console), {"system": study.system},
                             restart=restart)
    return summary, cfg


def _check_study(out: Path, system: str, seeds: list[int]) -> None:
    """``OUT/study.json``: the study's system and every seed run in it (a rerun may add seeds)."""
    path = out / "study.json"
    rec = json.loads(path.read_text()) if path.is_file() else {"system": system, "seeds": []}
    if rec.get("system") != system:
        raise ConfigError(path, f"{out} holds a {rec.get('system')} study; choose another output directory")
    rec["seeds"] = sorted(set(rec["seeds"]) | set(seeds))
    rec["seeds_last_run"] = list(seeds)
    write_json(path, rec)


def _study_log(out: Path, console):
    def log(msg: str) -> None:
        with open(out / "study.log", "a") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
        if console is not None:
            console.print(msg)

    return log


def is_study_file(path) -> bool:
    from ..core.config_io import load_yaml

    data = load_yaml(path)
    return "loop" in data and "system" in data


def reproduce_study(preset: Path, out: Path, executor=None, console=None, overrides: dict | None = None,
                    seeds=None) -> Path:
    from ..report.loop import build_loop_report

    _, cfg = run_study_loop(preset, out, executor, console, overrides, seeds)
    return build_loop_report(out, title=f"uqpot: the {cfg.system} study")


