"""Shared machinery of the data-set builds: progress display, labelling through the store, slot sampling.

A *slot* is one wanted structure: a base geometry, a displacement direction and a target energy.  Each
round, every open slot proposes a geometry at amplitude ``s`` along its direction; all proposals of the
round are labelled in one call (so an executor can run them in parallel), and each slot corrects its
amplitude with the model ``E(s) = E0 + c s²`` fitted to its last label (a secant step in ``s²``), until
its structure lands where it is wanted or it runs out of attempts.  Every slot draws its direction from
its own seeded random stream, so the candidates, and therefore the labels, are the same on every run:
a second run finds them all in the store.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ...core.progress import LogProgress
from ._common import BuildError


class StageProgress:
    """A rich progress display with one line per build stage (silent when ``enabled`` is False)."""

    def __init__(self, enabled: bool = True, console=None):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        self.console = console or Console(stderr=True)
        self.enabled = bool(enabled)
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                  console=self.console, disable=not self.enabled)
        self._task = None
        self._log = None  # plain progress lines where the console is not a terminal (uqpot.core.progress)

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        self._progress.__exit__(*exc)
        return False

    def stage(self, description: str, total: int | None = None) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total or
                                  self._progress.tasks[-1].completed)
        self._task = self._progress.add_task(description, total=total, note="")
        self._log = LogProgress(description, total, enabled=self.enabled and not self.console.is_terminal,
                                stream=self.console.file)

    def update(self, completed: int | None = None, total: int | None = None, note: str | None = None,
               advance: int | None = None) -> None:
        if self._task is None:
            return
        kw = {}
        if completed is not None:
            kw["completed"] = completed
        if total is not None:
            kw["total"] = total
        if note is not None:
            kw["note"] = note
        if advance is not None:
            kw["advance"] = advance
        self._progress.update(self._task, **kw)
        self._log.update(completed, advance=advance, total=total, note=note)

    def log(self, message: str) -> None:
        if self.enabled:
            self._progress.console.print(message, highlight=False)


@dataclass
class LabelCounter:
    """What the oracle did during a build: labels computed now, found in the store, failed."""

    computed: int = 0
    from_store: int = 0
    failed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"computed": self.computed, "from_store": self.from_store, "failed": self.failed,
                "compute_seconds": round(self.seconds, 2)}


class Labeller:
    """Labels lists of structures with ``oracle`` through ``store`` (every label is committed before the
    next structure starts; stored labels are never recomputed) and counts what happened."""

    def __init__(self, oracle, store, source: str, executor=None):
        self.oracle = oracle
        self.store = store
        self.source = source
        self.executor = executor
        self.counter = LabelCounter()

    def __call__(self, structures, stage: str):
        if not structures:
            return [], []
        res = self.oracle.label(structures, store=self.store, executor=self.executor,
                                provenance={"source": self.source, "stage": stage})
        for r in res.records:
            if r.duplicate_of is not None:
                continue
            if r.from_store:
                self.counter.from_store += 1
            else:
                self.counter.computed += 1
                self.counter.seconds += r.wall_time
            if not r.ok:
                self.counter.failed += 1
        return res.structures, res.records

    def one(self, structure, stage: str):
        """The labelled structure; a failure here is fatal for the build (BuildError)."""
        out, records = self(structure if isinstance(structure, list) else [structure], stage)
        if out[0] is None:
            raise BuildError(f"{self.oracle.method}: labelling a {stage} structure failed: {records[0].error}")
        return out[0]


@dataclass
class Slot:
    """One wanted structure (see the module docstring).  ``direction`` is a displacement (Å per atom,
    shape (n, 3)) scaled so that the harmonic estimate of the energy at amplitude ``s`` is ``s²``
    (kcal/mol) above ``e0``; ``e0`` is None until the base itself has been labelled."""

    index: int
    stage: str
    kind: str
    target: float  # kcal/mol, relative to the build's reference energy
    base: np.ndarray  # (n, 3) Å
    direction: np.ndarray  # (n, 3) Å at s = 1
    e0: float | None = 0.0
    g0: float = 0.0  # dE/ds at s = 0 (kcal/mol per unit amplitude)
    bin: int | None = None
    history: list = field(default_factory=list)  # (s, relative energy or None, dE/ds or None)
    done: bool = False
    info: dict = field(default_factory=dict)

    @property
    def attempts(self) -> int:
        return len(self.history)

    def record(self, s: float, energy: float | None, forces=None) -> None:
        """Adds a label at amplitude ``s``: relative energy and the slope dE/ds = -Σ F·direction."""
        slope = None if energy is None or forces is None else float(-(np.asarray(forces) * self.direction).sum())
        self.history.append((float(s), energy, slope))
        if self.e0 is None and s == 0.0:
            self.e0 = energy if energy is not None else 0.0
            self.g0 = slope or 0.0

    def next_amplitude(self, prior: "CurvaturePrior | None" = None, max_ratio: float = 3.0) -> float:
        """The amplitude to try next, from the slot's last label (its energy and its slope along the
        direction, i.e. the forces):

        * from the minimum (E0 with zero slope at s = 0): E(s) = E0 + c·s^p with p = s·E'/(E - E0) and c
          fitted to the last label (a power law through the value with the right slope);
        * from a base with a slope g0 (a point of the inversion path): E(s) = E0 + g0·s + b·s², b fitted
          to the last label;
        * before the first label: c from the prior (the median seen for the slot's kind; 1, harmonic,
          before any) and p = 2.
        Steps are limited to a factor ``max_ratio``; a failed label steps back.
        """
        if self.e0 is None:
            return 0.0  # label the base first
        want = max(self.target - self.e0, 0.0)
        tried = [h for h in self.history if h[0] > 0]
        if not tried:
            c = prior.curvature(self.kind) if prior is not None else 1.0
            if self.g0 and self.g0 < 0:
                self.direction = -self.direction  # go uphill from the base
                self.g0 = -self.g0
            g = self.g0 or 0.0
            return float((-g + math.sqrt(g * g + 4 * c * want)) / (2 * c))
        s1, e1, d1 = tried[-1]
        if e1 is None:
            return 0.7 * s1
        s_new = None
        if self.g0:
            b = (e1 - self.e0 - self.g0 * s1) / s1**2
            if b > 1e-12:
                s_new = (-self.g0 + math.sqrt(self.g0**2 + 4 * b * want)) / (2 * b)
        if s_new is None and e1 > self.e0:
            p = s1 * d1 / (e1 - self.e0) if d1 is not None else 2.0
            p = min(max(p, 1.0), 6.0)
            s_new = s1 * (want / (e1 - self.e0)) ** (1.0 / p)
        if s_new is None:
            s_new = s1 * max_ratio
        return float(min(max(s_new, s1 / max_ratio), s1 * max_ratio))

    def positions(self, s: float) -> np.ndarray:
        return self.base + s * self.direction


class CurvaturePrior:
    """The median curvature c = (E - E0)/s² of the first labels of each slot kind: new slots aim their
    first amplitude with it (``default`` before any: 1, harmonic, for normal-mode amplitudes).  Filled in
    slot order: deterministic."""

    def __init__(self, default: float = 1.0, fallback: str = "normal-modes"):
        self._c: dict[str, list[float]] = {}
        self.default = float(default)
        #: the kind whose curvature stands in for a kind without any (e.g. displacements from a path point)
        self.fallback = fallback

    def add(self, slot: "Slot") -> None:
        good = [h for h in slot.history if h[0] > 0 and h[1] is not None]
        if len(good) == 1 and slot.e0 is not None and good[0][1] > slot.e0 and not slot.g0:
            s, e, _ = good[0]
            self._c.setdefault(slot.kind, []).append((e - slot.e0) / s**2)

    def curvature(self, kind: str) -> float:
        seen = self._c.get(kind) or self._c.get(self.fallback)
        return float(np.median(seen)) if seen else self.default


def dirichlet_direction(rng, eigenvalues, modes_cart, weights=None) -> np.ndarray:
    """A random combination of normal modes whose harmonic energy at unit amplitude is 1 kcal/mol.

    ``eigenvalues``: (k,) mass-weighted Hessian eigenvalues (kcal/mol/Å²/amu); ``modes_cart``: (k, n, 3)
    Cartesian displacements per unit normal coordinate (Å per Å·amu^½).  The energy is shared among the
    modes by a Dirichlet draw (``weights``: its concentration), with random signs.
    """
    k = len(eigenvalues)
    frac = rng.dirichlet(np.ones(k) if weights is None else np.asarray(weights, dtype=float))
    signs = rng.choice([-1.0, 1.0], size=k)
    q = signs * np.sqrt(2.0 * frac / np.asarray(eigenvalues))
    return np.tensordot(q, modes_cart, axes=1)


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 2)


__all__ = ["StageProgress", "Labeller", "LabelCounter", "Slot", "CurvaturePrior", "dirichlet_direction", "BuildError"]
