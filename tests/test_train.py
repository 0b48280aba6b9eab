"""Training: the loss falls, checkpoints resume exactly, the lr schedule and early stopping act, and a
non-finite loss never reaches a saved model."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

import uqpot
from uqpot.fit.config import RunConfig
from uqpot.train.config import TrainConfig
from uqpot.nn.potential import Potential
from uqpot.train.losses import EnergyForceLoss
from uqpot.fit.run import run_training
from uqpot.train.trainer import Trainer

SMALL = {"features": 32, "interactions": 2, "rbf": 12, "readout_hidden": 16}


def small_model(ds, seed=0):
    torch.manual_seed(seed)
    m = Potential(**SMALL)
    m.fit_reference(ds)
    return m


def run_cfg(tmp_path, ethanol_path, **train):
    return RunConfig.model_validate({
        "seed": 1, "out": str(tmp_path / "run"), "data": {"path": str(ethanol_path)},
        "split": {"train": 40, "val": 10, "test": 10, "seed": 0}, "model": SMALL,
        "train": {"epochs": 4, "batch_size": 8, "lr": 1e-3, "progress": False, **train}})


def test_training_reduces_force_error_and_writes_run_files(tmp_path, ethanol_path):
    cfg = run_cfg(tmp_path, ethanol_path, epochs=10, lr=5e-3)
    summary = run_training(cfg)
    out = tmp_path / "run"
    for name in ("config.yaml", "split.json", "run.json", "model.pt", "checkpoint.pt", "history.csv",
                 "summary.json"):
        assert (out / name).is_file(), name
    hist = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    assert hist["val_forces_mae"][-1] < 0.95 * hist["val_forces_mae"][0]
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    split = json.loads((out / "split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [40, 10, 10]
    assert not set(split["train"]) & set(split["test"])
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 1 and run["versions"]["torch"] == torch.__version__
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["lr_patience"] == 30 and resolved["model"]["features"] == 32
    assert summary["test"]["n_structures"] == 10 and summary["test"]["forces_mae"] > 0


def test_resume_equals_uninterrupted(tmp_path, ethanol_path):
    full = run_training(run_cfg(tmp_path / "a", ethanol_path, epochs=4))
    run_training(run_cfg(tmp_path / "b", ethanol_path, epochs=2))
    resumed = run_training(run_cfg(tmp_path / "b", ethanol_path, epochs=4))
    assert resumed["training"]["epochs_run"] == 4
    a, b = uqpot.load(tmp_path / "a" / "run" / "model.pt"), uqpot.load(tmp_path / "b" / "run" / "model.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert full["val"] == resumed["val"]


def test_same_seed_same_result(tmp_path, ethanol_path):
    r1 = run_training(run_cfg(tmp_path / "a", ethanol_path, epochs=2))
    r2 = run_training(run_cfg(tmp_path / "b", ethanol_path, epochs=2))
    assert r1["val"] == r2["val"]


def test_different_config_in_same_directory_is_refused(tmp_path, ethanol_path):
    from uqpot.core.errors import ConfigError

    run_training(run_cfg(tmp_path, ethanol_path, epochs=1))
    with pytest.raises(ConfigError, match="different config"):
        run_training(run_cfg(tmp_path, ethanol_path, epochs=1, lr=5e-3))


def test_run_started_with_explicit_compile_resumes_on_its_path(tmp_path, ethanol_path):
    """A run started with ``train.compile: false`` (the default before ``auto``) is resumed by the same
    command under ``auto``: it goes on uncompiled, says so, and keeps its stored choice."""
    import yaml

    from uqpot.core.errors import ConfigError

    run_training(run_cfg(tmp_path, ethanol_path, epochs=1, compile=False))
    r = run_training(run_cfg(tmp_path, ethanol_path, epochs=2))
    out = tmp_path / "run"
    # the path that trained it: one molecule, so the stacked dense layout (uqpot.train.member_order), eager
    assert r["training"]["compiled"] is False and r["training"]["layout"] == "dense"
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["compile"] is False
    assert "resumed with the stored train.compile: False" in (out / "train.log").read_text()
    with pytest.raises(ConfigError, match=r"train\.compile \(False then, True now\)"):
        run_training(run_cfg(tmp_path, ethanol_path, epochs=2, compile=True))


def test_lr_halves_on_plateau_and_early_stopping(tmp_path, ethanol):
    train, val = ethanol[:16], ethanol[16:24]
    # at lr 1e-7 the validation loss moves by less than the plateau threshold (relative 1e-4)
    cfg = TrainConfig(epochs=50, batch_size=8, lr=1e-7, lr_patience=2, early_stopping=6, progress=False,
                      stop_at_min_lr=False, min_lr=0.0)
    res = Trainer(small_model(train), train, val, cfg, tmp_path).fit()
    assert res.stopped == "early_stopping" and res.epochs_run < 50
    lrs = [row["lr"] for row in res.history]
    assert lrs[0] == pytest.approx(1e-7) and min(lrs) == pytest.approx(0.5e-7)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


class NaNOnSomeSteps(EnergyForceLoss):
    """The standard loss, but non-finite on the chosen calls (a numerical fault injected on purpose)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.calls, self.bad_calls = 0, set(bad_calls)

    def __call__(self, pred, batch):
        loss, parts = super().__call__(pred, batch)
        self.calls += 1
        if self.calls in self.bad_calls:
            loss = loss * float("nan")
        return loss, parts


def test_nonfinite_loss_is_rolled_back(tmp_path, ethanol):
    train, val = ethanol[:16], ethanol[16:24]
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-3, max_nonfinite=1, progress=False)
    # calls 1-4: epoch 1's 4 batches, 5-6: its 2 validation batches; 7 and 8: epoch 2's first batches
    loss = NaNOnSomeSteps({7, 8})
    trainer = Trainer(small_model(train), train, val, cfg, tmp_path, loss_fn=loss)
    res = trainer.fit()
    assert res.nonfinite_steps == 2 and res.rollbacks == 1 and res.epochs_run == 3
    assert "non-finite loss; rolled back" in (tmp_path / "train.log").read_text()
    saved = uqpot.load(tmp_path / "model.pt")
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert trainer.history[1]["lr"] == pytest.approx(5e-4)  # cut once by the rollback


def test_persistent_nonfinite_loss_fails_clearly(tmp_path, ethanol):
    from uqpot.core.errors import TrainingError

    train, val = ethanol[:8], ethanol[8:12]
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, max_nonfinite=0, min_lr=1e-4, progress=False)
    trainer = Trainer(small_model(train), train, val, cfg, tmp_path, loss_fn=NaNOnSomeSteps(range(1, 1000)))
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 1, batch 0"):
        trainer.fit()
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.slow
def test_sigkill_during_training_resumes(tmp_path, ethanol_path):
    cfg = run_cfg(tmp_path, ethanol_path, epochs=30).model_dump(mode="json")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "uqpot.cli.main", "train", str(tmp_path / "c.yaml"), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    t0 = time.time()
    while not ckpt.exists() and time.time() - t0 < 120:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "summary.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in (tmp_path / "run" / "train.log").read_text()
    uninterrupted = run_training(run_cfg(tmp_path / "ref", ethanol_path, epochs=30))
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert resumed["val"] == pytest.approx(uninterrupted["val"], rel=1e-9)


def test_training_step_peak_memory_leaves_the_model_alone(ethanol_path):
    """The Fig. 2b memory figure: positive, larger for a 5-member ensemble than for one model, and the
    measurement changes no parameter and leaves no gradient behind."""
    import torch

    from uqpot.data.batch import collate_dataset
    from uqpot.data.io import read_structures
    from uqpot.nn.potential import Potential
    from uqpot.train.losses import EnergyForceLoss
    from uqpot.train.memory import training_step_peak_mb

    data = read_structures(ethanol_path)
    batch = collate_dataset(data, range(8), 5.0)
    peaks = {}
    for members in (1, 5):
        model = Potential(features=32, interactions=2, rbf=8, readout_hidden=16, members=members,
                          seeds=list(range(members)))
        model.fit_reference(data)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        peaks[members] = training_step_peak_mb(model, EnergyForceLoss(), batch)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert all(p.grad is None for p in model.parameters())
    assert 0 < peaks[1] < peaks[5]


def test_memory_measurement_writes_nothing_to_stderr(tmp_path):
    """The CPU peak comes from the profiler, whose native start/stop log lines must not reach the console
    (they would break a progress display); an error inside the step still does."""
    import subprocess
    import sys

    script = tmp_path / "m.py"
    script.write_text(
        "import sys, torch\n"
        "from uqpot.train.memory import peak_mb\n"
        "mb = peak_mb(lambda: torch.ones(1_000_000).sum(), False)\n"
        "print(mb)\n"
        "def bad():\n"
        "    print('inside the step', file=sys.stderr, flush=True)\n"
        "peak_mb(bad, False)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert float(r.stdout.strip()) > 3.0  # 4 MB of float32 ones
    assert r.stderr.strip() == "inside the step"
