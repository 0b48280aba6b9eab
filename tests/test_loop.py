"""The active-learning loop with a cheap oracle (GFN2-xTB through tblite): generations run, samples are
labelled through the store, and a rerun resumes without repeating a step or an oracle call."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from uqpot.data.io import ReadOptions, read_structures, write_extxyz
from uqpot.loop.active_learning import ActiveLearning, LoopConfig
from uqpot.loop.replicates import run_loop

pytest.importorskip("tblite")


@pytest.fixture
def ammonia_files(tmp_path, ammonia):
    e = ammonia.energies()
    low = np.nonzero(e < 5.0)[0][:24]
    high = np.nonzero(e >= 5.0)[0][:12]
    write_extxyz(ammonia.subset(low), tmp_path / "train.extxyz")
    write_extxyz(ammonia.subset(high), tmp_path / "test.extxyz")
    return tmp_path / "train.extxyz", tmp_path / "test.extxyz"


def loop_cfg(tmp_path, files, methods=("ensemble", "gmm"), generations=2, epochs=3):
    return {
        "seed": 0, "out": str(tmp_path / "loop"), "system": "ammonia", "methods": list(methods),
        "generations": generations,
        "data": {"train": str(files[0]), "test": str(files[1]), "align_structures": 2},
        "model": {"features": 16, "interactions": 2, "rbf": 8, "readout_hidden": 8},
        "uq": {"ensemble": {"members": 2}, "gmm": {"candidates": [1, 2]}},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 2e-3, "progress": False},
        "attack": {"n_seeds": 4, "iterations": 5, "iterations_evidential": 5, "lr": 0.02, "energy_cutoff": 200.0},
        "oracle": {"name": "tblite", "options": {"threads": 1}},
    }


def test_two_generations_and_resume(tmp_path, ammonia_files):
    cfg = LoopConfig.model_validate(loop_cfg(tmp_path, ammonia_files))
    al = ActiveLearning(cfg)
    summary = run_loop(al)
    calls = al.oracle.calls
    assert set(summary["generations"][1]) == {"ensemble", "gmm"}
    for method in ("ensemble", "gmm"):
        lab = summary["generations"][1][method]["label"]
        assert lab["n_candidates"] >= 1 and lab["n_added"] >= 1
        assert lab["n_failed"] == 0 and lab["n_added"] + len(lab["dropped"]) == lab["n_candidates"]
        added = read_structures(tmp_path / "loop" / "gen1" / method / "attack" / "labelled.extxyz")
        assert len(added) == lab["n_added"]
        # generation 2 trains on the initial pool plus the new samples
        g2 = summary["generations"][2][method]
        g1 = summary["generations"][1][method]
        assert g2["n_train"] + g2["n_val"] == g1["n_train"] + g1["n_val"] + lab["n_added"]
        assert "attack" not in g2  # the last generation is not attacked
        # the attack started from every initial structure (training and validation pools), as the paper's
        att = summary["generations"][1][method]["attack"]
        assert att["seed_pool"] == "initial" and att["pool_size"] == 24
    assert (tmp_path / "loop" / "alignment.json").is_file()
    # the store holds every label once
    from uqpot.data.store import Store

    store = Store(tmp_path / "loop" / "labels.db")
    n_labels = store.count(status="ok")
    assert n_labels == calls
    # a rerun repeats nothing
    al2 = ActiveLearning(LoopConfig.model_validate(loop_cfg(tmp_path, ammonia_files)))
    again = run_loop(al2)
    assert al2.oracle.calls == 0 if al2._oracle is not None else True
    assert again["generations"][2] == json.loads(json.dumps(summary["generations"][2]))
    # the progress line says those steps were an earlier run's, and estimates no time from them
    rerun = (tmp_path / "loop" / "loop.log").read_text().split("generation 1")[-1]
    assert "done (finished by an earlier run)" in rerun and "resuming" in rerun


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["label.json", "model.pt", "candidates.extxyz"])
def test_sigkill_and_resume(tmp_path, ammonia_files, kill_after):
    raw = loop_cfg(tmp_path, ammonia_files, epochs=6)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "uqpot.cli.main", "loop", str(tmp_path / "c.yaml"), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "loop"
    t0 = time.time()
    while time.time() - t0 < 300 and not list(out.rglob(kill_after)):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from uqpot.data.store import Store

    store = Store(out / "labels.db")
    hashes = [rec.hash for rec in store.records()]
    assert len(hashes) == len(set(hashes))  # every label once
    # same final models as an uninterrupted run
    ref_raw = dict(raw, out=str(tmp_path / "ref"))
    run_loop(ActiveLearning(LoopConfig.model_validate(ref_raw)))
    import uqpot, torch

    for method in ("ensemble", "gmm"):
        a = uqpot.load(out / "gen2" / method / "train" / "model.pt")
        b = uqpot.load(tmp_path / "ref" / "gen2" / method / "train" / "model.pt")
        for k, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[k], rtol=1e-5, atol=1e-6)


def test_replicate_seeds_share_one_store(tmp_path, ammonia_files):
    """`uqpot loop CONFIG --seeds 0,1`: one loop per seed in OUT/seed<s>, one label store; the report gives
    means over both seeds."""
    from click.testing import CliRunner

    from uqpot.cli.main import cli
    from uqpot.data.store import Store

    raw = loop_cfg(tmp_path, ammonia_files, methods=("gmm",), generations=2, epochs=2)
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(cli, ["loop", str(tmp_path / "loop.yaml"), "--seeds", "0,1", "--no-progress"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = tmp_path / "loop"
    assert "seed 1 gen 2 gmm" in r.output and f"summary: {out / 'summary.json'}" in r.output
    for s in (0, 1):
        assert yaml.safe_load((out / f"seed{s}" / "config.yaml").read_text())["seed"] == s
        assert not (out / f"seed{s}" / "labels.db").exists()
    assert Store(out / "labels.db").count(status="ok") > 0
    a, b = (read_structures(out / f"seed{s}" / "gen1" / "gmm" / "attack" / "candidates.extxyz",
                            ReadOptions(require_energy=False, require_forces=False, min_distance=0.0))
            for s in (0, 1))
    assert not np.allclose(a[0].positions, b[0].positions)  # the seeds attack differently
    r = CliRunner().invoke(cli, ["report", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "results.json").read_text())["tables"]["summary"]
    assert all(row["n_seeds"] == 2 for row in rows)
    r = CliRunner().invoke(cli, ["loop", str(tmp_path / "loop.yaml"), "--seeds", "0,0"])
    assert r.exit_code == 2 and "distinct" in r.output


def test_posthoc_methods_share_one_backbone_in_generation_one(tmp_path, ammonia_files):
    """gmm and llpr have the same data in generation 1: one network is trained (gen1/backbone) and each wraps
    it, with the numbers of training it alone; from generation 2 on each trains its own."""
    both = loop_cfg(tmp_path / "both", ammonia_files, methods=("gmm", "llpr"), generations=2)
    summary = run_loop(ActiveLearning(LoopConfig.model_validate(both)))
    root = tmp_path / "both" / "loop"
    assert (root / "gen1" / "backbone" / "train" / "model.pt").is_file()
    for m in ("gmm", "llpr"):
        tr = json.loads((root / "gen1" / m / "train" / "summary.json").read_text())
        assert tr["backbone"] == str(root / "gen1" / "backbone" / "train")
        assert not (root / "gen1" / m / "train" / "checkpoint.pt").exists()
        assert (root / "gen2" / m / "train" / "checkpoint.pt").is_file()  # generation 2: its own network
        assert "backbone" not in json.loads((root / "gen2" / m / "train" / "summary.json").read_text())
    alone = loop_cfg(tmp_path / "alone", ammonia_files, methods=("gmm",), generations=1)
    ref = run_loop(ActiveLearning(LoopConfig.model_validate(alone)))
    a, b = summary["generations"][1]["gmm"]["test"], ref["generations"][1]["gmm"]["test"]
    for k in ("forces_mae", "energy_mae", "spearman", "roc_auc_p20", "cnll"):
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k


@pytest.mark.slow  # test_grid.py::test_local_cluster_equals_in_process covers Dask equivalence by default
def test_shared_backbone_on_dask_workers_equals_in_process(tmp_path, ammonia_files):
    """On an executor the backbone is trained once before the methods that wrap it start; the same numbers
    as in-process."""
    from uqpot.core.executor import get_executor

    cfgs = {name: LoopConfig.model_validate(loop_cfg(tmp_path / name, ammonia_files, methods=("gmm", "llpr"),
                                                     generations=1)) for name in ("inproc", "dask")}
    a = run_loop(ActiveLearning(cfgs["inproc"]))
    with get_executor("local", n_workers=2) as ex:
        b = run_loop(ActiveLearning(cfgs["dask"], executor=ex))
    for m in ("gmm", "llpr"):
        for k in ("forces_mae", "spearman", "roc_auc_p20", "cnll"):
            assert b["generations"][1][m]["test"][k] == pytest.approx(a["generations"][1][m]["test"][k], rel=1e-6), k
    assert (tmp_path / "dask" / "loop" / "gen1" / "backbone" / "train" / "summary.json").is_file()


def test_md_samplers_in_the_loop(tmp_path, ammonia_files):
    """`sampler` per method: the md and biased_md samplers give candidates that are labelled, stored and
    trained on like the attack's, within the oracle budget, and a rerun repeats nothing."""
    raw = loop_cfg(tmp_path, ammonia_files)
    raw["sampler"] = {"ensemble": "md", "gmm": "biased_md"}
    raw["sampling"] = {"trust_lo": 0.0, "trust_hi": 1.0e6, "replicas": 4, "steps": 40, "frame_every": 10,
                       "max_candidates": 3, "bias_strength": 5.0, "bias_width": 10.0}
    al = ActiveLearning(LoopConfig.model_validate(raw))
    summary = run_loop(al)
    calls = al.oracle.calls
    for method, sampler in (("ensemble", "md"), ("gmm", "biased_md")):
        att, lab = summary["generations"][1][method]["attack"], summary["generations"][1][method]["label"]
        assert att["sampler"] == sampler and 1 <= att["n_candidates"] <= 3 and 4 <= att["frames"] <= 4 * 5
        assert lab["n_candidates"] == att["n_candidates"] and lab["oracle_calls"] <= 3
        cand = read_structures(tmp_path / "loop" / "gen1" / method / "attack" / "candidates.extxyz",
                               ReadOptions(require_energy=False, require_forces=False, min_distance=0.0))
        assert {s.info["sampler"] for s in cand} == {sampler}
        g1, g2 = summary["generations"][1][method], summary["generations"][2][method]
        assert g2["n_train"] + g2["n_val"] == g1["n_train"] + g1["n_val"] + lab["n_added"]
    assert calls >= 1
    al2 = ActiveLearning(LoopConfig.model_validate(raw))
    run_loop(al2)
    assert al2._oracle is None or al2.oracle.calls == 0
    with pytest.raises(ValueError, match="not among the loop's methods"):
        LoopConfig.model_validate({**raw, "sampler": {"mve": "md"}})


@pytest.mark.parametrize("section, message", [
    ({"md": {"bogus": 1}}, "md.bogus"),
    ({"md": {"ensemble": "npt"}}, "periodic system"),
    ({"sampling": {"trust_lo": 5.0, "trust_hi": 2.0}}, "trust_lo"),
])
def test_bad_campaign_and_sampling_settings_refused_before_anything_runs(tmp_path, ammonia_files, section, message):
    """Unknown campaign keys, NPT of a molecule and an empty trust band are one line, exit 2, before the
    loop writes or trains anything (not after the first generation)."""
    from click.testing import CliRunner

    from uqpot.cli.main import cli

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**loop_cfg(tmp_path, ammonia_files), **section}))
    r = CliRunner().invoke(cli, ["loop", str(path), "--no-progress"])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "loop").exists()
