"""Faults around a run directory (issue kinds 3, 5, 6, 9, 11, 14): data replaced under a run, diverged
training, two trainings in one directory, a stale lock, interrupted writes, a full disk, a resume refused;
and the internal-error path.  Real trainings of a tiny PaiNN, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from support.badinput import assert_user_error, cli, results, tiny_config, write_water

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def data(tmp_path):
    return write_water(tmp_path / "data.extxyz")


def _trained(tmp_path, data, **sections):
    cfg = tiny_config(tmp_path, data, **sections)
    r = cli("train", cfg)
    assert r.exit_code == 0, r.output
    return cfg


# ------------------------------------------------------------------ kind 3: data replaced at the same path
def test_changed_data_file_refuses_the_resume(tmp_path, data):
    cfg = _trained(tmp_path, data)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(run["data_files"]["data.path"]["sha256"]) == 64
    before = (tmp_path / "run" / "summary.json").read_bytes()
    write_water(data, seed=5)  # other frames, same path
    r = cli("train", cfg, "--epochs", "3")
    assert_user_error(r, f"{data}: data.path: the file's content changed since this run started", "--restart")
    assert (tmp_path / "run" / "summary.json").read_bytes() == before  # the old result untouched, nothing mixed
    r = cli("train", cfg, "--epochs", "3", "--restart")
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["training"]["epochs_run"] == 3
    from uqpot.rundir import sha256_file

    assert run["data_files"]["data.path"]["sha256"] == sha256_file(data)


def test_changed_index_file_refuses_the_resume(tmp_path, data):
    idx = tmp_path / "train.idx"
    idx.write_text("\n".join(str(i) for i in range(16)) + "\n")
    cfg = _trained(tmp_path, data, split={"train_file": str(idx), "train": None, "val": None, "test": None})
    idx.write_text("\n".join(str(i) for i in range(2, 18)) + "\n")
    assert_user_error(cli("train", cfg), f"{idx}: split.train_file: the file's content changed")


# ------------------------------------------------------------------ kind 5: diverged training
def test_diverged_training_is_reported_and_not_finished(tmp_path, data):
    cfg = tiny_config(tmp_path, data, train={"lr": 1e6})
    r = cli("train", cfg)
    assert_user_error(r, "training diverged", "lower train.lr (now 1e+06)")
    assert "model file not found" not in r.output
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "model.pt").exists()
    assert_user_error(cli("train", cfg), "training diverged")  # the same config: the same verdict
    r = cli("train", tiny_config(tmp_path, data, train={"lr": 1e-3}))  # the corrected config just runs
    assert r.exit_code == 0 and (tmp_path / "run" / "summary.json").is_file(), r.output


# ------------------------------------------------------------------ kind 9: one training per directory
def test_second_training_in_a_locked_directory_is_refused(tmp_path, data):
    from uqpot.rundir import RunLock

    cfg = tiny_config(tmp_path, data)
    with RunLock(tmp_path / "run", "uqpot train"):  # a first training holds the directory
        r = cli("train", cfg)
    assert_user_error(r, f"{tmp_path / 'run' / 'run.lock'}: this run directory is locked by a running uqpot "
                         f"process (pid {os.getpid()}", "choose another 'out'", nothing_in=tmp_path)
    assert not (tmp_path / "run").exists()  # the lock's folder went with it
    assert cli("train", cfg).exit_code == 0  # once released, the run goes ahead


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, data):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                                           "command": "uqpot train", "since": "then"}))
    r = cli("train", tiny_config(tmp_path, data))
    assert r.exit_code == 0 and "took over the stale lock" in r.stderr, r.output
    assert f"of pid {dead.pid}" in (tmp_path / "run" / "train.log").read_text()
    assert not (tmp_path / "run" / "run.lock").exists()


@pytest.mark.slow
def test_two_training_processes(tmp_path, data):
    cfg = tiny_config(tmp_path, data, train={"epochs": 400})
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-m", "uqpot.cli", "train", str(cfg)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (tmp_path / "run" / "checkpoint.pt").exists():
            assert first.poll() is None
        second = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert second.returncode == 2 and "run.lock: this run directory is locked" in second.stderr
    finally:
        first.kill()
        first.wait()


# ------------------------------------------------------------------ kind 11: interrupted writes
def test_interrupted_writes_leave_nothing_behind(tmp_path, data):
    from uqpot.provenance import atomic_write

    cfg = _trained(tmp_path, data)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), atomic_write(run / "summary.json") as tmp:
        tmp.write_text("{half")
        raise KeyboardInterrupt
    assert json.loads((run / "summary.json").read_text())  # the old file intact
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f".checkpoint.pt.tmp{dead.pid}", f"summary.json.tmp{dead.pid}"):  # left by a SIGKILL
        (run / name).write_text("partial")
    assert cli("train", cfg).exit_code == 0
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


def test_history_has_no_repeated_epochs_after_a_restart(tmp_path, data):
    cfg = _trained(tmp_path, data)
    (tmp_path / "run" / "checkpoint.pt").unlink()  # a restart from scratch
    assert cli("train", cfg, "--epochs", "3").exit_code == 0
    epochs = [line.split(",")[0] for line in (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]


@pytest.mark.skipif(not hasattr(os, "setrlimit") and sys.platform != "linux", reason="needs RLIMIT_FSIZE")
def test_full_disk_while_writing_a_checkpoint(tmp_path, data):
    """A file-size limit makes the checkpoint write fail as a full disk does: one line naming the file, exit
    2, no temporary file; the same command resumes once there is room."""
    import resource
    import signal

    cfg = tiny_config(tmp_path, data, train={"epochs": 3})

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-m", "uqpot.cli", "train", str(cfg)], env=env, capture_output=True,
                       text=True, preexec_fn=limit)
    assert r.returncode == 2, r.stderr
    assert f"error: {tmp_path / 'run' / 'checkpoint.pt'}: File too large; free some space" in r.stderr
    assert "Traceback" not in r.stderr and "summary.json" not in results(tmp_path)
    assert not [p.name for p in (tmp_path / "run").iterdir() if ".tmp" in p.name]
    assert cli("train", cfg).exit_code == 0


# ------------------------------------------------------------------ kind 14: a resume refusal names the key
def test_resume_refusal_names_the_key(tmp_path, data):
    _trained(tmp_path, data)
    r = cli("train", tiny_config(tmp_path, data, model={"features": 16}, train={"lr": 2e-3}))
    assert_user_error(r, "holds a run with a different config", "model.features (8 then, 16 now)",
                      "train.lr (0.001 then, 0.002 now)", "--restart")


# ------------------------------------------------------------------ internal errors
def test_internal_error_says_so_and_where_the_traceback_is():
    from uqpot.cli_errors import UqpotGroup

    @click.group(cls=UqpotGroup)
    def group():
        pass

    @group.command()
    def broken():
        return {}["missing"]  # a bug, not a user error

    r = CliRunner().invoke(group, ["broken"], catch_exceptions=False)
    assert r.exit_code == 1
    line = r.stderr.strip()
    assert line.startswith("internal error (KeyError: 'missing'): this is a bug in uqpot") and "\n" not in line
    log = Path(line.split("the traceback is in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "broken" in log.read_text()
    log.unlink()
