"""NEB: a symmetric double well with a curved minimum-energy path gives its known barrier; the NH3 inversion
on the Morse reference, on a uqpot model (UQPotCalculator) and with GFN2-xTB (tblite oracle)."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from uqpot.md.analytic import MorseCalculator
from uqpot.md.neb import (NEBResult, OracleCalculator, calculator_factory, mirror, nh3_inversion_barrier,
                          nh3_pyramid, run_neb)
from uqpot.nn.potential import Potential
from uqpot.core.units import EV_TO_KCAL_PER_MOL


class CurvedDoubleWell(Calculator):
    """One atom on E = h((x/a)² − 1)² + ½k(y − c(1 − (x/a)²))² + ½k z² (eV, Å): minima at (±a, 0, 0), the
    saddle at (0, c, 0) with energy h; the straight line between the minima crosses x = 0 at E = h + ½kc²,
    so a band that did not relax would overestimate the barrier."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, h=0.5, a=1.0, c=0.5, k=5.0):
        super().__init__()
        self.h, self.a, self.c, self.k = h, a, c, k

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        (x, y, z), = self.atoms.positions
        h, a, c, k = self.h, self.a, self.c, self.k
        u = (x / a) ** 2
        w = y - c * (1.0 - u)
        e = h * (u - 1.0) ** 2 + 0.5 * k * w * w + 0.5 * k * z * z
        dex = h * 2.0 * (u - 1.0) * 2.0 * x / a ** 2 + k * w * (2.0 * c * x / a ** 2)
        self.results["energy"] = e
        self.results["forces"] = -np.array([[dex, k * w, k * z]])


def test_curved_double_well_barrier():
    calc = CurvedDoubleWell()
    left, right = Atoms("H", positions=[[-1.0, 0.0, 0.0]]), Atoms("H", positions=[[1.0, 0.0, 0.0]])
    res = run_neb(left, right, calc, n_images=9, climb=True, optimizer="FIRE", fmax=1e-3, steps=3000,
                  remove_rotation_and_translation=False)
    assert isinstance(res, NEBResult) and res.converged
    h_kcal = 0.5 * EV_TO_KCAL_PER_MOL
    assert res.barrier == pytest.approx(h_kcal, rel=1e-3)
    assert res.barrier_reverse == pytest.approx(h_kcal, rel=1e-3)
    assert res.saddle_index == 4
    np.testing.assert_allclose(res.images[4].positions[0], [0.0, 0.5, 0.0], atol=5e-3)  # the climbing image
    np.testing.assert_allclose(res.energies, res.energies[::-1], atol=1e-2)  # symmetric profile
    assert res.path[0] == 0.0 and np.all(np.diff(res.path) > 0)
    # without climbing the highest image sits below the saddle, never above it
    no_climb = run_neb(left, right, calc, n_images=9, climb=False, fmax=1e-3, steps=3000,
                       remove_rotation_and_translation=False)
    assert no_climb.barrier <= h_kcal + 1e-6


def test_nh3_endpoints_are_mirror_images():
    a = nh3_pyramid()
    d = np.linalg.norm(a.positions[1:] - a.positions[0], axis=1)
    np.testing.assert_allclose(d, 1.012, atol=1e-12)
    v1, v2 = a.positions[1] - a.positions[0], a.positions[2] - a.positions[0]
    assert np.degrees(np.arccos(v1 @ v2 / (d[0] * d[1]))) == pytest.approx(106.7)
    b = mirror(a)
    np.testing.assert_allclose(b.positions[:, 2], -a.positions[:, 2])
    np.testing.assert_allclose(a.get_all_distances(), b.get_all_distances(), atol=1e-12)


def test_nh3_inversion_on_morse_reference():
    res = nh3_inversion_barrier(MorseCalculator(), n_images=9, fmax=0.005)
    assert res.converged and res.endpoints_converged == (True, True)
    assert 0.5 < res.barrier < 2.0  # ≈ 1.0 kcal/mol for these parameters
    assert res.barrier == pytest.approx(res.barrier_reverse, abs=1e-3)
    np.testing.assert_allclose(res.energies, res.energies[::-1], atol=1e-2)
    top = res.images[res.saddle_index].positions
    # the saddle is planar: the three H and N in one plane
    n = np.cross(top[2] - top[1], top[3] - top[1])
    assert abs(n @ (top[0] - top[1])) / np.linalg.norm(n) < 1e-2


def test_nh3_inversion_with_uqpot_model_through_calculator():
    """The trained-potential path: any uqpot model through UQPotCalculator (random weights here, so only the
    plumbing and the symmetry are checked: PaiNN is invariant under reflections)."""
    torch.manual_seed(0)
    model = Potential(features=16, interactions=2, rbf=8, readout_hidden=16).double().eval()
    model.known_elements[[1, 7]] = True
    factory, shared = calculator_factory(model)
    assert shared and factory() is factory()
    a = nh3_pyramid()
    a.calc = factory()
    b = mirror(a)
    b.calc = factory()
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-10)
    res = run_neb(a, b, model, n_images=7, fmax=0.05, steps=20)
    assert np.all(np.isfinite(res.energies)) and len(res.energies) == 7 and res.energies[0] == 0.0


def test_nh3_inversion_barrier_gfn2_xtb():
    """GFN2-xTB (tblite oracle through OracleCalculator): a positive barrier on a symmetric path (found:
    6.1 kcal/mol; experiment ≈ 5.8, the paper's BP86-D3 a little below)."""
    pytest.importorskip("tblite.ase")
    from uqpot.oracle import tblite_oracle

    oracle = tblite_oracle(threads=1)
    factory, shared = calculator_factory(oracle)
    assert not shared and isinstance(factory(), OracleCalculator)
    res = nh3_inversion_barrier(oracle, n_images=9, fmax=0.01)
    assert res.converged
    assert 3.0 < res.barrier < 10.0
    assert res.barrier == pytest.approx(res.barrier_reverse, abs=0.05)
    np.testing.assert_allclose(res.energies, res.energies[::-1], atol=0.05)
    assert res.saddle_index == 4


def test_band_of_a_uqpot_model_is_one_call_per_step_and_equals_the_shared_calculator():
    """A uqpot model's band is evaluated in one batched call per optimiser step (uqpot.md.band), with the
    energies and forces of the one-image-at-a-time calculator; both bands relax to the same profile."""
    from ase.mep import NEB

    from uqpot.md.band import attach_band
    from uqpot.md.calculator import UQPotCalculator

    torch.manual_seed(1)
    model = Potential(features=16, interactions=2, rbf=8, readout_hidden=16).double().eval()
    model.known_elements[[1, 7]] = True
    a, b = nh3_pyramid(), mirror(nh3_pyramid())
    images = [a.copy() for _ in range(6)] + [b.copy()]
    NEB(images).interpolate()
    ev = attach_band(model, images)
    one = UQPotCalculator(model)
    for im in images:
        ref = im.copy()
        ref.calc = one
        assert im.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(im.get_forces(), ref.get_forces(), atol=1e-9)
    assert ev.calls == 1  # seven images, one model call
    images[3].positions[1, 0] += 0.01  # one image moves: the band is evaluated again, once
    _ = [im.get_forces() for im in images]
    assert ev.calls == 2
    batched = run_neb(a, b, model, n_images=7, fmax=0.05, steps=60)
    shared = run_neb(a, b, one, n_images=7, fmax=0.05, steps=60)
    assert batched.steps == shared.steps
    np.testing.assert_allclose(batched.energies, shared.energies, atol=1e-6)
