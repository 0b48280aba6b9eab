"""Where long-running work runs: in-process, on a local Dask cluster, or on Slurm through dask-jobqueue.

``get_executor(kind, **options)`` returns an :class:`Executor`:

* ``"none"``: in the calling process; ``map`` is lazy (an item is computed when the iterator reaches it).
* ``"local"``: a ``distributed.LocalCluster`` on loopback (127.0.0.1), one single-threaded worker
  process per ``n_workers`` (default: one per CPU core), no dashboard.
* ``"slurm"``: a ``dask_jobqueue.SLURMCluster``; options ``queue``, ``account``, ``cores``, ``processes``,
  ``memory``, ``walltime``, ``job_extra`` (list of extra ``#SBATCH`` lines), ``job_script_prologue``
  (shell lines run before the worker starts, e.g. ``module load``), ``local_directory``, ``interface``,
  ``scheduler_options``, and ``jobs`` (how many jobs to ``scale`` to) or ``minimum_jobs``/
  ``maximum_jobs`` (adaptive).  The cluster is only built when work is first submitted, so constructing
  the executor needs no Slurm; :func:`slurm_job_script` shows the batch script without submitting it.
  Not testable without a Slurm cluster beyond that dry run.

Every executor has ``submit(fn, *args, **kwargs) -> future`` (``future.result()``), ``map(fn, items) ->
iterator of results in input order``, ``as_completed(futures) -> iterator of futures as they finish``,
``slots()`` (how many jobs run at once), ``first_done(futures)``, ``close()`` and is a context manager;
``in_process`` tells callers whether work runs in the calling process (then ``submit`` computes before it
returns).  :func:`run_jobs` runs a list of jobs in the caller's order of priority, each after the job it
waits for.

Functions and arguments sent to a Dask executor are pickled: they must be importable module-level
functions and picklable objects.
"""

from __future__ import annotations

import concurrent.futures as _cf
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .errors import ConfigError, UqpotError

KINDS = ("none", "local", "slurm")


class ExecutorError(UqpotError):
    pass


class Executor:
    """Base class; see the module docstring."""

    kind: str = "none"
    in_process: bool = True

    def submit(self, fn: Callable, *args, **kwargs):
        raise NotImplementedError

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        futures = [self.submit(fn, item) for item in items]
        for f in futures:
            yield f.result()

    def as_completed(self, futures) -> Iterator:
        raise NotImplementedError

    def slots(self) -> int | None:
        """How many jobs run at once (None: as many as are submitted, e.g. a cluster that scales to them)."""
        return 1

    def first_done(self, futures) -> list:
        """The finished futures among ``futures``, waiting until there is at least one."""
        return [f for f in futures if f.done()] or list(_cf.wait(list(futures), return_when=_cf.FIRST_COMPLETED).done)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class InProcessExecutor(Executor):
    """Runs everything in the calling process."""

    kind = "none"
    in_process = True

    def __init__(self):
        pass

    def submit(self, fn, *args, **kwargs):
        future: _cf.Future = _cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001  (delivered through the future, like Dask does)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            future.set_exception(e)
        return future

    def map(self, fn, items):
        for item in items:
            yield fn(item)

    def as_completed(self, futures):
        return iter(list(futures))


class DaskExecutor(Executor):
    """A ``distributed.Client`` on a cluster that is built on first use."""

    in_process = False

    def __init__(self, kind: str, cluster_factory: Callable[[], Any], describe: str):
        self.kind = kind
        self._factory = cluster_factory
        self._describe = describe
        self._cluster = None
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from distributed import Client

            self._cluster = self._factory()
            self._client = Client(self._cluster)
        return self._client

    def submit(self, fn, *args, **kwargs):
        return self.client.submit(fn, *args, pure=False, **kwargs)

    def map(self, fn, items):
        items = list(items)
        if not items:
            return
        futures = self.client.map(fn, items, pure=False)
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.release()

    def slots(self) -> int | None:
        if self.kind != "local":  # Slurm: no limit (an adaptive cluster scales to the jobs it is given)
            return None
        return sum(self.client.nthreads().values()) or None  # the local cluster's threads

    def first_done(self, futures) -> list:
        from distributed import wait

        return list(wait(list(futures), return_when="FIRST_COMPLETED").done)

    def as_completed(self, futures):
        from distributed import as_completed

        futures = list(futures)
        if not futures:
            return iter(())
        return iter(as_completed(futures))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __repr__(self) -> str:
        return f"DaskExecutor({self._describe})"


#: Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``,
#: to hand freed memory back to the system).  Setting it also switches off glibc's dynamic mmap threshold, so
#: every array over 128 KiB is a fresh ``mmap`` whose pages fault in again at each use: PyTorch's CPU
#: allocator frees and reallocates such tensors at every step.  Measured (the ammonia quick preset's 5-member
#: ensemble, 400 MD steps of 40 replicas, one thread): 13 s in a plain process, 43 s in a Dask worker, 38 s in
#: a plain process with that variable set; training slowed alike.  uqpot's workers start without it.
NANNY_ENV_UNSET = ("MALLOC_TRIM_THRESHOLD_",)


def _worker_config() -> dict:
    """The Dask settings uqpot's local workers start with (see :data:`NANNY_ENV_UNSET`)."""
    # worker-saturation 1.0: a worker holds only the tasks it runs (Dask's default 1.1 queues one more on it),
    # so a worker that dies (an oracle's segfault, the OOM killer) takes down only its own task; a task queued
    # behind it would be counted as a suspect of every death and could fail without having run
    cfg = {"distributed.scheduler.worker-saturation": 1.0}
    cfg.update({f"distributed.nanny.pre-spawn-environ.{k}": None for k in NANNY_ENV_UNSET})
    return cfg


def slurm_prologue_line() -> str:
    """The shell line uqpot adds to a Slurm job's prologue so that its nanny starts workers without
    :data:`NANNY_ENV_UNSET` (Dask reads ``DASK_*`` variables as configuration and merges a dict into its
    defaults; a value None unsets)."""
    env = {k: None for k in NANNY_ENV_UNSET}
    return f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\"{env!r}\""


@dataclass(frozen=True)
class Job:
    """One job of :func:`run_jobs`: ``fn(*args)`` under ``key``, started only after the job named ``after``."""

    key: Any
    fn: Callable
    args: tuple = ()
    after: Any = None


def run_jobs(executor: "Executor", jobs: list[Job], on_done: Callable[[Any], None] | None = None) -> dict:
    """Runs ``jobs`` on ``executor`` in their order of priority and returns ``{key: result}``.

    A job starts once the job its ``after`` names has finished; at most ``executor.slots()`` run at once, and a
    free worker always takes the first ready job of the list, so that the order is the caller's (e.g. the
    longest first, or the job others wait for first), not the scheduler's: Dask queues jobs without
    dependencies behind those whose dependencies have just finished, which left a worker idle while others
    waited for a stack it had not started.  ``on_done(key)`` is called as each job finishes.  The first
    failure is raised (results are keyed, so the order jobs finish in never shows in them)."""
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("run_jobs: duplicate keys")
    unknown = {j.after for j in jobs if j.after is not None} - set(keys)
    if unknown:
        raise ValueError(f"run_jobs: 'after' names no job: {sorted(map(str, unknown))}")
    limit = executor.slots()
    waiting, running, results = list(jobs), {}, {}
    while waiting or running:
        while waiting and (limit is None or len(running) < limit):
            ready = next((j for j in waiting if j.after is None or j.after in results), None)
            if ready is None:
                break
            waiting.remove(ready)
            running[executor.submit(ready.fn, *ready.args)] = ready.key
        if not running:
            raise ValueError("run_jobs: the jobs' 'after' form a cycle")
        for f in executor.first_done(list(running)):
            key = running.pop(f)
            results[key] = f.result()
            if on_done is not None:
                on_done(key)
    return results


def _local_cluster(n_workers: int, threads_per_worker: int, memory_limit, processes: bool):
    import dask
    from distributed import LocalCluster

    with dask.config.set(_worker_config()):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            memory_limit=memory_limit,
            host="127.0.0.1",
            dashboard_address=None,
        )


def _slurm_cluster(options: dict, scale: bool = True):
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExecutorError("executor 'slurm' needs dask-jobqueue: pip install 'uqpot[dask]'") from e
    opts = dict(options)
    jobs = opts.pop("jobs", None)
    minimum_jobs = opts.pop("minimum_jobs", None)
    maximum_jobs = opts.pop("maximum_jobs", None)
    cluster = SLURMCluster(**opts)
    if not scale:
        return cluster
    if minimum_jobs is not None or maximum_jobs is not None:
        cluster.adapt(minimum_jobs=minimum_jobs or 0, maximum_jobs=maximum_jobs or (minimum_jobs or 1))
    else:
        cluster.scale(jobs=1 if jobs is None else int(jobs))
    return cluster


_SLURM_KEYS = {
    "queue", "account", "cores", "processes", "memory", "walltime", "job_extra", "job_extra_directives",
    "job_script_prologue", "local_directory", "interface", "jobs", "minimum_jobs", "maximum_jobs",
    "job_name", "log_directory", "python", "scheduler_options",
}


def _slurm_options(options: dict) -> dict:
    unknown = set(options) - _SLURM_KEYS
    if unknown:
        raise ConfigError(None, f"unknown option(s) for executor 'slurm': {sorted(unknown)}; "
                                f"allowed: {sorted(_SLURM_KEYS)}")
    opts = dict(options)
    if "job_extra" in opts:  # dask-jobqueue's current name
        opts["job_extra_directives"] = list(opts.pop("job_extra"))
    opts.setdefault("cores", 1)
    opts.setdefault("memory", "4GB")
    opts["job_script_prologue"] = [*opts.get("job_script_prologue", []), slurm_prologue_line()]
    return opts


def slurm_job_script(**options) -> str:
    """The batch script that executor 'slurm' with these options would submit (a dry run: submits nothing)."""
    opts = _slurm_options(options)
    for key in ("jobs", "minimum_jobs", "maximum_jobs"):
        opts.pop(key, None)
    opts.setdefault("scheduler_options", {"dashboard_address": None})
    cluster = _slurm_cluster(opts, scale=False)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def get_executor(kind: str | None = "none", **options) -> Executor:
    """An executor of ``kind`` (``"none"``, ``"local"`` or ``"slurm"``); see the module docstring.

    Unknown options are errors (nothing is silently ignored).
    """
    kind = "none" if kind is None else str(kind).lower()
    if kind == "none":
        if options:
            raise ConfigError(None, f"executor 'none' takes no options (got {sorted(options)})")
        return InProcessExecutor()
    if kind == "local":
        allowed = {"n_workers", "threads_per_worker", "memory_limit", "processes"}
        unknown = set(options) - allowed
        if unknown:
            raise ConfigError(None, f"unknown option(s) for executor 'local': {sorted(unknown)}; "
                                    f"allowed: {sorted(allowed)}")
        import os

        n = int(options.get("n_workers", os.cpu_count() or 1))  # sized to the machine
        tpw = int(options.get("threads_per_worker", 1))
        mem = options.get("memory_limit", "auto")
        processes = bool(options.get("processes", True))
        if n < 1 or tpw < 1:
            raise ConfigError(None, "executor 'local': n_workers and threads_per_worker must be >= 1")
        return DaskExecutor("local", lambda: _local_cluster(n, tpw, mem, processes),
                            f"local, {n} worker(s) x {tpw} thread(s)")
    if kind == "slurm":
        opts = _slurm_options(options)
        describe = ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
        return DaskExecutor("slurm", lambda: _slurm_cluster(opts), f"slurm, {describe}")
    raise ConfigError(None, f"unknown executor kind {kind!r}; known: {', '.join(KINDS)}")


def executor_from(executor) -> Executor:
    """An :class:`Executor` from None, a kind string, a dict ``{"kind": ..., **options}`` or an executor."""
    if executor is None:
        return InProcessExecutor()
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, str):
        return get_executor(executor)
    if isinstance(executor, dict):
        opts = dict(executor)
        return get_executor(opts.pop("kind", "none"), **opts)
    raise TypeError(f"not an executor: {executor!r}")
