"""The ammonia build: the paper's construction (minimum, normal modes, 0-5 kcal/mol training set, 2 per
1 kcal/mol test bins), every label through the store: a rerun computes nothing, a SIGKILL loses nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from uqpot.data.io import read_structures
from uqpot.systems.ammonia.build import AmmoniaConfig, build_ammonia, inversion_path
from uqpot.data.store import Store
from uqpot.oracle import get_oracle

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AMMONIA = SHARED_DATA / "ammonia_public.extxyz"


def _tblite():
    pytest.importorskip("tblite")
    return get_oracle("tblite", threads=1)


def _nh_distances(s):
    ni = int(np.flatnonzero(s.numbers == 7)[0])
    return np.linalg.norm(s.positions - s.positions[ni], axis=1)[s.numbers == 1]


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("ammonia")
    oracle = _tblite()
    summary = build_ammonia(out, oracle=oracle, config=AmmoniaConfig.quick(), progress=False)
    return out, summary, oracle


def test_quick_build_is_the_papers_construction(quick_build):
    out, summary, oracle = quick_build
    train = read_structures(out / "train.extxyz")
    test = read_structures(out / "test.extxyz")
    assert len(train) == 10 and len(test) == 20
    e_train, e_test = train.energies(), test.energies()
    assert e_train[0] == 0.0 and train[0].info["kind"] == "minimum"  # the optimised minimum, energy reference
    assert e_train.min() >= 0.0 and e_train.max() <= 5.0
    counts = np.histogram(e_test, bins=np.arange(0.0, 11.0))[0]
    assert counts.tolist() == [2] * 10  # two per 1 kcal/mol bin
    # every frame says where it came from, and the files' energies are relative to the minimum
    e_min = summary["reference_energy_kcal_per_mol"]
    for s in list(train) + list(test):
        assert s.info["reference_energy"] == pytest.approx(e_min) and s.info["method"] == "tblite:gfn2-xtb"
        assert s.info["stage"] in ("train", "test") and "store_id" in s.info or s.info.get("kind") == "minimum"
        assert np.all((_nh_distances(s) > 0.7) & (_nh_distances(s) < 2.0))
    # the store keeps absolute energies
    store = Store(out / "labels.db")
    rec = store.get(test[3], "tblite:gfn2-xtb")
    assert rec.energy == pytest.approx(test[3].energy + e_min, abs=1e-9)
    # normal modes: 3N - 6 = 6 positive frequencies, the umbrella the lowest (NH3: ~1000-1200 cm^-1)
    freqs = summary["frequencies_cm-1"]
    assert len(freqs) == 6 and min(freqs) > 800 and summary["umbrella_mode"] == int(np.argmin(freqs))
    assert summary["train"]["n"] == 10 and summary["test"]["missing_bins"] == []
    assert summary["labels"]["oracle_calls"] == summary["labels"]["store_rows"]  # each structure computed once
    assert json.loads((out / "summary.json").read_text())["test"]["histogram"]["counts"] == [2] * 10
    kinds = {s.info["kind"] for s in test}
    assert kinds <= {"normal-modes", "umbrella", "inversion"} and len(kinds) >= 2


def test_second_build_makes_no_oracle_call(quick_build):
    out, first, _ = quick_build
    before = {p: (out / p).read_bytes() for p in ("train.extxyz", "test.extxyz")}
    oracle = _tblite()
    again = build_ammonia(out, oracle=oracle, config=AmmoniaConfig.quick(), progress=False)
    assert oracle.calls == 0 and again["labels"]["oracle_calls"] == 0 and again["labels"]["computed"] == 0
    assert again["labels"]["store_rows"] == first["labels"]["store_rows"]
    assert all((out / p).read_bytes() == data for p, data in before.items())  # deterministic


def test_inversion_path_mirrors_the_minimum():
    from ase.build import molecule

    nh3 = molecule("NH3")
    x0 = nh3.positions
    x1 = inversion_path(nh3.numbers, x0, 1.0)
    xp = inversion_path(nh3.numbers, x0, 0.5)
    n = 0
    assert np.allclose(np.linalg.norm(x1 - x1[n], axis=1), np.linalg.norm(x0 - x0[n], axis=1))  # N-H fixed
    axis = x0[n] - x0[1:].mean(0)
    axis /= np.linalg.norm(axis)
    assert np.allclose((xp[1:] - xp[n]) @ axis, 0.0, atol=1e-12)  # planar at t = 0.5
    assert np.allclose((x1[1:] - x1[n]) @ axis, -((x0[1:] - x0[n]) @ axis))  # inverted at t = 1


def test_public_ammonia_set_is_the_same_molecule(quick_build):
    if not AMMONIA.is_file():
        pytest.skip(f"reference data {AMMONIA.name} not found in {AMMONIA.parent}")
    public = read_structures(AMMONIA)
    out, _, _ = quick_build
    ours = read_structures(out / "train.extxyz")
    assert len(public) == 138 and abs(public.energies().min()) < 1e-3  # relative to the lowest frame
    assert sorted(public[0].numbers) == sorted(ours[0].numbers)
    # N-H bond lengths of both sets lie in the same range around the minimum
    d_pub = np.concatenate([_nh_distances(s) for s in public])
    d_ours = np.concatenate([_nh_distances(s) for s in ours])
    assert abs(np.median(d_pub) - np.median(d_ours)) < 0.05


def test_a_writer_killed_mid_write_does_not_block_the_store(tmp_path):
    """A SIGKILL inside a write leaves SQLite's journal and (with ASE's default) a '<db>.lock' file; the
    store must roll the first back and ignore the second, not wait for it forever."""
    from uqpot.data.structures import Structure

    db = tmp_path / "labels.db"
    store = Store(db)
    s = Structure(numbers=np.array([7, 1]), positions=np.array([[0.0, 0, 0], [1.0, 0, 0]]), cell=np.zeros((3, 3)),
                  pbc=np.zeros(3, dtype=bool), energy=1.0, forces=np.zeros((2, 3)))
    (tmp_path / "labels.db.lock").write_bytes(b"")  # what a writer killed inside ASE's lock leaves behind
    t = time.perf_counter()
    Store(db).put(s, "m")
    assert time.perf_counter() - t < 5 and store.get(s, "m").energy == 1.0


def _rows(db: Path) -> int:
    for _ in range(100):
        try:
            con = sqlite3.connect(str(db), timeout=0.05)
            try:
                return con.execute("SELECT count(*) FROM systems").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            time.sleep(0.005)
    return 0


def test_sigkill_during_a_build_loses_nothing_and_recomputes_nothing(tmp_path):
    """A build killed half-way (SIGKILL, in a subprocess) keeps every finished label; the rerun computes
    exactly the structures that were missing, and the store holds each structure once."""
    pytest.importorskip("tblite")
    out = tmp_path / "ammonia"
    db = out / "labels.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["data", "build", "ammonia", "--out", str(out), "--oracle", "tblite", "--quick", "--test-max", "20",
            "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "uqpot.cli.main", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if db.exists() and _rows(db) >= 42:  # past the optimisation and the Hessian, inside the sets
                break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "summary.json").exists()  # it really was killed before the end
    store = Store(db)
    killed = {r.hash: (r.id, r.structure.energy) for r in store.records()}
    assert len(killed) == store.count() >= 42  # no duplicates

    from click.testing import CliRunner

    from uqpot.cli.main import cli

    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    after = {rec.hash: (rec.id, rec.structure.energy) for rec in Store(db).records()}
    assert len(after) == summary["labels"]["store_rows"]  # still one row per structure
    assert all(after[h] == v for h, v in killed.items())  # nothing lost, nothing overwritten
    assert summary["labels"]["oracle_calls"] == len(after) - len(killed)  # nothing recomputed
    assert summary["labels"]["from_store"] >= len(killed)
    assert summary["test"]["histogram"]["counts"] == [2] * 20


@pytest.mark.slow
def test_local_executor_builds_the_same_set(tmp_path, quick_build):
    """Labelling batches on a local Dask cluster give the same files as in-process labelling."""
    pytest.importorskip("distributed")
    out, _, _ = quick_build
    build_ammonia(tmp_path, oracle=_tblite(), config=AmmoniaConfig.quick(), executor="local", progress=False)
    for name in ("train.extxyz", "test.extxyz"):
        a, b = read_structures(tmp_path / name), read_structures(out / name)
        assert len(a) == len(b)
        for x, y in zip(a, b):  # the same structures and labels; only the store's row ids (the order in
            assert np.array_equal(x.positions, y.positions)  # which workers finished) may differ
            assert x.energy == y.energy and np.array_equal(x.forces, y.forces)
            assert {k: v for k, v in x.info.items() if k != "store_id"} == \
                {k: v for k, v in y.info.items() if k != "store_id"}


@pytest.mark.slow
def test_full_pyscf_build_like_the_paper(tmp_path):
    """The real thing: BP86-D3(BJ)/def2-SVP (PySCF), 78 + 200 geometries (~10-15 min on 2 cores)."""
    pytest.importorskip("pyscf")
    summary = build_ammonia(tmp_path, oracle="pyscf:bp86-d3bj/def2-svp", progress=False)
    assert summary["train"]["n"] == 78 and summary["test"]["n"] == 200 and not summary["test"]["missing_bins"]
    assert 0.0 <= summary["train"]["energy_min"] and summary["train"]["energy_max"] <= 5.0
    assert summary["test"]["histogram"]["counts"] == [2] * 100
    freqs = summary["frequencies_cm-1"]
    assert 900 < min(freqs) < 1300 and 3200 < max(freqs) < 3700  # umbrella and N-H stretches at BP86
    oracle = get_oracle("pyscf:bp86-d3bj/def2-svp")
    again = build_ammonia(tmp_path, oracle=oracle, progress=False)
    assert oracle.calls == 0 and again["labels"]["computed"] == 0
