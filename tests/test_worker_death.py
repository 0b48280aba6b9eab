"""A labelling worker that dies (SIGKILL inside the calculator) is recorded as a failure of that structure;
the other structures are labelled and the run goes on (a real Dask LocalCluster on loopback)."""

import os
import sys
from pathlib import Path

import numpy as np

from uqpot.data.store import Store
from uqpot.data.structures import Structure
from uqpot.core.executor import get_executor
from uqpot.oracle import get_oracle

TESTS = Path(__file__).resolve().parent


def test_dead_worker_is_a_recorded_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    sys.path.insert(0, str(TESTS))
    rng = np.random.default_rng(0)
    structures = [Structure(np.array([18, 18]), np.array([[0.0, 0, 0], [3.8 + 0.1 * k, 0, 0]]) + rng.normal(0, 0.01, (2, 3)),
                            np.zeros((3, 3)), np.zeros(3, bool)) for k in range(5)]
    structures[2].positions[0, 0] = 150.0  # this one kills whatever process labels it
    structures[2].positions[1, 0] = 153.8
    oracle = get_oracle("ase", calculator="support.killer.KillerLJ", kwargs={"sigma": 3.4, "epsilon": 0.0104})
    store = Store(tmp_path / "labels.db")
    with get_executor("local", n_workers=2) as ex:
        res = oracle.label(structures, store=store, executor=ex)
    assert [r.ok for r in res.records] == [True, True, False, True, True]
    assert "executor" in res.records[2].error
    assert store.count(status="ok") == 4 and len(store.failures()) == 1
    assert "1 failed" in res.summary() or res.n_failed == 1
