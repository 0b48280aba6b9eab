"""SIGKILL at random points of `uqpot loop` (training, attack, labelling, MD), resumed each time: the store
holds every label once, the reference method never finished the same calculation twice, and the final
models equal those of an uninterrupted run with the same seeds."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import uqpot
from uqpot.data.io import write_extxyz
from uqpot.data.store import Store

pytest.importorskip("tblite")
TESTS = Path(__file__).resolve().parent


def config(tmp, log, out):
    return {
        "seed": 0, "out": str(out), "system": "ammonia", "methods": ["ensemble", "gmm"], "generations": 2,
        "data": {"train": str(tmp / "train.extxyz"), "test": str(tmp / "test.extxyz"), "align_structures": 2},
        "model": {"features": 16, "interactions": 2, "rbf": 8, "readout_hidden": 8},
        "uq": {"ensemble": {"members": 2}, "gmm": {"candidates": [1, 2]}},
        "train": {"epochs": 12, "batch_size": 8, "lr": 2e-3},
        "attack": {"n_seeds": 6, "iterations": 15, "lr": 0.02, "energy_cutoff": 300.0},
        "oracle": {"name": "ase", "options": {"calculator": "support.counting.CountingTBLite",
                                              "kwargs": {"log": str(log), "method": "GFN2-xTB", "verbosity": 0},
                                              "threads": 1}},
        "md": {"length_scale": 0.02, "runs": 2},
    }


@pytest.mark.slow
def test_five_random_kills(tmp_path, ammonia):
    e = ammonia.energies()
    write_extxyz(ammonia.subset(np.nonzero(e < 5.0)[0][:24]), tmp_path / "train.extxyz")
    write_extxyz(ammonia.subset(np.nonzero(e >= 5.0)[0][:12]), tmp_path / "test.extxyz")
    log = tmp_path / "calls.log"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(tmp_path, log, tmp_path / "loop")))
    env = dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "uqpot.cli.main", "loop", str(tmp_path / "c.yaml"), "--no-progress"]
    # how long an uninterrupted run takes, in a separate directory (also the reference for the models)
    ref_log = tmp_path / "ref_calls.log"
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(config(tmp_path, ref_log, tmp_path / "ref")))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "uqpot.cli.main", "loop", str(tmp_path / "ref.yaml"), "--no-progress"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    total = time.time() - t0
    rng = np.random.default_rng(7)
    kills = 0
    for k in range(5):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.15, 0.9)) * total / 2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert kills >= 3  # most kill points landed while the loop was running

    store = Store(tmp_path / "loop" / "labels.db")
    hashes = [rec.hash for rec in store.records(status=None)]
    assert len(hashes) == len(set(hashes))  # every label once
    finished = Counter(line.split()[1] for line in log.read_text().splitlines() if line.startswith("end"))
    assert max(finished.values()) == 1  # no calculation was completed twice
    assert sum(finished.values()) <= len(hashes) + 5  # at most one in flight per kill was lost
    for method in ("ensemble", "gmm"):
        a = uqpot.load(tmp_path / "loop" / "gen2" / method / "train" / "model.pt")
        b = uqpot.load(tmp_path / "ref" / "gen2" / method / "train" / "model.pt")
        for key, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[key], rtol=1e-5, atol=1e-6, msg=f"{method} {key}")
