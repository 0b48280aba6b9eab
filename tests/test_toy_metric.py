"""A new UQ metric is one registration: this module registers a toy metric (the mean uncertainty of the test
structures) and shows it in ``uqpot evaluate``'s ``metrics.json`` and printed line, in the training summary's
test metrics and in the grid's metric table, with no other file of uqpot changed.  Then the contract every
registered metric keeps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from support import contract as C
from uqpot.cli.main import cli
from uqpot.metrics.registry import METRICS, Metric, MetricInputs, metrics, register_metric
from uqpot.fit.grid import format_table, table

TOY = Metric("toy_mean_u", lambda x: float(np.mean(x.uncertainty)), False, "toy mean U", ".5f", table=True)


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    """The toy metric while this module runs; other test modules see the built-in metrics only."""
    register_metric(TOY)
    yield
    METRICS.pop(TOY.name, None)


@pytest.fixture(scope="module")
def run(tmp_path_factory, ethanol_path, toy_registered):
    tmp = tmp_path_factory.mktemp("toy_metric")
    cfg = {"seed": 0, "out": str(tmp / "run"), "data": {"path": str(ethanol_path)},
           "split": {"train": 30, "val": 10, "test": 12, "seed": 0}, "model": C.SMALL,
           "uq": {"method": "ensemble", "members": 2}, "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3}}
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["train", str(tmp / "run.yaml"), "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return tmp / "run"


def test_the_toy_metric_end_to_end(run, ethanol_path):
    out = run.parent / "eval"
    res = CliRunner().invoke(cli, ["evaluate", str(run / "model.pt"), str(ethanol_path), "--indices",
                                   f"{run / 'split.json'}:test", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    u = np.load(out / "predictions.npz")["uncertainty"]
    assert len(u) == 12 and m["toy_mean_u"] == pytest.approx(float(np.mean(u)), rel=1e-12)
    # after the ranking metrics, before those of the calibrated variance
    keys = list(m)
    assert keys.index("roc_auc_p50") < keys.index("toy_mean_u") < keys.index("miscalibration_area")
    assert f"toy mean U {m['toy_mean_u']:.5f}" in res.output
    # the training run's test metrics carry it, and so does the grid's table of them
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["toy_mean_u"] == pytest.approx(m["toy_mean_u"], rel=1e-9)
    rows = table([{"job": {"method": "ensemble"}, "test": summary["test"], "training": summary["training"]}])
    assert rows[0]["toy_mean_u"] == pytest.approx(summary["test"]["toy_mean_u"], rel=1e-12)
    assert "toy_mean_u" in format_table(rows).splitlines()[0]


@pytest.mark.parametrize("name", list(dict.fromkeys([*METRICS, TOY.name])))
def test_metric_contract(name, toy_registered):
    """Every registered metric: an identifier name, a direction, a label, a number format; a UQ metric's
    function gives a float within its bounds on well-behaved inputs, the same twice."""
    m = METRICS[name]
    assert m.name == name and name.isidentifier() and m.direction in ("higher", "lower") and m.label
    assert m.kind in ("error", "uq", "loop") and len(m.bounds) == 2
    m.format(1.0)
    if m.kind != "uq":
        assert m.function is None or callable(m.function)
        return
    rng = np.random.default_rng(0)
    res = [rng.normal(0.0, s, (9, 3)) for s in np.linspace(0.5, 2.0, 30)]
    u = np.linspace(0.3, 4.0, 30) + rng.uniform(0, 0.1, 30)
    err = np.array([np.mean(r ** 2) for r in res])
    var = np.concatenate([np.full(r.size, s) for r, s in zip(res, u)])
    x = MetricInputs(u, err, res, var if m.needs_calibration else None)
    v = m.function(x)
    assert isinstance(v, float) and math.isfinite(v) and v == m.function(x)
    lo, hi = m.bounds
    assert (lo is None or v >= lo) and (hi is None or v <= hi)
    assert m in metrics(kind="uq")
