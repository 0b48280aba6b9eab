"""Oracles through ASE calculators (tblite, EMT): units, the store, failures, config, executors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ase.build import bulk, molecule

from uqpot.data.store import Store
from uqpot.data.structures import Structure
from uqpot.core.errors import ConfigError
from uqpot.core.executor import InProcessExecutor, Job, get_executor, run_jobs, slurm_job_script
from uqpot.oracle import BaseOracle, LabelResult, Oracle, get_oracle, oracle_from_config
from uqpot.oracle.ase import ASEOracle
from uqpot.core.units import EV_TO_KCAL_PER_MOL


def _rattled(name, n, scale=0.05):
    out = []
    for k in range(n):
        a = molecule(name)
        a.rattle(scale, seed=k)
        out.append(a)
    return out


def test_tblite_labels_in_kcal_per_mol_and_input_order():
    from tblite.ase import TBLite
    from threadpoolctl import threadpool_limits

    mols = _rattled("CH3CH2OH", 2) + [molecule("NH3")]
    oracle = get_oracle("tblite", threads=1)
    assert isinstance(oracle, Oracle) and oracle.method == "tblite:gfn2-xtb"
    result = oracle.label(mols)
    assert isinstance(result, LabelResult) and result.n_ok == 3 and oracle.calls == 3
    for a, s in zip(mols, result):
        ref = a.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        with threadpool_limits(limits=1):  # uncapped OpenMP crawls on a busy machine
            e_ev, f_ev = ref.get_potential_energy(), ref.get_forces()
        assert s.energy == pytest.approx(e_ev * EV_TO_KCAL_PER_MOL, abs=1e-6)
        np.testing.assert_allclose(s.forces, f_ev * EV_TO_KCAL_PER_MOL, atol=1e-5)
        np.testing.assert_array_equal(s.numbers, a.numbers)
    # ase.Atoms views carry kcal/mol results
    atoms = result.atoms()
    assert atoms[2].get_potential_energy() == pytest.approx(result[2].energy)
    assert all(r.ok and not r.from_store and r.wall_time > 0 for r in result.records)


def test_store_means_nothing_is_computed_twice(tmp_path):
    mols = _rattled("CH3CH2OH", 4)
    db = tmp_path / "labels.db"
    first = get_oracle("tblite", threads=1)
    r1 = first.label(mols[:3], store=db, provenance={"generation": 0, "source": "test"})
    assert first.calls == 3 and r1.n_computed == 3
    second = get_oracle("tblite", threads=1)
    r2 = second.label(mols, store=Store(db), provenance={"generation": 1})
    assert second.calls == 1  # only the new structure
    assert [r.from_store for r in r2.records] == [True, True, True, False]
    for a, b in zip(r1, r2):
        assert a.energy == b.energy
        np.testing.assert_array_equal(a.forces, b.forces)
    third = get_oracle("tblite", threads=1)
    r3 = third.label(mols + [s.to_atoms() for s in r2], store=db)  # Structures or Atoms, duplicates
    assert third.calls == 0 and r3.n_ok == 8 and r3.n_computed == 0
    store = Store(db)
    assert store.count(method="tblite:gfn2-xtb") == 4
    assert len(store.select(generation=0)) == 3 and len(store.select(generation=1)) == 1
    # another level of theory is a different key
    gfn1 = get_oracle("tblite", xtb="GFN1-xTB", threads=1)
    gfn1.label(mols[:1], store=db)
    assert gfn1.calls == 1 and store.count() == 5


def test_duplicates_within_one_call_are_computed_once():
    a = molecule("NH3")
    oracle = get_oracle("tblite", threads=1)
    result = oracle.label([a, a.copy(), Structure.from_atoms(a)])
    assert oracle.calls == 1 and result.n_ok == 3 and result.n_computed == 1
    assert result.records[2].duplicate_of == 0
    assert result[1].energy == result[0].energy


def test_calculator_exception_is_recorded_per_structure(tmp_path):
    good = molecule("NH3")
    overlapping = molecule("NH3")
    overlapping.positions[1] = overlapping.positions[0]  # tblite: "Too close interatomic distances"
    unsupported = molecule("NH3")
    unsupported.numbers[0] = 100  # tblite: "No support for elements with Z > 86"
    later = molecule("H2O")
    db = tmp_path / "labels.db"
    oracle = get_oracle("tblite", threads=1)
    result = oracle.label([good, overlapping, unsupported, later], store=db)
    assert [r.ok for r in result.records] == [True, False, False, True]
    assert result[1] is None and result[2] is None and result[3].energy is not None
    assert "InputError" in result.records[1].error and "close" in result.records[1].error
    assert "86" in result.records[2].error
    assert oracle.calls == 4 and result.n_failed == 2
    store = Store(db)
    assert store.count(status="failed") == 2 and store.count(status="ok") == 2
    assert {f.error for f in store.failures()} == {result.records[1].error, result.records[2].error}
    # stored failures are not retried blindly ...
    again = get_oracle("tblite", threads=1)
    r2 = again.label([overlapping, unsupported], store=db)
    assert again.calls == 0 and r2.n_failed == 2 and all(r.from_store for r in r2.records)
    # ... unless asked
    retry = get_oracle("tblite", threads=1, retry_failures=True)
    r3 = retry.label([good, overlapping, unsupported], store=db)
    assert retry.calls == 2 and r3.n_failed == 2 and r3.records[0].from_store


def test_scf_failure_inside_tblite_is_recorded():
    oracle = get_oracle("tblite", max_iterations=1, threads=1)
    assert oracle.method == "tblite:gfn2-xtb;max_iterations=1"
    result = oracle.label(_rattled("CH3CH2OH", 2))
    assert result.n_failed == 2 and oracle.calls == 2
    assert all("not converged" in r.error for r in result.records)


def test_any_ase_calculator_by_import_path():
    from ase.calculators.emt import EMT

    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    oracle = get_oracle("ase", calculator="ase.calculators.emt.EMT")
    assert oracle.method == "ase:ase.calculators.emt.EMT()"
    s = oracle.label([cu])[0]
    ref = cu.copy()
    ref.calc = EMT()
    assert s.energy == pytest.approx(ref.get_potential_energy() * EV_TO_KCAL_PER_MOL, rel=1e-12)
    np.testing.assert_allclose(s.forces, ref.get_forces() * EV_TO_KCAL_PER_MOL, atol=1e-10)
    # a calculator in other units
    in_hartree = ASEOracle("ase.calculators.emt.EMT", energy_unit="Hartree", method="emt-as-hartree")
    assert in_hartree.label([cu])[0].energy == pytest.approx(ref.get_potential_energy() * 627.5094740631)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown oracle"):
        get_oracle("vasp")
    with pytest.raises(ConfigError, match="unexpected keyword"):
        get_oracle("pyscf:pbe/def2-svp", grid=5)
    with pytest.raises(Exception, match="cannot import"):
        get_oracle("ase", calculator="no_such_package.Calc")
    with pytest.raises(ConfigError, match="name"):
        oracle_from_config({"xtb": "GFN2-xTB"})
    o = oracle_from_config({"name": "pyscf", "preset": "bp86-d3bj/def2-svp", "charge": 1, "spin": 1})
    assert o.method == "pyscf:bp86-d3bj/def2-svp;charge=1;spin=1"
    assert get_oracle("pyscf:pbe/def2-svp").method == "pyscf:pbe/def2-svp"
    # same functional and basis with other numerical settings is another level of theory
    assert get_oracle("pyscf", xc="pbe", basis="def2-svp").method != "pyscf:pbe/def2-svp"
    assert get_oracle("bks").method == "lammps:bks+wall" and get_oracle("bks", wall=False).method == "lammps:bks"


def test_executors_in_process():
    with get_executor("none") as ex:
        assert isinstance(ex, InProcessExecutor) and ex.in_process
        assert list(ex.map(abs, [-1, 2, -3])) == [1, 2, 3]
        assert ex.submit(divmod, 7, 2).result() == (3, 1)
        with pytest.raises(ZeroDivisionError):
            ex.submit(divmod, 1, 0).result()
    with pytest.raises(ConfigError):
        get_executor("local", workers=2)
    with pytest.raises(ConfigError):
        get_executor("kubernetes")
    slurm = get_executor("slurm", queue="debug", cores=4, memory="8GB", walltime="00:30:00",
                         job_extra=["--gres=gpu:1"])  # lazy: nothing is submitted until used
    assert not slurm.in_process and "queue=debug" in repr(slurm)
    slurm.close()
    script = slurm_job_script(queue="debug", cores=4, memory="8GB", walltime="00:30:00",
                              job_extra=["--gres=gpu:1"], job_script_prologue=["module load lammps"])
    for line in ("#SBATCH -p debug", "#SBATCH --cpus-per-task=4", "#SBATCH -t 00:30:00", "#SBATCH --gres=gpu:1",
                 "module load lammps"):
        assert line in script
    # the nanny on the node starts workers without glibc's MALLOC_TRIM_THRESHOLD_ (see the next test)
    assert "export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\"{'MALLOC_TRIM_THRESHOLD_': None}\"" in script


def _worker_env():
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


def test_local_workers_start_without_the_malloc_trim_threshold():
    """Dask's default MALLOC_TRIM_THRESHOLD_=65536 switches off glibc's dynamic mmap threshold (an ensemble's MD
    ran 3.3x slower in a worker): uqpot's real LocalCluster workers start without it, with one OpenMP thread."""
    with get_executor("local", n_workers=1) as ex:
        env = ex.submit(_worker_env).result()
    assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}


def test_local_dask_cluster_gives_the_same_labels(tmp_path):
    """Labelling on a real LocalCluster (2 workers on loopback) equals labelling in-process."""
    mols = _rattled("CH3CH2OH", 5)
    bad = molecule("NH3")
    bad.positions[1] = bad.positions[0]
    mols.insert(2, bad)
    local = get_oracle("tblite", threads=1).label(mols)
    db = tmp_path / "labels.db"
    oracle = get_oracle("tblite")
    with get_executor("local", n_workers=2) as ex:
        assert not ex.in_process
        assert list(ex.map(abs, [-3, 4])) == [3, 4]
        distributed = oracle.label(mols, store=db, executor=ex)
    assert oracle.calls == len(mols)
    assert [r.ok for r in distributed.records] == [r.ok for r in local.records]
    assert "close" in distributed.records[2].error
    for a, b in zip(local, distributed):
        if a is None:
            assert b is None
            continue
        assert b.energy == pytest.approx(a.energy, abs=1e-8)
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-8)
    assert Store(db).count() == len(mols)
    # the labels written by the driver are found again in-process
    again = get_oracle("tblite", threads=1)
    assert again.label(mols, store=db).n_from_store == len(mols) and again.calls == 0


def test_base_oracle_contract():
    class Broken(BaseOracle):
        def compute(self, structure):
            return float("nan"), np.zeros((structure.n_atoms, 3))

    result = Broken("broken").label([molecule("NH3")])
    assert result.n_failed == 1 and "non-finite" in result.records[0].error


def _record(order_file, key):
    with open(order_file, "a") as fh:
        fh.write(f"{key}\n")
    return key


def test_run_jobs_keeps_the_callers_order_and_waits_for_after(tmp_path):
    """uqpot.core.executor.run_jobs: a job starts after the one its ``after`` names; one slot (in-process) runs
    the ready jobs in list order; on a real 2-worker LocalCluster every job runs once, after its ``after``."""
    order = tmp_path / "order.txt"
    jobs = [Job("stack", _record, (str(order), "stack")),
            Job("long", _record, (str(order), "long")),
            Job("a", _record, (str(order), "a"), after="stack"),
            Job("b", _record, (str(order), "b"), after="a")]
    done = []
    out = run_jobs(InProcessExecutor(), jobs, on_done=done.append)
    assert out == {"stack": "stack", "long": "long", "a": "a", "b": "b"}
    assert order.read_text().split() == ["stack", "long", "a", "b"] == done
    with pytest.raises(ValueError, match="names no job"):
        run_jobs(InProcessExecutor(), [Job("x", _record, (str(order), "x"), after="y")])
    with pytest.raises(ValueError, match="cycle"):
        run_jobs(InProcessExecutor(), [Job("x", _record, (str(order), "x"), after="y"),
                                       Job("y", _record, (str(order), "y"), after="x")])
    order.unlink()
    with get_executor("local", n_workers=2) as ex:
        assert ex.slots() == 2
        out = run_jobs(ex, jobs)
    seen = order.read_text().split()
    assert sorted(seen) == ["a", "b", "long", "stack"] and out["b"] == "b"
    assert seen.index("stack") < seen.index("a") < seen.index("b")
