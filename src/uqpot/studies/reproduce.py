"""``uqpot reproduce ammonia|rmd17|silica``: the paper's three studies, one command each.

Each study reads a preset (``configs/<system>.yaml`` = the SI's settings, ``configs/<system>_quick.yaml`` =
the same pipeline scaled to a 2-core laptop; any YAML file of the same shape can be given instead), builds or
fetches its data, runs every job (on an executor: in-process, a local Dask cluster, or Slurm), and writes
``report.html``, ``results.json`` and the tables as CSV into the output directory.  Every job writes its
results into the output directory as it finishes, so a crashed or cancelled study resumes by skipping what
is done; ``reproduce.json`` records the preset, executor, versions and wall time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
from pydantic import Field

from ..nn.painn import PaiNNOptions
from ..nn.backbone import ModelSection
from ..core.schema import Strict
from ..train.config import TrainConfig
from ..core.config_io import load_config, parse
from ..core.schema import Distinct, Seed, option_list
from ..core.errors import ConfigError
from ..core.provenance import versions, write_json
from ..core.rundir import check_out_dir
from ..systems import GridSystemName, get_system, preset_path, system_names
from ..uq.options import MethodName, MethodOptions
from .sequential import AutoSeeds, parse_auto, plan_looks, planned_seeds, run_sequential

# ------------------------------------------------------------------------------------------------ rMD17
class RMD17Study(Strict):
    """A grid study of rMD17's shape: molecules, official splits, seeds and methods, every method trained on
    each (split, seed) of each molecule."""

    system: Optional[GridSystemName] = None  # a registered grid system; None: the one the command names
    molecules: Distinct[str] = ["ethanol"]
    splits: Distinct[Annotated[int, Field(ge=1, le=5)]] = [1]  # rMD17's five official splits
    methods: Distinct[MethodName] = ["ensemble", "mve", "evidential", "gmm"]  # registered methods, or none
    seed: Seed = 0  # the data seed: validation part of each split (a local file: its random splits)
    seeds: Distinct[Seed] = [0]  # replicates: every (split, method) is trained once per seed (init, batch order)
    threads: int = Field(1, ge=1)  # PyTorch threads of every training (fixed: see uqpot.core.determinism)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # of each official training split (800 / 200)
    # random split of a local file without official splits: fractions of its frames (train, val, test)
    local_split: tuple[float, float, float] = (0.6, 0.15, 0.25)
    data_dir: Path = Path("data/rmd17")  # where the fetched archive is extracted (shared by runs)
    executor: dict[str, dict] = {}  # options per executor kind, e.g. {slurm: {queue: gpu, cores: 8, ...}}
    model: ModelSection = Field(default_factory=PaiNNOptions)
    uq: MethodOptions = {"ensemble": {"members": 5}}
    train: TrainConfig = TrainConfig()


def rmd17_jobs(study: RMD17Study, out: Path, local_data: Path | None = None):
    from ..fit.grid import Job, shares_backbone

    jobs = []
    for mol in study.molecules:
        for split in study.splits:
            if local_data is not None:
                from ..data.io import read_structures

                n = len(read_structures(local_data))
                perm = np.random.default_rng(study.seed + split).permutation(n)
                a = int(round(study.local_split[0] * n))
                b = a + int(round(study.local_split[1] * n))
                c = min(n, b + int(round(study.local_split[2] * n)))
                idx = {"train": np.sort(perm[:a]), "val": np.sort(perm[a:b]), "test": np.sort(perm[b:c])}
                data = str(local_data)
            else:
                from ..data.sets.rmd17 import _npz_path, canonical_molecule, rmd17_split_indices

                idx = rmd17_split_indices(study.data_dir, mol, split, study.val_fraction, study.seed)
                data = str(_npz_path(Path(study.data_dir), canonical_molecule(mol)))
            for seed in study.seeds:
                seed_dir = out / mol / f"split{split}" / f"seed{seed}"
                for method in study.methods:
                    # none and the post-hoc methods wrap one plain-trained network per seed
                    backbone = str(seed_dir / "backbone") if shares_backbone(method, study.uq.get(method)) else None
                    jobs.append(Job(name=f"{mol}-split{split}-seed{seed}-{method}", data=data, backbone=backbone,
                                    indices={k: v.tolist() for k, v in idx.items()}, method=method, seed=seed,
                                    out=str(out / mol / f"split{split}" / f"seed{seed}" / method),
                                    model=study.model.model_dump(), uq=study.uq.get(method, {}),
                                    train=study.train.model_dump(mode="json") | {"progress": False},
                                    molecule=mol, split=split, threads=study.threads))
    return jobs


def check_methods(methods) -> list[str] | None:
    """The ``--methods`` list, each a registered UQ method (or None: the preset's own)."""
    from ..uq.options import OPTIONS

    methods = option_list(methods, "--methods")
    if methods is None:
        return None
    unknown = [m for m in methods if m not in OPTIONS]
    if unknown:
        raise ConfigError(None, f"--methods: unknown UQ method(s) {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(sorted(OPTIONS))}")
    return methods


def load_grid_study(system: str, preset) -> RMD17Study:
    """The grid study ``preset`` of ``system`` (a preset name or a YAML file), its ``system`` filled in."""
    study = load_config(preset_path(system, preset), RMD17Study)
    if study.system is None:
        study.system = system
    return study


def reproduce_grid(system: str, preset: str, out: Path, executor=None, molecules=None, splits=None,
                   local_data=None, console=None, methods=None, seeds=None) -> Path:
    """Runs the grid study ``preset`` of ``system`` (rMD17: fetched first) and returns its report's path."""
    study = load_grid_study(system, preset)
    if seeds:
        study.seeds = list(seeds)
    if methods:
        study.methods = list(methods)
    if molecules:
        study.molecules = list(molecules)
    if splits:
        study.splits = list(splits)
    if local_data is not None and len(study.molecules) != 1:
        raise ConfigError(None, "--data gives one molecule's structures: name it with --molecules")
    if local_data is None:
        from ..data.sets.rmd17_fetch import fetch_rmd17

        if not all((Path(study.data_dir) / "npz_data").glob("*.npz")):
            fetch_rmd17(study.data_dir, console=console)
    from ..fit.grid import run_grid

    jobs = rmd17_jobs(study, out, local_data)
    _say(console, f"rMD17: {len(jobs)} trainings ({', '.join(study.molecules)}; splits {study.splits}; "
                  f"seeds {study.seeds}; {', '.join(study.methods)}); {sum(j.done for j in jobs)} already done")
    run_grid(jobs, executor, progress=lambda k, n, j: _say(console, f"[{k}/{n}] {j.name}"))
    from ..report.grid import build_grid_report

    return build_grid_report(out, system=study.system)


def _say(console, msg: str) -> None:
    if console is not None:
        console.print(msg)


# ------------------------------------------------------------------------------------------------ entry
def _is_grid(system: str) -> bool:
    """Whether ``system``'s study is the grid of fixed splits (rMD17) rather than build + loop; a ConfigError
    naming the registered systems for an unknown one."""
    try:
        return get_system(system).study == "grid"
    except ValueError:
        raise ConfigError(None, f"unknown study {system!r}; choose one of {', '.join(system_names())}") from None


def check_seeds(seeds) -> list[int] | AutoSeeds | None:
    """The ``--seeds`` list (distinct integers in [0, 2**32)), ``auto[:MAX[:BATCH]]`` as
    :class:`~uqpot.studies.sequential.AutoSeeds`, or None: the preset's own."""
    if seeds is not None and seeds != "" and seeds != []:
        auto = parse_auto(seeds)
        if auto is not None:
            return auto
    return option_list(seeds, "--seeds", Seed)


def _check_auto(system: str, seeds, grid: bool, samplers=None) -> None:
    """``--seeds auto`` is for the loop studies alone, without ``--samplers``."""
    if not isinstance(seeds, AutoSeeds):
        return
    if grid:
        raise ConfigError(None, f"--seeds {seeds.text()}: adding seeds until the claims are resolved is for the "
                                f"{', '.join(system_names('loop'))} studies; give the {system} study its seeds")
    if samplers:
        raise ConfigError(None, f"--seeds {seeds.text()}: not with --samplers; give the seeds")


def check_splits(splits) -> list[int] | None:
    """The ``--splits`` list (distinct rMD17 split numbers 1-5), or None: the preset's own."""
    return option_list(splits, "--splits", Annotated[int, Field(ge=1, le=5)])


def check_preset(system: str, preset, methods=None, seeds=None, local_data=None) -> None:
    """The preset file read and checked before the study's folder is written (its sections parse; a local
    data file exists)."""
    path = preset_path(system, preset)
    if _is_grid(system):
        study = load_grid_study(system, path)
        if methods:
            parse(RMD17Study, {**study.model_dump(mode="json"), "methods": methods}, path)
        if local_data is not None and not Path(local_data).is_file():
            raise ConfigError(None, f"--data: {local_data}: no such file")
        return
    from .study import Study, _data_config, study_seeds

    study = load_config(path, Study)
    if isinstance(seeds, AutoSeeds):
        plan_looks(study_seeds(study, None, path), seeds)  # MAX against the preset's seeds
    else:
        study_seeds(study, seeds, path)
    _data_config(study, path)


def _remove_if_nothing_ran(out: Path, created: bool) -> None:
    """After a failure: the study's record and folder go when nothing but the record was written (a study
    that ran anything keeps its files: it resumes from them)."""
    import contextlib

    left = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if left <= {"reproduce.json"}:
        with contextlib.suppress(OSError):
            (out / "reproduce.json").unlink()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()


def dry_run(system: str, preset: str = "quick", executor: str = "local", out=None, molecules=None, splits=None,
            executor_options: dict | None = None, methods=None, seeds=None, samplers=None) -> str:
    """The study's plan and estimated time (:mod:`uqpot.studies.plan`), as text: nothing runs and nothing
    is written (no output directory is created)."""
    from ..core.config_io import load_yaml
    from .plan import loop_plan, workers_of
    from .plan_grid import rmd17_plan

    grid = _is_grid(system)
    methods, seeds = check_methods(methods), check_seeds(seeds)
    _check_auto(system, seeds, grid, samplers)
    auto = seeds if isinstance(seeds, AutoSeeds) else None
    path = preset_path(system, preset)
    options = dict(load_yaml(path).get("executor", {}).get(executor, {}))
    options.update(executor_options or {})
    workers = workers_of(executor, options)
    if grid:
        study = load_grid_study(system, path)
        plan = rmd17_plan(study, preset, seeds, methods, molecules, splits, workers)
    else:
        out = Path(out or f"runs/{system}_{Path(preset).stem}")
        looks = planned_seeds(path, auto) if auto else None
        plan = loop_plan(system, path, out, looks[-1] if auto else seeds, methods, workers, executor, name=preset)
        if auto:
            plan.notes.append(f"--seeds {auto.text()}: planned for MAX = {len(looks[-1])} seeds, the upper bound; the "
                              f"study stops at an earlier look ({', '.join(str(len(s)) for s in looks)} seeds) once "
                              f"every claim is resolved")
        if samplers:
            plan.notes.append(f"--samplers {','.join(samplers)}: the plan counts one sampler; generations 2 and "
                              f"later run once per sampler ({len(samplers)}x)")
    return plan.text()


def reproduce(system: str, preset: str = "quick", executor: str = "local", out=None, molecules=None,
              splits=None, local_data=None, console=None, executor_options: dict | None = None,
              methods=None, seeds=None, samplers=None) -> Path:
    """Runs one study and returns the path of its report.  ``methods`` replaces the preset's UQ methods,
    ``seeds`` its replicates; ``samplers`` runs the study once per sampler and compares them
    (:mod:`uqpot.studies.samplers`)."""
    from .samplers import check_samplers, run_sampler_study

    grid = _is_grid(system)
    methods = check_methods(methods)  # before anything is written
    seeds = check_seeds(seeds)
    splits = check_splits(splits)
    molecules = option_list(molecules, "--molecules")
    samplers = check_samplers(samplers)
    _check_auto(system, seeds, grid, samplers)
    unused = [o for o, v in (("--molecules", molecules), ("--splits", splits), ("--data", local_data)) if v]
    if unused and not grid:
        raise ConfigError(None, f"{unused[0]}: an option of the {', '.join(system_names('grid'))} study; the "
                                f"{system} study would not use it")
    if samplers and grid:
        raise ConfigError(None, f"--samplers: the {system} study trains on fixed splits and samples nothing; use "
                                f"{' or '.join(system_names('loop'))}")
    out = check_out_dir(Path(out or f"runs/{system}_{Path(preset).stem}"), "--out", writes=("reproduce.json",))
    check_preset(system, preset, methods, seeds, local_data)
    created = not out.exists()
    started = time.time()
    meta_path = out / "reproduce.json"
    ex = None
    if executor != "none":
        from ..core.config_io import load_yaml
        from ..core.executor import get_executor

        options = dict(load_yaml(preset_path(system, preset)).get("executor", {}).get(executor, {}))
        options.update(executor_options or {})
        ex = get_executor(executor, **options)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(meta_path, {"kind": "grid" if grid else "samplers" if samplers else "loop",
                               "system": system, "samplers": samplers,
                               "preset": str(preset), "executor": executor,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": versions()})
    except BaseException:
        if ex is not None:
            ex.close()
        raise
    try:
        if grid:
            reproduce_grid(system, preset, out, ex, molecules, splits, local_data, console, methods, seeds)
        elif samplers:
            run_sampler_study(preset_path(system, preset), out, samplers, ex, console,
                              overrides={"methods": methods} if methods else None, seeds=seeds)
        elif isinstance(seeds, AutoSeeds):
            run_sequential(preset_path(system, preset), out, seeds, ex, console,
                           overrides={"methods": methods} if methods else None)
        else:
            from .study import reproduce_study

            reproduce_study(preset_path(system, preset), out, ex, console,
                            overrides={"methods": methods} if methods else None, seeds=seeds)
    except BaseException:
        _remove_if_nothing_ran(out, created)
        raise
    finally:
        if ex is not None:
            ex.close()
    import json

    meta = json.loads(meta_path.read_text())
    meta.update(finished=time.strftime("%Y-%m-%d %H:%M:%S"), wall_seconds=round(time.time() - started, 1))
    write_json(meta_path, meta)
    from .report_dispatch import build_report

    return build_report(out)  # again, now with the wall time
