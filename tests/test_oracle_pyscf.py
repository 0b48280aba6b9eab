"""The PySCF oracle against the published labels (real DFT; ../shared/data, skipped where absent)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from uqpot.data.store import Store
from uqpot.oracle import get_oracle
from uqpot.oracle.pyscf import PySCFOracle


def _compare(reference, labelled):
    e_ref = np.array([s.energy for s in reference])
    e = np.array([s.energy for s in labelled])
    rel = np.abs((e - e[0]) - (e_ref - e_ref[0]))
    mae = [np.abs(a.forces - b.forces).mean() for a, b in zip(labelled, reference)]
    return rel.max(), max(mae)


def test_bp86_d3bj_preset_reproduces_ammonia_labels(ammonia):
    frames = [ammonia[i] for i in (0, 40, 100)]
    oracle = PySCFOracle.from_preset("bp86-d3bj/def2-svp", threads=1)
    assert oracle.method == "pyscf:bp86-d3bj/def2-svp"
    result = oracle.label(frames)
    assert result.n_ok == 3 and oracle.calls == 3
    rel, mae = _compare(frames, result)
    assert rel < 0.3, f"relative energies differ by {rel:.3f} kcal/mol"
    assert mae < 1.5, f"force MAE {mae:.3f} kcal/mol/Å"


def test_nonconverged_scf_is_a_failure_and_labelling_goes_on(ammonia, tmp_path):
    frames = [ammonia[i] for i in (3, 7)]
    db = tmp_path / "labels.db"
    starved = get_oracle("pyscf:bp86-d3bj/def2-svp", max_cycle=1, threads=1)
    result = starved.label(frames, store=db, provenance={"generation": 0})
    assert starved.calls == 2  # the second structure was attempted after the first failed
    assert result.n_failed == 2 and result.structures == [None, None]
    assert all("SCF not converged in 1 cycles" in r.error for r in result.records)
    store = Store(db)
    assert store.count(status="failed") == 2
    # max_cycle does not change the level of theory: a normal oracle sees the failures in the store,
    # and relabels them when told to retry
    normal = get_oracle("pyscf:bp86-d3bj/def2-svp", threads=1)
    assert normal.label(frames, store=db).n_failed == 2 and normal.calls == 0
    retry = get_oracle("pyscf:bp86-d3bj/def2-svp", threads=1, retry_failures=True)
    relabelled = retry.label(frames, store=db, provenance={"generation": 1})
    assert retry.calls == 2 and relabelled.n_ok == 2
    assert store.count(status="failed") == 0 and store.count(status="ok") == 2


def test_periodic_structures_are_refused_per_structure():
    result = PySCFOracle.from_preset("bp86-d3bj/def2-svp").label([bulk("Si")])
    assert result.n_failed == 1 and "molecules only" in result.records[0].error


@pytest.mark.slow
def test_pbe_preset_reproduces_rmd17_ethanol(ethanol):
    frames = [ethanol[i] for i in (0, 500)]
    oracle = get_oracle("pyscf:pbe/def2-svp", threads=2)
    result = oracle.label(frames)
    assert result.n_ok == 2
    rel, mae = _compare(frames, result)
    assert mae < 0.05, f"force MAE {mae:.4f} kcal/mol/Å"
    assert rel < 0.01, f"relative energy differs by {rel:.4f} kcal/mol"
