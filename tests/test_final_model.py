"""The final model of a loop with a stopping rule (:mod:`uqpot.loop.final`): trained on every label of a stopped
method with the ``until.final_val_fraction`` hold-out, its record (split, test, calibration, what it is good for),
resumed without training again, trained afresh when the loop goes on, off with ``final: false``, and the report's
"Final models" section, on the tiny EMT loop of the stopping tests (tests/support/tiny_loop.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from uqpot.core.executor import get_executor
from uqpot.data.io import ReadOptions, read_structures
from uqpot.loop.active_learning import ActiveLearning
from uqpot.loop.config import LoopConfig
from uqpot.loop.replicates import run_loop, run_loops
from uqpot.report.loop import build_loop_report

from support.tiny_loop import tiny_loop_config as _raw, tiny_loop_files


@pytest.fixture
def ammonia_files(tmp_path, ammonia):
    return tiny_loop_files(tmp_path, ammonia)


def _read(path):
    return read_structures(path, ReadOptions(min_distance=0.0))


def _energies(*paths):
    return np.sort(np.concatenate([_read(p).energies() for p in paths]))


def test_the_final_model_of_a_stopped_method(tmp_path, ammonia_files):
    # impossible target: generation 1 continues (samples and labels), generation 2 stops (generations exhausted)
    raw = _raw(tmp_path, ammonia_files, "tight", {"tolerance": 1e-6, "target": 0.01, "final_val_fraction": 0.25})
    summary = run_loop(ActiveLearning(LoopConfig.model_validate(raw)))
    out = tmp_path / "tight"
    stop = json.loads((out / "gen2" / "ensemble" / "stopping.json").read_text())
    assert stop["decision"] == "stop" and stop["labels_added"] > 0
    d = out / "final" / "ensemble"
    rec = json.loads((d / "final.json").read_text())
    assert (d / "model.pt").is_file() and rec["generation"] == 2
    # every label of the method: the last generation's training and validation structures, split again
    last = out / "gen2" / "ensemble" / "train"
    n_all = len(_read(last / "train.extxyz")) + len(_read(last / "val.extxyz"))
    sp = rec["split"]
    assert sp["n_train"] + sp["n_val"] == n_all == 20 + stop["labels_added"] == sp["n_labels"]
    assert sp["fraction"] == 0.25 and sp["n_val"] == round(0.25 * n_all) and sp["seed"] == 0
    assert (len(_read(d / "train.extxyz")), len(_read(d / "val.extxyz"))) == (sp["n_train"], sp["n_val"])
    np.testing.assert_allclose(_energies(d / "train.extxyz", d / "val.extxyz"),
                               _energies(last / "train.extxyz", last / "val.extxyz"))
    # scored on the loop's test set like every generation; calibrated on the hold-out
    gen_test = json.loads((last / "summary.json").read_text())["test"]
    assert set(gen_test) <= set(rec["test"]) and np.isfinite(rec["test"]["forces_mae"])
    assert rec["calibration"]["n_structures"] == sp["n_val"] and np.isfinite(rec["calibration"]["a"])
    # what it is good for: the last stopping record's conditions, fraction and interval
    gf = rec["good_for"]
    for k in ("fraction", "low", "high", "n_trajectories", "n_frames", "decision", "reason", "labels_added",
              "generation", "temperatures_K", "steps", "timestep_fs", "tolerance"):
        assert gf[k] == stop[k], k
    assert gf["replicas"] == 3 and gf["stopped_because"] == "generations exhausted"
    assert "Outside these conditions this estimate says nothing" in gf["text"] and "300 K" in gf["text"]
    gathered = json.loads((out / "final.json").read_text())["methods"]
    assert gathered["ensemble"] == rec and summary["final"]["ensemble"]["n_val"] == sp["n_val"]
    # rerunning the loop does not train again
    stamps = {p: p.stat().st_mtime_ns for p in (d / "final.json", d / "model.pt", d / "summary.json")}
    run_loop(ActiveLearning(LoopConfig.model_validate(raw)))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # the report: a table of the final models and what each is good for
    build_loop_report(out)
    html = (out / "report.html").read_text()
    assert "Final models" in html and "What this potential is good for" in html
    assert "Outside these conditions this estimate says nothing." in html
    row = json.loads((out / "results.json").read_text())["tables"]["final"][0]
    assert (row["method"], row["n_train"], row["n_val"]) == ("ensemble", sp["n_train"], sp["n_val"])
    assert row["forces_mae"] == pytest.approx(rec["test"]["forces_mae"])
    # a longer loop: the method now stops after generation 3, and its final model is trained afresh
    longer = run_loop(ActiveLearning(LoopConfig.model_validate({**raw, "generations": 3})))
    rec3 = json.loads((d / "final.json").read_text())
    assert rec3["generation"] == 3 and longer["final"]["ensemble"]["generation"] == 3
    assert rec3["split"]["n_labels"] == 20 + rec3["good_for"]["labels_added"] > sp["n_labels"]


def test_final_models_run_on_the_executor(tmp_path, ammonia_files):
    """On a Dask executor the final training is a job on a worker, with the numbers of training in-process."""
    raw = _raw(tmp_path, ammonia_files, "loose", {"tolerance": 1e6, "target": 0.5})
    run_loop(ActiveLearning(LoopConfig.model_validate(raw)))
    out = tmp_path / "loose"
    here = json.loads((out / "final.json").read_text())["methods"]["ensemble"]
    assert here["good_for"]["stopped_because"] == "converged" and here["generation"] == 1
    shutil.rmtree(out / "final")
    (out / "final.json").unlink()
    with get_executor("local", n_workers=1) as ex:
        [summary] = run_loops([ActiveLearning(LoopConfig.model_validate(raw), executor=ex)], ex)
    there = json.loads((out / "final.json").read_text())["methods"]["ensemble"]
    assert summary["final"]["ensemble"]["generation"] == 1 and there["split"] == here["split"]
    for k in ("forces_mae", "energy_mae", "spearman"):
        assert there["test"][k] == pytest.approx(here["test"][k], rel=1e-6, abs=1e-9), k
    assert there["calibration"]["a"] == pytest.approx(here["calibration"]["a"], rel=1e-6, abs=1e-12)


def test_final_false_writes_nothing_and_can_be_turned_on_later(tmp_path, ammonia_files):
    raw = _raw(tmp_path, ammonia_files, "off", {"tolerance": 1e6, "target": 0.5, "final": False})
    summary = run_loop(ActiveLearning(LoopConfig.model_validate(raw)))
    out = tmp_path / "off"
    assert list(summary["generations"]) == [1] and "final" not in summary
    assert (out / "stopping.json").is_file()
    assert not (out / "final").exists() and not (out / "final.json").exists()
    # turned on for the finished loop (the final settings may change on a rerun): trained now, nothing else redone
    stop = (out / "gen1" / "ensemble" / "stopping.json").stat().st_mtime_ns
    raw["until"] = {**raw["until"], "final": True, "final_val_fraction": 0.5}
    again = run_loop(ActiveLearning(LoopConfig.model_validate(raw)))
    assert again["final"]["ensemble"]["n_val"] == 10 and again["final"]["ensemble"]["n_train"] == 10
    assert (out / "gen1" / "ensemble" / "stopping.json").stat().st_mtime_ns == stop


def test_final_settings_are_checked():
    base = {"data": {"train": "a.extxyz", "test": "b.extxyz"}, "oracle": {"name": "ase", "options": {}}}
    cfg = LoopConfig.model_validate({**base, "until": {"tolerance": 2.0}})
    assert (cfg.until.final, cfg.until.final_val_fraction) == (True, 0.1)
    for bad in (0.0, 0.6):
        with pytest.raises(ValueError, match="final_val_fraction"):
            LoopConfig.model_validate({**base, "until": {"tolerance": 2.0, "final_val_fraction": bad}})
