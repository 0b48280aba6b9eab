"""The quantities a loop measures besides the test metrics (MD stability, the NEB barrier, the samples the
oracle labelled), registered as metrics of kind ``loop`` so that claims, intervals and tables know which way
is better and their range; the loop (:mod:`uqpot.loop`) computes them."""

from __future__ import annotations

from .registry import Metric, register_metric

register_metric(Metric("stable_md_fraction", None, True, "fraction of stable MD trajectories", kind="loop",
                       bounds=(0.0, 1.0)))
register_metric(Metric("md_mean_stable_time_fs", None, True, "mean stable MD time (fs)", ".1f", kind="loop",
                       bounds=(0.0, None)))
register_metric(Metric("neb_barrier_error", None, False, "|NEB barrier error| (kcal/mol)", kind="loop",
                       bounds=(0.0, None)))
register_metric(Metric("samples_added", None, True, "samples added", ".0f", kind="loop", bounds=(0.0, None),
                       claim=False))
