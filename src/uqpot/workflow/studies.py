"""The ammonia and silica studies of the paper (sections 3.2-3.3): build the data with the reference method,
then run the active-learning loop (every UQ method, adversarial generations, MD stability, NEB), then the
report.  Both share one store of labels (``OUT/labels.db``), so nothing is ever labelled twice.

A study file (``configs/ammonia.yaml``, ``configs/ammonia_quick.yaml``, ...) has four sections: ``data``
(options of the data-set build), ``oracle`` (the reference method), ``loop`` (the active-learning config
without its data paths, oracle and output directory) and ``executor`` (options per executor kind).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Literal

from ..config import Strict, apply_overrides, load_config, parse
from ..errors import ConfigError
from .active_learning import ActiveLearning, LoopConfig, OracleSettings


class Study(Strict):
    system: Literal["ammonia", "silica"]
    data: dict = {}
    oracle: OracleSettings
    loop: dict = {}
    executor: dict[str, dict] = {}


def _loop_config(study: Study, out: Path, overrides: dict | None = None, path=None) -> LoopConfig:
    raw = copy.deepcopy(study.loop)
    raw.update(out=str(out), system=study.system, oracle=study.oracle.model_dump(),
               data={**raw.get("data", {}), "train": str(out / "data" / "train.extxyz"),
                     "test": str(out / "data" / "test.extxyz")})
    return parse(LoopConfig, apply_overrides(raw, overrides), path, prefix="loop")


def _data_config(study: Study, path=None):
    """The options of the study's data-set build (``data`` section), validated."""
    if study.system == "ammonia":
        from ..data.sets.ammonia import AmmoniaConfig as model
    else:
        from ..data.sets.silica import SilicaConfig as model
    unknown = sorted(set(study.data) - {f.name for f in dataclasses.fields(model)})
    if unknown:
        raise ConfigError(path, "; ".join(f"unknown key 'data.{k}'" for k in unknown))
    try:
        return model(**study.data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, f"data: {exc}") from None


def _build(study: Study, data_cfg, d: Path, store: Path, oracle, executor, console) -> None:
    """The study's data set (skipped when already built; a partial build resumes from the store)."""
    if (d / "summary.json").is_file():
        return
    if study.system == "ammonia":
        from ..data.sets.ammonia import build_ammonia

        build_ammonia(d, store=store, oracle=oracle, config=data_cfg, executor=executor, console=console)
    else:
        from ..data.sets.silica import build_silica

        build_silica(d, store=store, config=data_cfg, oracle=oracle, console=console)


def run_study_loop(preset, out: Path, executor=None, console=None, overrides: dict | None = None):
    """Builds the study's data (if needed) and runs its active-learning loop; returns (summary, config).
    This is what ``uqpot loop STUDY.yaml`` does."""
    from ..oracle import get_oracle

    study = load_config(preset, Study)
    out = Path(out)
    # every section validated before anything is written or computed
    cfg = _loop_config(study, out, overrides, preset)
    data_cfg = _data_config(study, preset)
    oracle = get_oracle(study.oracle.name, **study.oracle.options)
    out.mkdir(parents=True, exist_ok=True)
    if console is not None:
        console.print(f"[bold]{study.system}[/bold]: data set with {oracle.method}")
    _build(study, data_cfg, out / "data", out / "labels.db", oracle, executor, console)
    if console is not None:
        console.print(f"[bold]{study.system}[/bold]: active learning, {cfg.generations} generations, "
                      f"{', '.join(cfg.methods)}")
    return ActiveLearning(cfg, console=console, executor=executor).run(), cfg


def is_study_file(path) -> bool:
    from ..config import load_yaml

    data = load_yaml(path)
    return "loop" in data and "system" in data


def reproduce_study(preset: Path, out: Path, executor=None, console=None, overrides: dict | None = None) -> Path:
    from .report import build_loop_report

    _, cfg = run_study_loop(preset, out, executor, console, overrides)
    return build_loop_report(out, title=f"uqpot: the {cfg.system} study")


reproduce_ammonia = reproduce_silica = reproduce_study
