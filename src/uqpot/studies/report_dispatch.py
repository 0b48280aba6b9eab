"""``uqpot report RUN``: the report that fits a run directory (an active-learning loop or a grid of
trainings).  Kept apart from :mod:`uqpot.report.page` (the shared page builder), which the loop and grid
reports import, so that no module imports a module that imports it back."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def build_report(run) -> Path:
    """The report that fits the run directory (an active-learning loop or a grid of trainings)."""
    run = Path(run)
    meta = json.loads((run / "reproduce.json").read_text()) if (run / "reproduce.json").is_file() else {}
    if meta.get("kind") == "samplers":
        from .samplers import build_sampler_report

        return build_sampler_report(run, meta.get("samplers"))
    cfg = run / "config.yaml"
    replicates = (run / "summary.json").is_file() and "per_seed" in json.loads((run / "summary.json").read_text())
    if meta.get("kind") != "grid" and ((run / "study.json").is_file() or replicates or (
            cfg.is_file() and "generations" in (yaml.safe_load(cfg.read_text()) or {}))):
        from ..report.loop import build_loop_report

        return build_loop_report(run)
    if meta.get("kind") == "grid" or list(run.glob("**/summary.json")):
        from ..report.grid import build_grid_report

        return build_grid_report(run)
    from ..core.errors import UqpotError

    raise UqpotError(f"{run}: not a uqpot run directory (no loop summary or grid results found)")
