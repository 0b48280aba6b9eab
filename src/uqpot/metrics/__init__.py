"""Metrics: errors, UQ metrics (and their registry: :mod:`uqpot.metrics.registry`), intervals, significance.

Importing this package registers the built-in metrics, in the order of the report tables' columns."""

from . import errors, ranking, calibration, quantities  # noqa: F401  (they register their metrics)
from .registry import METRICS, Metric, MetricInputs, get_metric, metrics, register_metric  # noqa: F401
