"""The ammonia and silica studies of the paper (sections 3.2-3.3): build the data with the reference method,
then run the active-learning loop (every UQ method, adversarial generations, MD stability, NEB), then the
report.  Both share one store of labels (``OUT/labels.db``), so nothing is ever labelled twice.

A study file (``configs/ammonia.yaml``, ``configs/ammonia_quick.yaml``, ...) has four sections: ``data``
(options of the data-set build), ``oracle`` (the reference method), ``loop`` (the active-learning config
without its data paths, oracle and output directory) and ``executor`` (options per executor kind).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..config import Strict, load_config
from .active_learning import ActiveLearning, LoopConfig, OracleSettings


class Study(Strict):
    system: Literal["ammonia", "silica"]
    data: dict = {}
    oracle: OracleSettings
    loop: dict = {}
    executor: dict[str, dict] = {}


def _loop_config(study: Study, out: Path) -> LoopConfig:
    raw = dict(study.loop)
    raw.update(out=str(out), system=study.system, oracle=study.oracle.model_dump(),
               data={**raw.get("data", {}), "train": str(out / "data" / "train.extxyz"),
                     "test": str(out / "data" / "test.extxyz")})
    return LoopConfig.model_validate(raw)


def _run(study: Study, out: Path, executor, console, build) -> Path:
    from ..oracle import get_oracle

    out.mkdir(parents=True, exist_ok=True)
    cfg = _loop_config(study, out)  # validated before anything is computed
    oracle = get_oracle(study.oracle.name, **study.oracle.options)
    if console is not None:
        console.print(f"[bold]{study.system}[/bold]: building the data set with {oracle.method}")
    build(out / "data", oracle, executor)
    if console is not None:
        console.print(f"[bold]{study.system}[/bold]: active learning, {cfg.generations} generations, "
                      f"{', '.join(cfg.methods)}")
    ActiveLearning(cfg, console=console, executor=executor).run()
    from .report import build_loop_report

    return build_loop_report(out, title=f"uqpot: the {study.system} study")


def reproduce_ammonia(preset: Path, out: Path, executor=None, console=None) -> Path:
    from ..data.sets.ammonia import AmmoniaConfig, build_ammonia

    study = load_config(preset, Study)

    def build(d, oracle, ex):
        if not (d / "summary.json").is_file():
            build_ammonia(d, store=out / "labels.db", oracle=oracle, config=AmmoniaConfig(**study.data),
                          executor=ex, console=console)

    return _run(study, Path(out), executor, console, build)


def reproduce_silica(preset: Path, out: Path, executor=None, console=None) -> Path:
    from ..data.sets.silica import SilicaConfig, build_silica

    study = load_config(preset, Study)

    def build(d, oracle, ex):
        if not (d / "summary.json").is_file():
            build_silica(d, store=out / "labels.db", config=SilicaConfig(**study.data), oracle=oracle,
                         console=console)

    return _run(study, Path(out), executor, console, build)
