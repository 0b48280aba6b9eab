"""The labelled-structure store: keys, round trips, failures, and survival of a SIGKILLed labeller."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from ase.build import molecule

from uqpot.data.store import STORE_UNITS, Store, StoreError, structure_hash
from uqpot.data.structures import Structure


def _labelled(atoms, energy=-1.5, seed=0):
    f = np.random.default_rng(seed).normal(size=(len(atoms), 3))
    return Structure.from_atoms(atoms, energy=energy, forces=f)


def test_hash_is_a_content_key():
    a = molecule("NH3")
    s = Structure.from_atoms(a)
    h = structure_hash(a, "m")
    assert h == structure_hash(s, "m") and len(h) == 64
    b = a.copy()
    b.positions[0, 0] += 2e-10  # below the 1e-8 Å rounding
    assert structure_hash(b, "m") == h
    b.positions[0, 0] += 1e-6
    assert structure_hash(b, "m") != h
    assert structure_hash(a, "other") != h
    c = a.copy()
    c.numbers[1] = 9
    assert structure_hash(c, "m") != h
    d = a.copy()
    d.cell = [10, 10, 10]
    assert structure_hash(d, "m") != h
    d.pbc = True
    assert structure_hash(d, "m") != structure_hash(a.copy(), "m")
    z = a.copy()
    z.positions[0] = [0.0, 0.0, 0.0]
    w = a.copy()
    w.positions[0] = [-0.0, 0.0, -0.0]
    assert structure_hash(z, "m") == structure_hash(w, "m")


def test_put_get_roundtrip_units_and_provenance(tmp_path):
    store = Store(tmp_path / "labels.db")
    assert store.metadata["units"] == STORE_UNITS
    a = molecule("CH3CH2OH")
    s = _labelled(a, energy=-12345.678)
    assert store.get(a, "pyscf:x") is None
    rid = store.put(s, "pyscf:x", {"generation": 2, "uq_method": "ensemble", "source": "attack"})
    got = store.get(a, "pyscf:x")
    assert got.energy == pytest.approx(-12345.678, abs=1e-9)
    np.testing.assert_allclose(got.forces, s.forces, atol=0)
    np.testing.assert_allclose(got.positions, a.positions, atol=0)
    assert got.info["generation"] == 2 and got.info["method"] == "pyscf:x"
    assert store.get(a, "pyscf:other") is None
    # putting it again keeps the first label
    assert store.put(_labelled(a, energy=0.0), "pyscf:x") == rid
    assert store.get(a, "pyscf:x").energy == pytest.approx(-12345.678)
    assert store.count() == 1 and store.count(method="pyscf:x", status="ok") == 1
    assert len(store.select(generation=2)) == 1 and store.select(generation=3) == []
    # the ASE database stays readable by ASE itself, with the units in its metadata
    import ase.db

    db = ase.db.connect(str(tmp_path / "labels.db"))
    assert db.metadata["units"]["energy"] == "kcal/mol"
    assert db.get(id=rid).energy == pytest.approx(-12345.678)
    # reopening
    assert Store(tmp_path / "labels.db").get(a, "pyscf:x").energy == pytest.approx(-12345.678)


def test_failures_are_recorded_and_replaced(tmp_path):
    store = Store(tmp_path / "labels.db")
    a = molecule("NH3")
    fid = store.put_failure(a, "m", "SCF not converged in 1 cycles", {"generation": 1})
    assert store.get(a, "m") is None
    rec = store.lookup(a, "m")
    assert rec.status == "failed" and "not converged" in rec.error and rec.id == fid
    assert store.count(status="failed") == 1 and len(store.failures()) == 1
    sid = store.put(_labelled(a), "m", {"generation": 2})
    assert sid == fid  # the failure row is replaced in place
    assert store.count() == 1 and store.count(status="failed") == 0
    rec = store.lookup(a, "m")
    assert rec.ok and rec.error is None and rec.provenance["generation"] == 2
    # a failure never overwrites a label
    store.put_failure(a, "m", "boom")
    assert store.get(a, "m") is not None and store.count(status="failed") == 0


def test_bad_provenance_and_foreign_databases(tmp_path):
    store = Store(tmp_path / "labels.db")
    a = molecule("NH3")
    for bad in ({"energy": 1.0}, {"status": "x"}, {"bad key": 1}, {"generation": [1, 2]}):
        with pytest.raises(StoreError):
            store.put(_labelled(a), "m", bad)
    assert store.count() == 0
    with pytest.raises(StoreError, match=".db"):
        Store(tmp_path / "labels.sqlite")
    import ase.db

    other = ase.db.connect(str(tmp_path / "other.db"))
    other.write(a)
    with pytest.raises(StoreError, match="not a uqpot store"):
        Store(tmp_path / "other.db")


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys

    import ase.io

    from uqpot.oracle import get_oracle

    if __name__ == "__main__":
        inputs, store = sys.argv[1], sys.argv[2]
        oracle = get_oracle("tblite", threads=1)
        oracle.label(ase.io.read(inputs, ":"), store=store, provenance={"generation": 0})
        print("done", oracle.calls)
    """
)


def test_labels_survive_sigkill_and_are_not_recomputed(tmp_path):
    """A labelling process killed with SIGKILL loses no committed label; a rerun computes only the rest."""
    import ase.io

    n = 6
    structures = []
    for k in range(n):
        a = molecule("C60")  # ~0.3 s per GFN2-xTB label: slow enough to be killed halfway
        a.rattle(0.02, seed=k)
        structures.append(a)
    inputs = tmp_path / "inputs.extxyz"
    ase.io.write(inputs, structures)
    structures = ase.io.read(inputs, ":")
    script = tmp_path / "label.py"
    script.write_text(_KILL_SCRIPT)
    db = tmp_path / "labels.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(inputs), str(db)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    con = sqlite3.connect(str(db), timeout=5)
                    count = con.execute("SELECT COUNT(*) FROM systems").fetchone()[0]
                    con.close()
                except sqlite3.OperationalError:  # tables not created yet
                    count = 0
                if count >= 2:
                    break
            time.sleep(0.01)
        assert proc.poll() is None, f"labeller ended before it could be killed: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    con = sqlite3.connect(str(db))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    store = Store(db)
    k = store.count()
    assert 2 <= k < n and store.count(status="ok") == k

    from uqpot.oracle import get_oracle

    before = {i: store.get(a, "tblite:gfn2-xtb") for i, a in enumerate(structures)}
    kept = {i for i, s in before.items() if s is not None}
    assert len(kept) == k
    oracle = get_oracle("tblite", threads=1)
    result = oracle.label(structures, store=store, provenance={"generation": 0})
    assert oracle.calls == n - k  # nothing stored is recomputed
    assert result.n_ok == n and store.count() == n
    for i in kept:
        assert result.records[i].from_store
        assert result[i].energy == before[i].energy
        np.testing.assert_array_equal(result[i].forces, before[i].forces)
    # a third pass computes nothing
    again = get_oracle("tblite", threads=1)
    assert again.label(structures, store=store).n_from_store == n and again.calls == 0
