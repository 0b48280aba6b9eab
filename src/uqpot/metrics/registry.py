"""The metrics every table, print and claim reports, and their registry.

A metric is a :class:`Metric` record: its name (the key in ``metrics.json``, the loop's ``summary.json``, the
tables' columns), how it is computed (``function``, for the metrics of an uncertainty against the test
errors; None for those computed elsewhere: the errors by :func:`uqpot.metrics.errors.error_summary`, a loop's
quantities by the loop), which way is better, a label and a number format for prints, and where it is
shown.  The registry keeps the order of registration, which is the order of the report tables' columns.

Adding a UQ metric is one file: a function of :class:`MetricInputs` (the test set's U per structure, its
per-structure squared force error ε, the force residuals, and, for ``needs_calibration`` metrics, the
calibrated variance of every force component) registered with :func:`register_metric`.  ``uqpot evaluate``
(``metrics.json``), training summaries and the grid's tables then carry it (``table=True``: in the tables
of a grid and of a loop); claims may name it as their quantity (``claim=True``).  A function that raises
ValueError (the metric is undefined, e.g. a constant U) gives NaN and a note, when it needs no calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class MetricInputs:
    """What a UQ metric is computed from, for one test set."""

    uncertainty: np.ndarray  # U per structure (n,)
    error: np.ndarray  # ε per structure (n,): mean squared force error
    residuals: object  # force residuals F_pred - F_ref per structure (uqpot.metrics.residuals)
    variance: Optional[np.ndarray] = None  # calibrated σ² of every force component (flat), when needed


@dataclass(frozen=True)
class Metric:
    name: str
    #: the value from the inputs (None: computed elsewhere, e.g. the errors by ``error_summary``)
    function: Optional[Callable[[MetricInputs], float]]
    #: True when a higher value is better (Spearman, ROC-AUC), False when lower is (errors, calibration)
    higher_is_better: bool
    label: str  # in prints and figure titles
    fmt: str = ".3f"  # number format in prints
    kind: str = "uq"  # "error" (test-set errors), "uq" (U against the errors), "loop" (a loop's own quantity)
    #: one of the numbers ``uqpot evaluate`` prints and checks to be finite
    headline: bool = False
    #: a column of the grid's and the loop's metric tables
    table: bool = False
    #: in the summaries and the UQ metric figures as well (False: in the full tables only)
    summary: bool = True
    #: only where the data have it (e.g. a stress): reported after the others, when present
    optional: bool = False
    #: needs the calibrated variance (computed after the calibration fit; its errors are not turned into NaN)
    needs_calibration: bool = False
    #: the range of the value (None: unbounded on that side); intervals are cut there
    bounds: tuple = (None, None)
    #: a claim (uqpot.report.claims) may name it as its quantity
    claim: bool = True
    #: ROC-AUC's error percentile (``uq_metrics(percentiles=...)`` chooses among them)
    percentile: Optional[float] = None
    #: what tells metrics of one label apart in a print ("p20": "ROC-AUC 0.81 (p20) 0.77 (p50)")
    qualifier: str = ""
    #: the value of a metric of U and ε alone on many resamples at once: U and ε of shape (R, n) -> R values,
    #: nan where undefined; equal to ``function`` row by row (the bootstraps use it: one call, not R)
    batched: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def format(self, value) -> str:
        return format(value, self.fmt)


#: metric name -> record, in the order of registration
METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Registers ``metric`` (a later registration of the same name replaces it in place)."""
    if not metric.name or not metric.name.isidentifier():
        raise ValueError(f"a metric's name is an identifier (a column and a JSON key), not {metric.name!r}")
    if metric.kind not in ("error", "uq", "loop"):
        raise ValueError(f"metric {metric.name}: kind is 'error', 'uq' or 'loop', not {metric.kind!r}")
    if metric.kind == "uq" and metric.function is None:
        raise ValueError(f"metric {metric.name}: a UQ metric needs its function")
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


def metrics(**where) -> list[Metric]:
    """The registered metrics whose attributes equal ``where`` (e.g. ``metrics(kind="uq", table=True)``), in
    the order of registration."""
    return [m for m in METRICS.values() if all(getattr(m, k) == v for k, v in where.items())]


def names(**where) -> tuple[str, ...]:
    return tuple(m.name for m in metrics(**where))


def table_names(optional: bool | None = None, summary: bool | None = None) -> tuple[str, ...]:
    """The columns of the metric tables (registration order): optional ones (a stress) included unless
    ``optional=False``; with ``summary=True`` only those of the summaries."""
    return tuple(m.name for m in metrics(table=True) if (optional is None or m.optional == optional)
                 and (summary is None or m.summary == summary))


def describe(values: dict, chosen: list[Metric]) -> str:
    """One line of ``values`` for the metrics ``chosen`` (those present), each as "label value", metrics of
    the same label one after another sharing it ("ROC-AUC 0.812 (p20) 0.771 (p50)"), joined by commas."""
    parts: list[list] = []
    for m in chosen:
        if m.name not in values:
            continue
        text = m.format(values[m.name]) + (f" ({m.qualifier})" if m.qualifier else "")
        if parts and parts[-1][0] == m.label:
            parts[-1][1].append(text)
        else:
            parts.append([m.label, [text]])
    return ", ".join(f"{label} {' '.join(texts)}" for label, texts in parts)


def bounds(name: str) -> tuple:
    """The range of a metric's value ((None, None) for a name not registered)."""
    m = METRICS.get(name)
    return m.bounds if m is not None else (None, None)


def in_order_of(keys, values: dict) -> list[str]:
    """``keys`` in the order they appear in ``values`` (those missing from it last, in their own order)."""
    pos = {k: i for i, k in enumerate(values)}
    return sorted(keys, key=lambda k: pos.get(k, len(pos)))
