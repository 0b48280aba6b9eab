"""A study's tables are a function of (config, seed, data): the same toy study run in-process and on a
local Dask cluster of two worker processes gives the same summary, per-seed and claims tables."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml


TOY = {
    "system": "ammonia",
    "data": {"n_train": 20, "test_e_max": 16.0, "test_bin_width": 2.0, "test_per_bin": 1},
    "oracle": {"name": "tblite", "options": {"threads": 1}},
    "seeds": [0, 1],
    "loop": {
        "methods": ["ensemble", "gmm"], "generations": 2,
        # wide enough, and MD and attacks with enough replicas, that PyTorch splits reductions over threads
        # (tensors past its grain size of 32768 elements): a thread count that followed the executor (all
        # cores in-process, one on a Dask worker) would change the numbers
        "model": {"features": 64, "interactions": 1, "rbf": 6, "readout_hidden": 8},
        "uq": {"ensemble": {"members": 2}, "gmm": {"candidates": [1, 2]}},
        "train": {"epochs": 3, "batch_size": 16, "lr": 2.0e-3},
        "attack": {"n_seeds": 16, "iterations": 6, "lr": 0.01, "energy_cutoff": 100.0},
        "md": {"length_scale": 0.01, "runs": 10}, "neb": False,
    },
}
TIMING = ("seconds", "wall", "elapsed", "built", "started", "finished", "peak")


def _table(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if any(t in k for t in TIMING):
                continue
            x, y = ra[k], rb[k]
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                assert x == y, k
                continue
            assert (np.isnan(fx) and np.isnan(fy)) or fx == pytest.approx(fy, rel=1e-12, abs=1e-15), k


@pytest.mark.slow  # about two minutes on two cores; test_grid.py::test_local_cluster_equals_in_process runs by default
def test_same_tables_in_process_and_on_two_dask_workers(tmp_path):
    pytest.importorskip("tblite")
    pytest.importorskip("distributed")
    from uqpot.studies.reproduce import reproduce

    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(TOY))
    runs = {}
    for name, executor, options in (("none", "none", None), ("local", "local", {"n_workers": 2})):
        runs[name] = tmp_path / name
        reproduce("ammonia", str(tmp_path / "toy.yaml"), executor, runs[name], executor_options=options)
    for table in ("summary", "seeds", "claims"):
        _same(_table(runs["none"] / f"table_{table}.csv"), _table(runs["local"] / f"table_{table}.csv"))
    for seed in TOY["seeds"]:  # every step ran with the loop's fixed thread count, in-process and on workers
        for k in runs:
            gens = json.loads((runs[k] / f"seed{seed}" / "summary.json").read_text())["generations"]
            assert {r["threads"] for g in gens.values() for r in g.values()} == {1}
    claims = [json.loads((runs[k] / "claims.json").read_text())["claims"] for k in runs]
    assert [c["verdict"] for c in claims[0]] == [c["verdict"] for c in claims[1]]
    # the seeds differ from each other (replicates are not copies)
    rows = _table(runs["none"] / "table_seeds.csv")
    by_seed = {r["seed"]: r["forces_mae"] for r in rows if r["generation"] == "1" and r["method"] == "gmm"}
    assert by_seed["0"] != by_seed["1"]


def test_fixed_threads_sets_and_restores():
    import torch

    from uqpot.core.determinism import fixed_threads

    before = torch.get_num_threads()
    with fixed_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with fixed_threads(None):
        assert torch.get_num_threads() == before
