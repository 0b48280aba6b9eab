"""The Oracle protocol: label structures with a reference method, through the store, without raising.

``oracle.label(structures, store=None, provenance=None, executor=None) -> LabelResult``

* ``structures``: uqpot :class:`~uqpot.data.structures.Structure` objects or ``ase.Atoms`` (their own
  calculator results, if any, are ignored).
* Structures already in ``store`` for this oracle's ``method`` string are taken from the store and never
  recomputed; a stored failure is returned as a failure (not retried) unless the oracle was built with
  ``retry_failures=True``.
* Each new label (or failure) is written to the store as soon as it is computed: in-process, before the
  next structure is started; with a Dask executor, as each task finishes.
* A failure (non-converged SCF, an exception inside a calculator, a structure the method cannot treat)
  is recorded per structure and labelling goes on; nothing is raised through ``label``.
* ``oracle.calls`` counts the structures actually computed by this oracle object (in this process or on
  executor workers), so callers and tests can prove that nothing was computed twice.

Energies are kcal/mol and forces kcal/mol/Å (``LabelResult.atoms()`` returns ``ase.Atoms`` whose
SinglePointCalculator holds those units, not ASE's eV).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, runtime_checkable

import numpy as np

from ..data.store import Store, open_store
from ..data.structures import Structure
from ..core.errors import UqpotError
from ..core.progress import LogProgress


class OracleError(UqpotError):
    """A labelling failure of one structure (caught by ``label`` and recorded)."""


class NotConverged(OracleError):
    pass


@dataclass
class LabelRecord:
    index: int
    ok: bool
    from_store: bool
    wall_time: float  # seconds spent computing (0 for store hits)
    error: str | None = None
    store_id: int | None = None
    duplicate_of: int | None = None  # an earlier index of the same structure in the same call

    @property
    def status(self) -> str:
        return "ok" if self.ok else "failed"


@dataclass
class LabelResult:
    """Labelled structures in input order (None where labelling failed) and one record per structure."""

    method: str
    structures: list[Structure | None]
    records: list[LabelRecord]

    def __len__(self) -> int:
        return len(self.structures)

    def __iter__(self):
        return iter(self.structures)

    def __getitem__(self, i):
        return self.structures[i]

    @property
    def n_ok(self) -> int:
        return sum(r.ok for r in self.records)

    @property
    def n_failed(self) -> int:
        return sum(not r.ok for r in self.records)

    @property
    def n_computed(self) -> int:
        return sum(not r.from_store and r.duplicate_of is None for r in self.records)

    @property
    def n_from_store(self) -> int:
        return sum(r.from_store for r in self.records)

    @property
    def failures(self) -> list[LabelRecord]:
        return [r for r in self.records if not r.ok]

    def labelled(self) -> list[Structure]:
        """The successfully labelled structures (input order)."""
        return [s for s in self.structures if s is not None]

    def atoms(self) -> list:
        """``ase.Atoms`` (None for failures); results in kcal/mol and kcal/mol/Å."""
        return [None if s is None else s.to_atoms() for s in self.structures]

    def summary(self) -> str:
        wall = sum(r.wall_time for r in self.records)
        return (f"{self.method}: {len(self)} structure(s): {self.n_ok} labelled, {self.n_failed} failed, "
                f"{self.n_from_store} from the store, {self.n_computed} computed in {wall:.1f} s")


@runtime_checkable
class Oracle(Protocol):
    method: str
    calls: int

    def label(self, structures, store=None, provenance=None, executor=None) -> LabelResult: ...


def as_structure(obj) -> Structure:
    if isinstance(obj, Structure):
        return obj
    if hasattr(obj, "numbers") and hasattr(obj, "positions") and hasattr(obj, "cell"):
        return Structure.from_atoms(obj)
    raise TypeError(f"expected a uqpot Structure or an ase.Atoms, got {type(obj).__name__}")


@dataclass
class _Outcome:
    ok: bool
    energy: float | None = None
    forces: np.ndarray | None = None
    error: str | None = None
    wall_time: float = 0.0
    stress: np.ndarray | None = None


def _format_error(e: BaseException) -> str:
    name = type(e).__name__
    msg = str(e).strip() or "(no message)"
    tb = traceback.extract_tb(e.__traceback__)
    where = f" [at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}]" if tb else ""
    return f"{name}: {msg}{where}"


def _run_one(oracle: "BaseOracle", structure: Structure) -> _Outcome:
    """Computes one label; never raises (runs in-process or on an executor worker)."""
    t0 = time.perf_counter()
    try:
        result = oracle.compute(structure)  # (energy, forces) or (energy, forces, stress 3x3 or None)
        energy, forces = result[0], result[1]
        stress = result[2] if len(result) > 2 else None
        energy = float(energy)
        forces = np.asarray(forces, dtype=np.float64).reshape(structure.n_atoms, 3)
        if stress is not None:
            stress = np.asarray(stress, dtype=np.float64).reshape(3, 3)
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)) or (
                stress is not None and not np.all(np.isfinite(stress))):
            raise OracleError("non-finite energy, forces or stress")
        return _Outcome(True, energy, forces, None, time.perf_counter() - t0, stress)
    except Exception as e:  # noqa: BLE001  (every failure is recorded, never raised through label)
        return _Outcome(False, error=_format_error(e), wall_time=time.perf_counter() - t0)


class BaseOracle:
    """Implements :meth:`label` around :meth:`compute` (one structure → energy kcal/mol, forces kcal/mol/Å, and
    optionally the stress of a periodic structure, kcal/mol/Å³).

    Subclasses set ``self.method`` (the level-of-theory string that keys the store) and implement
    ``compute``, raising on failure.  They must stay picklable (for Dask workers): keep caches such as
    calculator objects out of the pickled state (see ``_transient``).
    """

    #: attribute names dropped when the oracle is pickled (rebuilt lazily)
    _transient: tuple[str, ...] = ()

    def __init__(self, method: str, retry_failures: bool = False):
        if not method or not isinstance(method, str):
            raise OracleError("an oracle needs a non-empty method string")
        self.method = method
        self.retry_failures = bool(retry_failures)
        self.calls = 0

    # -- to implement ---------------------------------------------------------------------------------
    def compute(self, structure: Structure) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    # -- pickling -------------------------------------------------------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        for name in self._transient:
            state[name] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r})"

    # -- labelling ------------------------------------------------------------------------------------
    def label(self, structures: Iterable, store: Store | str | None = None, provenance: dict | None = None,
              executor: Any = None) -> LabelResult:
        from ..core.executor import executor_from

        inputs = [as_structure(s) for s in structures]
        store = open_store(store)
        provenance = dict(provenance or {})
        if store is not None:
            # fail early (before any computation) on provenance the store cannot hold
            from ..data.store import _check_provenance

            _check_provenance(provenance)

        out: list[Structure | None] = [None] * len(inputs)
        records: list[LabelRecord | None] = [None] * len(inputs)
        todo: list[int] = []
        seen: dict[str, int] = {}  # hash -> first index (duplicates inside one call are computed once)
        duplicates: dict[int, int] = {}
        for i, s in enumerate(inputs):
            key = Store.hash(s, self.method)
            if key in seen:
                duplicates[i] = seen[key]
                continue
            seen[key] = i
            rec = store.lookup(s, self.method) if store is not None else None
            if rec is not None and (rec.ok or not self.retry_failures):
                if rec.ok:
                    out[i] = self._result_structure(s, rec.structure.energy, rec.structure.forces,
                                                    rec.structure.stress)
                records[i] = LabelRecord(i, rec.ok, True, 0.0, rec.error, rec.id)
                continue
            todo.append(i)

        progress = LogProgress(f"labelling with {self.method}", len(todo), "structures")
        failed = [0]

        def finish(i: int, outcome: _Outcome) -> None:
            self.calls += 1
            failed[0] += not outcome.ok
            progress.update(advance=1, note=f"{failed[0]} failed" if failed[0] else None)
            s = inputs[i]
            sid = None
            if outcome.ok:
                labelled = self._result_structure(s, outcome.energy, outcome.forces, outcome.stress)
                if store is not None:
                    sid = store.put(labelled, self.method, provenance)
                out[i] = labelled
            elif store is not None:
                sid = store.put_failure(s, self.method, outcome.error, provenance)
            records[i] = LabelRecord(i, outcome.ok, False, outcome.wall_time, outcome.error, sid)

        ex = executor_from(executor)
        owns = ex is not executor
        try:
            if ex.in_process:
                for i in todo:
                    finish(i, _run_one(self, inputs[i]))
            else:
                futures = {ex.submit(_run_one, self, inputs[i]): i for i in todo}
                for f in ex.as_completed(list(futures)):
                    i = futures[f]
                    try:
                        outcome = f.result()
                    except Exception as e:  # noqa: BLE001  (a worker died, a task was lost)
                        outcome = _Outcome(False, error=f"executor: {_format_error(e)}")
                    finish(i, outcome)
        finally:
            if owns:
                ex.close()

        for i, j in duplicates.items():
            r = records[j]
            out[i] = None if out[j] is None else self._result_structure(inputs[i], out[j].energy, out[j].forces,
                                                                        out[j].stress)
            records[i] = LabelRecord(i, r.ok, r.from_store, 0.0, r.error, r.store_id, duplicate_of=j)
        return LabelResult(self.method, out, records)  # type: ignore[arg-type]

    def _result_structure(self, s: Structure, energy, forces, stress=None) -> Structure:
        info = dict(s.info)
        info["method"] = self.method
        return Structure(
            numbers=np.asarray(s.numbers, dtype=np.int64).copy(),
            positions=np.asarray(s.positions, dtype=np.float64).copy(),
            cell=np.asarray(s.cell, dtype=np.float64).copy(),
            pbc=np.asarray(s.pbc, dtype=bool).copy(),
            energy=float(energy),
            forces=np.asarray(forces, dtype=np.float64).copy(),
            source=s.source,
            frame=s.frame,
            info=info,
            stress=None if stress is None else np.asarray(stress, dtype=np.float64).copy(),
        )
