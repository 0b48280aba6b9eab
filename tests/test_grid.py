"""Grids of trainings on a real Dask LocalCluster over loopback: same results as in-process; a worker
killed mid-grid does not stop the grid; finished jobs are skipped on a rerun."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from uqpot.core.executor import get_executor
from uqpot.fit.grid import Job, run_grid, table

SMALL = {"features": 16, "interactions": 2, "rbf": 8, "readout_hidden": 8}


def jobs(tmp, ethanol_path, epochs=3, n=4):
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        perm = rng.permutation(800)
        idx = {"train": perm[:24].tolist(), "val": perm[24:32].tolist(), "test": perm[32:44].tolist()}
        method = ("gmm", "mve")[k % 2]
        out.append(Job(name=f"j{k}", data=str(ethanol_path), indices=idx, method=method, seed=k,
                       out=str(tmp / f"j{k}"), model=SMALL, uq={"candidates": [1, 2]} if method == "gmm" else {},
                       train={"epochs": epochs, "batch_size": 8, "lr": 2e-3}, molecule="ethanol", split=k))
    return out


def test_local_cluster_equals_in_process(tmp_path, ethanol_path):
    local = run_grid(jobs(tmp_path / "inproc", ethanol_path))
    with get_executor("local", n_workers=2) as ex:
        dask = run_grid(jobs(tmp_path / "dask", ethanol_path), ex)
    for a, b in zip(local, dask):
        assert a["job"]["name"] == b["job"]["name"]
        for k in ("forces_mae", "energy_mae", "spearman", "roc_auc_p20"):
            assert b["test"][k] == pytest.approx(a["test"][k], rel=1e-4, abs=1e-6), k
    rows = table(dask)
    assert {r["method"] for r in rows} == {"gmm", "mve"} and all(r["n"] == 2 for r in rows)


@pytest.mark.slow  # test_worker_death.py covers a dead worker by default
def test_killed_worker_does_not_stop_the_grid(tmp_path, ethanol_path):
    js = jobs(tmp_path, ethanol_path, epochs=12, n=4)
    with get_executor("local", n_workers=2) as ex:
        client = ex.client
        killed = []

        def killer():
            # wait until a job is running (its checkpoint appears), then kill a worker process
            t0 = time.time()
            while time.time() - t0 < 120 and not list(tmp_path.glob("j*/checkpoint.pt")):
                time.sleep(0.05)
            pids = list(client.run(os.getpid).values())
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

        th = threading.Thread(target=killer)
        th.start()
        results = run_grid(js, ex)
        th.join()
    assert killed
    assert len(results) == 4 and all((tmp_path / f"j{k}" / "summary.json").is_file() for k in range(4))
    assert all(np.isfinite(r["test"]["forces_mae"]) for r in results)


def test_finished_jobs_are_skipped(tmp_path, ethanol_path):
    js = jobs(tmp_path, ethanol_path, n=2)
    first = run_grid(js)
    stamp = [(tmp_path / f"j{k}" / "summary.json").stat().st_mtime_ns for k in range(2)]
    again = run_grid(js)
    assert [(tmp_path / f"j{k}" / "summary.json").stat().st_mtime_ns for k in range(2)] == stamp
    assert json.dumps(first, sort_keys=True, default=str) == json.dumps(again, sort_keys=True, default=str)


def test_grid_report_draws_the_supporting_figures(tmp_path, ethanol_path):
    """The rMD17 report: Fig. 2 / S2 / Table S2 analogues plus parity plots, the GMM's BIC/silhouette and
    latent PCA, and training wall time and peak memory per method; every job keeps its split beside it."""
    from uqpot.data.splits import load_split
    from uqpot.report.grid import build_grid_report

    js = jobs(tmp_path, ethanol_path, n=2)
    results = run_grid(js)
    assert load_split(tmp_path / "j0" / "split.json")["train"].tolist() == js[0].indices["train"]
    assert all(r["training"]["step_peak_mb"] > 0 for r in results)
    html = build_grid_report(tmp_path).read_text()
    for caption in ("parity of energies and forces", "BIC and silhouette", "PCA of the training set",
                    "peak memory of a training step", "Table S2 analogue", "Fig. S2 analogue"):
        assert caption in html, caption
    cost = json.loads((tmp_path / "results.json").read_text())["tables"]["cost"]
    assert {r["method"] for r in cost} == {"gmm"} and cost[0]["step_peak_mb"] > 0


@pytest.mark.slow  # test_loop.py::test_posthoc_methods_share_one_backbone_in_generation_one covers sharing by default
def test_none_gmm_llpr_share_one_backbone_per_seed(tmp_path, ethanol_path):
    """Jobs of none, gmm and llpr with one backbone train one network and wrap it: each gives the numbers of
    training it alone, and the grid trains the network once (in-process and on a Dask cluster)."""
    from uqpot.data.splits import load_split

    rng = np.random.default_rng(3)
    perm = rng.permutation(800)
    idx = {"train": perm[:24].tolist(), "val": perm[24:32].tolist(), "test": perm[32:44].tolist()}

    def grid(root, shared):
        return [Job(name=f"s0-{m}", data=str(ethanol_path), indices=idx, method=m, seed=5, out=str(root / m),
                    model=SMALL, uq={"candidates": [1, 2]} if m == "gmm" else {},
                    train={"epochs": 3, "batch_size": 8, "lr": 2e-3}, molecule="ethanol",
                    backbone=str(root / "backbone") if shared else None) for m in ("none", "gmm", "llpr")]

    alone = run_grid(grid(tmp_path / "alone", False))
    shared = run_grid(grid(tmp_path / "shared", True))
    with get_executor("local", n_workers=2) as ex:
        on_dask = run_grid(grid(tmp_path / "dask", True), ex)
    for a, b, c in zip(alone, shared, on_dask):
        assert a["job"]["method"] == b["job"]["method"] == c["job"]["method"]
        for k in ("forces_mae", "energy_mae", "spearman", "roc_auc_p20", "cnll", "calibration_a"):
            if a["test"].get(k) is not None:
                assert b["test"][k] == pytest.approx(a["test"][k], rel=1e-9, abs=1e-12), (a["job"]["method"], k)
                assert c["test"][k] == pytest.approx(a["test"][k], rel=1e-6, abs=1e-9), (a["job"]["method"], k)
        assert b["backbone"] == str(tmp_path / "shared" / "backbone") and b["own_seconds"] <= b["wall_seconds"]
        assert load_split(tmp_path / "shared" / b["job"]["method"] / "split.json")["train"].tolist() == idx["train"]
    # one training: one history, in the backbone; the method directories hold no checkpoint
    assert (tmp_path / "shared" / "backbone" / "history.csv").is_file()
    assert not any((tmp_path / "shared" / m / "checkpoint.pt").exists() for m in ("none", "gmm", "llpr"))
    assert [r["training"]["epochs_run"] for r in shared] == [3, 3, 3]
    # jobs of one backbone must agree on what it depends on
    bad = grid(tmp_path / "bad", True)
    bad[1].seed = 6
    with pytest.raises(ValueError, match="differ in data, split, seed"):
        run_grid(bad)


def test_rmd17_study_with_seeds_reports_intervals_and_claims(tmp_path, ethanol_path):
    """`uqpot reproduce rmd17 --data FILE --seeds 0,1`: every (split, method) trained per seed, the metrics
    with 95% intervals over seeds, the Table S2 analogue beside the paper's values, the claims checked."""
    import yaml
    from click.testing import CliRunner

    from uqpot.cli.main import cli

    preset = {"system": "rmd17", "molecules": ["ethanol"], "splits": [1], "methods": ["mve", "gmm"],
              "seeds": [0, 1], "local_split": [0.05, 0.02, 0.03], "model": SMALL,
              "uq": {"gmm": {"candidates": [1, 2]}}, "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3}}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(preset))
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["reproduce", "rmd17", "--preset", str(tmp_path / "toy.yaml"), "--executor", "none",
                                 "--data", str(ethanol_path), "--molecules", "ethanol", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for s in (0, 1):
        assert (out / "ethanol" / "split1" / f"seed{s}" / "gmm" / "model.pt").is_file()
    res = json.loads((out / "results.json").read_text())["tables"]
    rows = {row["method"]: row for row in res["metrics"]}
    assert set(rows) == {"mve", "gmm"} and all(row["n"] == 2 for row in rows.values())
    for row in rows.values():
        assert row["spearman_lo"] <= row["spearman"] <= row["spearman_hi"]
    s2 = {row["method"]: row for row in res["table_s2"]}
    assert s2["gmm"]["paper_roc_auc_p20"] == 0.693 and s2["mve"]["paper_roc_auc_p50"] == 0.800
    claims = {c["id"]: c for c in json.loads((out / "claims.json").read_text())["claims"]}
    order = claims["tableS2_auc20_order"]["comparisons"]
    assert [c["comparison"] for c in order] == ["mve better than gmm"]  # the pairs this grid has
    assert order[0]["interval"] == "t over 2 paired units (molecule, split, seed)"
    best = claims["fig2c_ensemble_lowest_force_mae"]
    assert best["verdict"] == "not measured"  # no ensemble in this grid
    assert "The paper&#x27;s claims, checked" in (out / "report.html").read_text()
