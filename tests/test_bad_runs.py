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
    from uqpot.core.rundir import sha256_file

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
    from uqpot.core.rundir import RunLock

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
    cmd = [sys.executable, "-m", "uqpot.cli.main", "train", str(cfg)]
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
    from uqpot.core.provenance import atomic_write

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
    r = subprocess.run([sys.executable, "-m", "uqpot.cli.main", "train", str(cfg)], env=env, capture_output=True,
                       text=True, preexec_fn=limit)
    assert r.returncode == 2, r.stderr
    assert f"error: {tmp_path / 'run' / 'checkpoint.pt'}: File too large; free some space" in r.stderr
    assert "Traceback" not in r.stderr and "summary.json" not in results(tmp_path)
    assert not [p.name for p in (tmp_path / "run").iterdir() if ".tmp" in p.name]
    # round three, kind 6: the checkpoint is written before the best model, so no epoch-1 model.pt is left
    # without a checkpoint behind it
    assert not (tmp_path / "run" / "model.pt").exists()
    assert cli("train", cfg).exit_code == 0


# ------------------------------------------------------------------ kind 14: a resume refusal names the key
def test_resume_refusal_names_the_key(tmp_path, data):
    _trained(tmp_path, data)
    r = cli("train", tiny_config(tmp_path, data, model={"features": 16}, train={"lr": 2e-3}))
    assert_user_error(r, "holds a run with a different config", "model.features (8 then, 16 now)",
                      "train.lr (0.001 then, 0.002 now)", "--restart")


# ------------------------------------------------------------------ internal errors
def test_internal_error_says_so_and_where_the_traceback_is():
    from uqpot.cli.errors import UqpotGroup

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


# ------------------------------------------------------------------ round three: the loop keeps train's rules
def _loop(tmp_path, **sections):
    from support.badinput import tiny_loop_config

    cfg = tiny_loop_config(tmp_path, **sections)
    r = cli("loop", cfg)
    assert r.exit_code == 0, r.output
    return cfg


@pytest.mark.parametrize("which", ["train", "test"])
def test_loop_refuses_to_resume_on_a_changed_data_file_and_restarts(tmp_path, which):
    """Kind 1: a data file replaced between two runs of a loop is refused, naming the file, with nothing
    changed; --restart starts afresh and keeps the label store's labels."""
    from uqpot.data.store import Store
    from uqpot.core.rundir import sha256_file

    cfg = _loop(tmp_path)
    loop, data = tmp_path / "loop", tmp_path / f"{which}.extxyz"
    run = json.loads((loop / "run.json").read_text())
    assert run["data_files"][f"data.{which}"]["sha256"] == sha256_file(data)
    summary, labels = (loop / "summary.json").read_bytes(), Store(loop / "labels.db").count()
    assert labels > 0  # the energy alignment's labels
    write_water(data, n=16 if which == "train" else 6, seed=5)  # other frames, same path
    r = cli("loop", cfg, "--generations", "2")
    assert_user_error(r, f"{data}: data.{which}: the file's content changed since this run started", "--restart")
    assert (loop / "summary.json").read_bytes() == summary and not (loop / "gen2").exists()
    r = cli("loop", cfg, "--restart")
    assert r.exit_code == 0, r.output
    assert json.loads((loop / "run.json").read_text())["data_files"][f"data.{which}"]["sha256"] == sha256_file(data)
    assert Store(loop / "labels.db").count() >= labels  # kept: no label computed so far is lost
    assert "restart: removed the earlier loop's" in (loop / "loop.log").read_text()


def test_loop_restart_is_documented_with_what_it_keeps():
    r = cli("loop", "--help")
    assert r.exit_code == 0 and "--restart" in r.stdout and "labels.db" in r.stdout and "kept" not in r.stderr


def _with_nitrogen(path, n=16):
    """Water frames, the first with a nitrogen atom added far from the molecule (EMT labels N)."""
    from ase.calculators.emt import EMT

    from support.badinput import water
    from uqpot.data.io import write_extxyz
    from uqpot.data.structures import Structure, StructureDataset
    from uqpot.core.units import EV_TO_KCAL_PER_MOL

    ds = list(water(n))
    a = ds[0].to_atoms()
    a.append("N")
    a.positions[-1] = [3.0, 3.0, 3.0]
    a.calc = EMT()
    ds[0] = Structure.from_atoms(a, a.get_potential_energy() * EV_TO_KCAL_PER_MOL,
                                 a.get_forces() * EV_TO_KCAL_PER_MOL, frame=0)
    write_extxyz(StructureDataset(ds), path)
    return path


LOOP_CASES = [  # (name, sections of the loop config, fragments of the one error line)
    ("test element not in train", lambda t: {"data": {"test": str(_with_nitrogen(t / "n.extxyz", 6))}},
     ["n.extxyz: frame 0: field 'numbers': element(s) N not in the training structures"]),
    ("one training structure", lambda t: {"data": {"train": str(write_water(t / "one.extxyz", n=1))}},
     ["one.extxyz: data.train: 1 structure(s)", "needs at least 2"]),
    ("one test structure", lambda t: {"data": {"test": str(write_water(t / "one.extxyz", n=1))}},
     ["one.extxyz: data.test: 1 structure(s)"]),
    ("store not .db", lambda t: {"store": str(t / "labels.txt")}, ["store: ", "name must end in .db"]),
    ("store is a folder", lambda t: {"store": str((t / "s.db").mkdir() or t / "s.db")}, ["s.db: is a directory"]),
    ("store is not SQLite", lambda t: {"store": str(write_water(t / "w.db"))}, ["w.db: not an SQLite database"]),
    ("unknown calculator keyword", lambda t: {"oracle": {"name": "ase", "options": {
        "calculator": "ase.calculators.emt.EMT", "kwargs": {"asap_cutof": True}}}},
     ["oracle.options", "'asap_cutof' not among the keyword arguments of ase.calculators.emt.EMT"]),
    ("unknown oracle option", lambda t: {"oracle": {"name": "ase", "options": {
        "calculator": "ase.calculators.emt.EMT", "treads": 2}}}, ["oracle.options", "'treads'"]),
    ("finetune without init_model", lambda t: {"finetune": {"epochs": 3}}, ["finetune: set, but there is no init_model"]),
    ("negative seed", lambda t: {"seed": -1}, ["'seed': a seed is an integer in [0, 2**32), got -1"]),
    ("seed beyond 2**32", lambda t: {"seed": 2**32}, ["'seed': a seed is an integer in [0, 2**32)"]),
    ("no methods", lambda t: {"methods": []}, ["'methods': an empty list"]),
    ("a method twice", lambda t: {"methods": ["ensemble", "ensemble"]}, ["'methods': ensemble given more than once"]),
    ("no energy cut-offs", lambda t: {"attack": {"energy_cutoff": []}}, ["'attack.energy_cutoff': an empty list"]),
]


@pytest.mark.parametrize("name, sections, fragments", LOOP_CASES, ids=[c[0] for c in LOOP_CASES])
def test_loop_validates_everything_before_writing(tmp_path, name, sections, fragments):
    """Kind 2 (and 3): every problem is found before the loop writes its config or run record, so the
    corrected config then simply runs (it used to be refused as "a different config")."""
    from support.badinput import tiny_loop_config

    r = cli("loop", tiny_loop_config(tmp_path, **sections(tmp_path)))
    assert_user_error(r, *fragments)
    assert not (tmp_path / "loop").exists(), sorted(p.name for p in (tmp_path / "loop").iterdir())


def test_loop_with_a_corrected_config_runs_after_a_refusal(tmp_path):
    from support.badinput import tiny_loop_config

    bad = tiny_loop_config(tmp_path, data={"test": str(_with_nitrogen(tmp_path / "n.extxyz", 6))})
    assert cli("loop", bad).exit_code == 2
    r = cli("loop", tiny_loop_config(tmp_path))
    assert r.exit_code == 0, r.output


def test_loop_init_model_without_the_datas_elements(tmp_path):
    """An init_model that never saw an element of the loop's data is refused before anything is written."""
    from support.badinput import tiny_loop_config

    cfg = tiny_config(tmp_path, write_water(tmp_path / "data.extxyz"))
    assert cli("train", cfg).exit_code == 0
    train = _with_nitrogen(tmp_path / "n.extxyz")
    r = cli("loop", tiny_loop_config(tmp_path, data={"train": str(train)}, init_model=str(tmp_path / "run" / "model.pt"),
                                     out=tmp_path / "ft"))
    assert_user_error(r, f"{tmp_path / 'run' / 'model.pt'}: init_model: the model knows H, O, not N")
    assert not (tmp_path / "ft").exists()
    # more interaction blocks to fine-tune than the network has: refused before anything is written
    r = cli("loop", tiny_loop_config(tmp_path, init_model=str(tmp_path / "run" / "model.pt"), out=tmp_path / "ft2",
                                     finetune={"trainable": "last_blocks", "blocks": 9}))
    assert_user_error(r, f"{tmp_path / 'run' / 'model.pt'}: finetune.blocks: 9 > the network's")
    assert not (tmp_path / "ft2").exists()


def test_locked_store_is_not_called_broken(tmp_path, monkeypatch):
    """Kind 9: a store another process holds locked is reported as locked, not as "not an SQLite database"."""
    import sqlite3

    from support.badinput import tiny_loop_config
    from uqpot.data import store as store_module

    _loop(tmp_path)
    monkeypatch.setattr(store_module, "LOCK_WAIT_S", 0.2)  # not the 5 s a real check waits
    holder = sqlite3.connect(tmp_path / "loop" / "labels.db")
    try:
        holder.execute("BEGIN EXCLUSIVE")
        r = cli("loop", tiny_loop_config(tmp_path, out=tmp_path / "other", store=str(tmp_path / "loop" / "labels.db")))
    finally:
        holder.rollback()
        holder.close()
    assert_user_error(r, "labels.db: the label store is locked by another process")
    assert "not an SQLite database" not in r.stderr


# ------------------------------------------------------------------ kind 8: run identity is the folder, not its name
def test_loop_resumes_with_out_spelled_otherwise_and_after_a_move(tmp_path, monkeypatch):
    from support.badinput import tiny_loop_config

    monkeypatch.chdir(tmp_path)
    cfg = tiny_loop_config(tmp_path, out="loop")  # relative
    assert cli("loop", cfg).exit_code == 0
    r = cli("loop", cfg, "--out", str(tmp_path / "loop"))  # the same folder, absolute
    assert r.exit_code == 0 and "finished by an earlier run" in (tmp_path / "loop" / "loop.log").read_text(), r.output
    (tmp_path / "loop").rename(tmp_path / "moved")
    r = cli("loop", cfg, "--out", "moved", "--generations", "2")  # a moved run folder goes on from where it was
    assert r.exit_code == 0, r.output
    log = (tmp_path / "moved" / "loop.log").read_text()
    assert log.count("gen 1 ensemble: training") == 1 and "gen 2 ensemble: training" in log
    r = cli("loop", tiny_loop_config(tmp_path, out="moved", model={"features": 16}))
    assert_user_error(r, "holds a loop with a different config", "model.features (8 then, 16 now)", "--restart")


def test_train_resumes_with_out_spelled_otherwise_and_after_a_move(tmp_path, monkeypatch, data):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, data.name, out="run")  # relative data file and out
    assert cli("train", cfg).exit_code == 0
    r = cli("train", cfg, "--out", str(tmp_path / "run"), "--epochs", "3")
    assert r.exit_code == 0 and "resumed from" in (tmp_path / "run" / "train.log").read_text(), r.output
    (tmp_path / "run").rename(tmp_path / "moved")
    r = cli("train", tiny_config(tmp_path, data, out="moved"), "--epochs", "4")  # data now absolute
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "moved" / "summary.json").read_text())["training"]["epochs_run"] == 4


def _limited(size: int):
    """A preexec_fn: files of at most ``size`` bytes, as on a full disk (SIGXFSZ ignored: write fails)."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def test_full_disk_during_evaluate_leaves_no_table_without_metrics(tmp_path, data):
    """Kind 6: a full disk while evaluate writes is one line naming the file, exit 2, and leaves neither a
    per_structure.csv without its metrics.json nor the folder it had created."""
    cfg = _trained(tmp_path, data)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    r = subprocess.run([sys.executable, "-m", "uqpot", "evaluate", str(tmp_path / "run" / "model.pt"), str(data),
                        "--out", str(tmp_path / "eval")], env=env, capture_output=True, text=True,
                       preexec_fn=_limited(3000))
    assert r.returncode == 2 and "File too large; free some space" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and ".tmp" not in r.stderr
    assert not (tmp_path / "eval").exists()


def test_torch_save_short_write_is_the_full_disk_error(tmp_path):
    """Kind 6: a model file that does not fit is an OSError naming the file (the command line's full-disk
    line), never PyTorch's RuntimeError; no temporary file is left."""
    code = ("import torch; from uqpot.core.provenance import torch_save; "
            f"torch_save({{'w': torch.ones(100000)}}, {str(tmp_path / 'm.pt')!r})")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(SRC)), capture_output=True,
                       text=True, preexec_fn=_limited(20000))
    assert "OSError" in r.stderr and "File too large" in r.stderr and str(tmp_path / "m.pt") in r.stderr, r.stderr
    assert "RuntimeError" not in r.stderr and list(tmp_path.iterdir()) == []


def test_write_error_names_the_file_not_its_temporary_name(tmp_path):
    """Kind 9: a write that cannot open its file (a folder that is gone, or a file where a folder should be)
    names the file asked for, never its temporary name .NAME.tmpPID."""
    from uqpot.core.provenance import write_text

    (tmp_path / "afile").write_text("")
    for target in (tmp_path / "gone" / "wraps.pt", tmp_path / "afile" / "wraps.pt"):
        with pytest.raises(OSError) as exc:
            write_text(target, "x")
        assert exc.value.filename == str(target) and ".tmp" not in str(exc.value)


def test_failed_reproduce_leaves_no_record_or_folder(tmp_path):
    """Kind 6: a study that fails before it ran anything leaves neither reproduce.json nor the folder."""
    bad = tmp_path / "study.yaml"
    bad.write_text("system: ammonia\noracle: {name: tblite}\nloop: {methods: [nonsense]}\n")
    r = cli("reproduce", "ammonia", "--preset", bad, "--out", tmp_path / "rep", "--executor", "none")
    assert_user_error(r, "'loop.methods.0': unknown UQ method 'nonsense'")
    assert not (tmp_path / "rep").exists()
    r = cli("reproduce", "rmd17", "--data", tmp_path / "missing.extxyz", "--molecules", "ethanol", "--out",
            tmp_path / "rep", "--executor", "none")
    assert_user_error(r, "--data: ", "missing.extxyz: no such file")
    assert not (tmp_path / "rep").exists()


# ------------------------------------------------------------------ round three, kind 10: long work in a log file
def _to_file(tmp_path, *args, seconds="0"):
    """``python -m uqpot ARGS`` with stdout and stderr sent to a file, as a cluster job or nohup does."""
    log = tmp_path / "job.log"
    with open(log, "w") as fh:
        r = subprocess.run([sys.executable, "-m", "uqpot", *map(str, args)], stdout=fh, stderr=subprocess.STDOUT,
                           env=dict(os.environ, PYTHONPATH=str(SRC), UQPOT_PROGRESS_SECONDS=seconds))
    return r.returncode, log.read_text()


def test_training_to_a_file_prints_progress_with_time_left(tmp_path, data):
    cfg = tiny_config(tmp_path, data, train={"epochs": 3, "progress": True})
    rc, text = _to_file(tmp_path, "train", cfg)
    assert rc == 0, text
    lines = [ln for ln in text.splitlines() if ln.startswith("progress: training ")]
    assert [ln.split(": ")[2].split(" ")[0] for ln in lines] == ["1/3", "2/3", "3/3"], text
    assert "left" in lines[0] and "val E MAE" in lines[0]  # the interval itself: the test below


def test_data_build_to_a_file_prints_progress(tmp_path):
    """The ammonia build (EMT as the oracle: seconds, not DFT's minutes) prints its stages and its labelling
    into the log as it goes, not only at the end."""
    rc, text = _to_file(tmp_path, "data", "build", "ammonia", "--quick", "--oracle", "ase", "--oracle-option",
                        "calculator=ase.calculators.emt.EMT", "--out", tmp_path / "nh3")
    assert rc == 0, text
    lines = text.splitlines()
    progress = [k for k, ln in enumerate(lines) if ln.startswith("progress: ")]
    assert any("optimising NH3" in lines[k] for k in progress) and any("labelling with" in lines[k] for k in progress)
    assert any("test set" in lines[k] and "left" in lines[k] for k in progress)
    assert progress[0] < min(k for k, ln in enumerate(lines) if ln.startswith("train: "))  # before the result


def test_progress_lines_are_bounded_and_absent_on_a_terminal():
    import io

    from uqpot.core.progress import LogProgress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    out = io.StringIO()
    p = LogProgress("work", 100, "items", stream=out, every=30.0, clock=lambda: now[0])
    for k in range(1, 101):
        now[0] = k * 1.0  # one item a second
        p.update(k)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0] == "progress: work: 30/100 items (30%), 30 s elapsed, about 70 s left", lines
    term = Terminal()
    q = LogProgress("work", 10, stream=term, every=0.0)
    q.update(5)
    assert term.getvalue() == ""
