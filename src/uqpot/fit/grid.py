"""Grids of independent trainings (data split × UQ method × seed) and the tables they make.

A job is a plain, picklable description: where the structures are, which indices form its train /
validation / test sets, which method and seed, the model and training settings, and its output directory.
Jobs write their results to their own directory (``summary.json`` last), so a grid that crashed or was
cancelled resumes by skipping finished jobs, and jobs can run in-process or on a Dask cluster (any executor
of :mod:`uqpot.core.executor`).

One backbone per seed: ``none`` and the post-hoc methods (GMM, LLPR) train the same plain potential (same
data, settings and seed), so jobs that name the same ``backbone`` directory share one training there and
each wraps it (:func:`uqpot.fit.run.fit_from_backbone`; the numbers of training each alone).  Such jobs run
together as one unit of work, so no two workers train the same backbone.  A shared job's ``wall_seconds``
is the backbone's training time plus its own (``own_seconds``): what the model would cost alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..metrics.intervals import RANGES, mean_interval
from ..metrics.registry import table_names
from ..core.provenance import write_json

#: ROC-AUC on rMD17 from the paper's Table S2: (20th percentile, 50th percentile) per molecule and method
PAPER_TABLE_S2 = {mol: dict(zip(("ensemble", "mve", "evidential", "gmm"), zip(row[:4], row[4:]))) for mol, row in {
    "aspirin": (0.853, 0.840, 0.921, 0.783, 0.815, 0.834, 0.887, 0.733),
    "azobenzene": (0.853, 0.826, 0.890, 0.807, 0.883, 0.873, 0.915, 0.821),
    "benzene": (0.700, 0.716, 0.764, 0.702, 0.702, 0.733, 0.777, 0.698),
    "ethanol": (0.745, 0.765, 0.780, 0.693, 0.755, 0.800, 0.779, 0.679),
    "malonaldehyde": (0.763, 0.866, 0.849, 0.745, 0.741, 0.887, 0.876, 0.786),
    "naphthalene": (0.786, 0.840, 0.843, 0.781, 0.788, 0.868, 0.867, 0.800),
    "paracetamol": (0.837, 0.862, 0.874, 0.773, 0.822, 0.870, 0.854, 0.690),
    "salicylic": (0.835, 0.884, 0.904, 0.794, 0.811, 0.876, 0.901, 0.738),
    "toluene": (0.842, 0.821, 0.924, 0.821, 0.808, 0.839, 0.912, 0.784),
    "uracil": (0.793, 0.771, 0.787, 0.758, 0.805, 0.779, 0.802, 0.779),
    "mean": (0.801, 0.819, 0.854, 0.766, 0.793, 0.836, 0.857, 0.751),
}.items()}


@dataclass
class Job:
    name: str
    data: str  # structure file
    indices: dict  # {"train": [...], "val": [...], "test": [...]}
    method: str  # none | ensemble | mve | evidential | gmm (| later methods)
    seed: int
    out: str
    model: dict = field(default_factory=dict)
    uq: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    read: dict = field(default_factory=dict)  # ReadOptions fields
    molecule: str = ""  # labels for tables and reports
    split: int = 0
    threads: int | None = 1  # PyTorch threads (fixed, so that results do not depend on the executor)
    # directory of a plain-trained network shared with other jobs (none and post-hoc methods; see module)
    backbone: str | None = None

    @property
    def done(self) -> bool:
        return (Path(self.out) / "summary.json").is_file()

    def backbone_signature(self) -> tuple:
        """What the shared network depends on: jobs with one backbone must agree on all of it."""
        return (self.data, json.dumps(self.indices, sort_keys=True), self.seed, json.dumps(self.model, sort_keys=True),
                json.dumps(self.train, sort_keys=True), json.dumps(self.read, sort_keys=True), self.threads)


def shares_backbone(method: str, uq: dict | None = None) -> bool:
    """Whether a job of ``method`` trains a plain potential (``none`` and the post-hoc methods)."""
    from .run import trains_plain_potential
    from ..uq.options import parse_uq

    return trains_plain_potential(parse_uq({"method": method, **(uq or {})}))


def run_job(job: Job) -> dict:
    """Trains and evaluates one job (resumes if interrupted); returns its summary with timing and memory."""
    from ..core.determinism import fixed_threads

    out = Path(job.out)
    if job.done:
        return json.loads((out / "summary.json").read_text())
    with fixed_threads(job.threads):
        return _run_job(job, out)


def run_jobs(jobs: list[Job]) -> list[dict]:
    """Several jobs one after the other (one unit of work: the jobs of one shared backbone)."""
    return [run_job(job) for job in jobs]


def _sets(job: Job):
    from ..data.io import ReadOptions, read_structures

    data = read_structures(job.data, ReadOptions(**job.read))
    sets = {k: data.subset(np.asarray(v, dtype=int)) for k, v in job.indices.items()}
    sets.setdefault("test", data.subset([]))
    return sets


def _configs(job: Job):
    from ..train.config import TrainConfig
    from ..nn.backbone import parse_model
    from ..uq.options import parse_uq

    return (parse_model(job.model), parse_uq({"method": job.method, **job.uq}),
            TrainConfig.model_validate({"progress": False, **job.train}))


def _train_backbone(job: Job, sets) -> dict:
    """The shared plain potential of ``job`` in ``job.backbone`` (resumed or skipped when done)."""
    from ..data.splits import save_split
    from .run import fit_model
    from ..uq.options import parse_uq

    d = Path(job.backbone)
    if (d / "summary.json").is_file():
        return json.loads((d / "summary.json").read_text())
    d.mkdir(parents=True, exist_ok=True)
    save_split(job.indices, d / "split.json")
    model_cfg, _, train_cfg = _configs(job)
    t0 = time.perf_counter()
    summary = fit_model(model_cfg, parse_uq({"method": "none"}), train_cfg, job.seed, sets["train"], sets["val"],
                        sets["test"], d, extra={"backbone_of": job.name.rsplit("-", 1)[0]})
    summary["wall_seconds"] = time.perf_counter() - t0
    write_json(d / "summary.json", summary)
    return summary


def _run_job(job: Job, out: Path) -> dict:
    import resource

    import torch

    from ..data.splits import save_split
    from .run import fit_from_backbone, fit_model

    sets = _sets(job)
    model_cfg, uq, train_cfg = _configs(job)
    t0 = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    out.mkdir(parents=True, exist_ok=True)
    save_split(job.indices, out / "split.json")  # beside the results, like every run
    shared = {}
    if job.backbone:
        trained = _train_backbone(job, sets)
        t0 = time.perf_counter()
        summary = fit_from_backbone(job.backbone, uq, train_cfg, sets["train"], sets["val"], sets["test"], out,
                                    extra={"job": job.name})
        shared = {"backbone_seconds": trained["wall_seconds"]}
    else:
        summary = fit_model(model_cfg, uq, train_cfg, job.seed, sets["train"], sets["val"], sets["test"], out,
                            extra={"job": job.name})
    summary["job"] = asdict(job) | {"indices": {k: len(v) for k, v in job.indices.items()}}
    own = time.perf_counter() - t0
    summary["wall_seconds"] = own + shared.get("backbone_seconds", 0.0)
    if shared:
        summary.update(shared, own_seconds=own)
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        summary["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_json(out / "summary.json", summary)
    return summary


def work_units(jobs: list[Job]) -> list[list[int]]:
    """Job indices grouped into units of work: the jobs of one backbone together (checked to agree on
    what the backbone depends on), every other job alone; in job order of each unit's first job."""
    units: dict = {}
    for k, job in enumerate(jobs):
        key = ("backbone", str(Path(job.backbone).resolve())) if job.backbone else ("job", k)
        units.setdefault(key, []).append(k)
    for key, idx in units.items():
        if key[0] == "backbone":
            if len({jobs[k].backbone_signature() for k in idx}) != 1:
                raise ValueError(f"jobs {', '.join(jobs[k].name for k in idx)} share the backbone {key[1]} but "
                                 "differ in data, split, seed, model or training settings")
            bad = [jobs[k].name for k in idx if not shares_backbone(jobs[k].method, jobs[k].uq)]
            if bad:
                raise ValueError(f"jobs {', '.join(bad)} train their own network: they cannot share a backbone")
    return list(units.values())


def run_grid(jobs: list[Job], executor=None, progress=None) -> list[dict]:
    """Runs every unfinished job (in-process, or on ``executor``: one task per unit of work, see
    :func:`work_units`); results in job order."""
    units = work_units(jobs)
    results: list = [None] * len(jobs)
    if executor is None or getattr(executor, "in_process", False):
        done = 0
        for unit in units:
            for k in unit:
                results[k] = run_job(jobs[k])
                done += 1
                if progress:
                    progress(done, len(jobs), jobs[k])
        return results
    for unit, res in zip(units, executor.map(run_jobs, [[jobs[k] for k in unit] for unit in units])):
        for k, r in zip(unit, res):
            results[k] = r
    return results


#: the grid's table metrics (uqpot.metrics.registry: every table metric the data need not lack), at import
TABLE_KEYS = table_names(optional=False)


def table(results: list[dict], group=("method",), keys=None) -> list[dict]:
    """Mean, standard deviation and 95% t-interval (``<key>_lo``, ``<key>_hi``) of the test metrics (``keys``;
    default: the registered table metrics) per group (e.g. per method over seeds/splits)."""
    keys = table_names(optional=False) if keys is None else keys
    rows: dict[tuple, list[dict]] = {}
    for r in results:
        key = tuple(r["job"][g] for g in group)
        rows.setdefault(key, []).append(r)
    out = []
    for key, rs in rows.items():
        row = dict(zip(group, key))
        row["n"] = len(rs)
        for k in keys:
            vals = np.array([r["test"].get(k, np.nan) for r in rs], dtype=float)
            row[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
            row[k + "_std"] = float(np.nanstd(vals)) if np.isfinite(vals).sum() > 1 else None
            _, lo, hi = mean_interval(vals, bounds=RANGES.get(k, (None, None)))
            row[k + "_lo"], row[k + "_hi"] = (lo, hi) if np.isfinite(lo) else (None, None)
        row["epochs"] = float(np.mean([r["training"]["epochs_run"] for r in rs]))
        row["wall_seconds"] = float(np.mean([r.get("wall_seconds", r["training"]["wall_seconds"]) for r in rs]))
        out.append(row)
    return out


def format_table(rows: list[dict], keys=None) -> str:
    keys = table_names(optional=False) if keys is None else keys
    head = ["method", *keys, "epochs", "wall s"]
    lines = [" | ".join(f"{h:>12s}" for h in head)]
    for r in rows:
        cells = [f"{r['method']:>12s}"]
        for k in keys:
            v, s = r.get(k), r.get(k + "_std")
            cells.append(f"{'—':>12s}" if v is None else (f"{v:7.3f}±{s:.3f}" if s is not None else f"{v:12.3f}"))
        cells += [f"{r['epochs']:12.0f}", f"{r['wall_seconds']:12.0f}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)
