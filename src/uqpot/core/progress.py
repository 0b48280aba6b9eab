"""Progress of long work in a log file: plain lines at a bounded interval when nobody watches a terminal.

A cluster job or ``nohup uqpot ... > run.log 2>&1`` sends the output to a file, where a live progress bar
shows nothing (rich draws bars only on a terminal) and the log stays silent for as long as a data build or
a training takes.  :class:`LogProgress` fills that gap: when stderr is not a terminal it prints one line

    progress: training runs/x: 120/500 epochs (24%), 3.1 min elapsed, about 9.8 min left; val F 1.23

at most every :func:`interval` seconds (30 s; ``UQPOT_PROGRESS_SECONDS`` sets it, 0 prints every update),
with the estimated time left from the rate of the work done in this process (work found done on resume is
not counted in the rate).  On a terminal it prints nothing: the progress bars are there.  Every long phase
uses it: the data builds (:mod:`uqpot.data.sets._build`), labelling (:mod:`uqpot.oracle.base`), training
(:mod:`uqpot.train.trainer`), MD (:mod:`uqpot.md.batched`, :mod:`uqpot.md.campaign`) and the attack
(:mod:`uqpot.sample.adversarial`).
"""

from __future__ import annotations

import math
import os
import sys
import time

#: environment variable: seconds between two progress lines (0: a line at every update)
ENV = "UQPOT_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def interval() -> float:
    """Seconds between two progress lines: ``UQPOT_PROGRESS_SECONDS``, else 30."""
    try:
        value = float(os.environ.get(ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """``45 s``, ``3.2 min``, ``1.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LogProgress:
    """Plain progress lines of one phase (see the module docstring).

    ``what`` names the phase, ``total`` the work (None: unknown, no estimate), ``unit`` its unit.
    ``enabled`` (default: stderr is not a terminal) turns the lines off, e.g. with ``--no-progress``.
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "", *, done: int = 0, enabled=None,
                 stream=None, every: float | None = None, clock=time.monotonic):
        self.what, self.total, self.unit = what, total, unit
        self._stream = stream
        self.enabled = (not is_terminal(self.stream)) if enabled is None else bool(enabled) and not is_terminal(
            self.stream)
        self.every = interval() if every is None else float(every)
        self.clock = clock
        self.t0 = self.last = clock()
        self.done = self.start = int(done)  # work done before this process started (a resume) is not timed
        self.note = ""

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr

    def update(self, done: int | None = None, *, advance: int | None = None, total: int | None = None,
               note: str | None = None) -> None:
        """Records progress (``done`` so far, or ``advance`` by some) and prints a line when one is due."""
        if done is not None:
            self.done = int(done)
        if advance is not None:
            self.done += int(advance)
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        now = self.clock()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.t0
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            pct = 100.0 * self.done / self.total
            text = f"progress: {self.what}: {self.done}/{self.total}{unit} ({pct:.0f}%), {duration(elapsed)} elapsed"
            worked = self.done - self.start
            if 0 < worked and self.done < self.total:
                text += f", about {duration(elapsed / worked * (self.total - self.done))} left"
        else:
            text = f"progress: {self.what}: {self.done}{unit} done, {duration(elapsed)} elapsed"
        return text + (f"; {self.note}" if self.note else "")
