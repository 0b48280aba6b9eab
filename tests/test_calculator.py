"""The ASE calculator: results in the caller's units, consistent with the model, usable by ASE dynamics."""

import numpy as np
import pytest
import torch
from ase import units as ase_units
from ase.md.verlet import VelocityVerlet
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

import uqpot
from uqpot.data.batch import collate
from uqpot.md.calculator import UQPotCalculator
from uqpot.nn.potential import Potential
from uqpot.core.units import EV_TO_KCAL_PER_MOL
from conftest import silica_like


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, ethanol):
    torch.manual_seed(0)
    m = Potential(features=32, interactions=2, rbf=12, readout_hidden=16)
    m.fit_reference(ethanol[:50])
    return uqpot.save(m, tmp_path_factory.mktemp("m") / "model.pt")


def test_units_ev_and_kcal(model_file, ethanol):
    s = ethanol[0]
    model = uqpot.load(model_file)
    out = model(collate([s], cutoff=5.0), create_graph=False)
    e_kcal, f_kcal = float(out["energy"][0]), out["forces"].detach().double().numpy()
    atoms = s.to_atoms()
    atoms.calc = UQPotCalculator(model_file)  # ASE's eV, eV/Å by default
    assert atoms.get_potential_energy() == pytest.approx(e_kcal / EV_TO_KCAL_PER_MOL, rel=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), f_kcal / EV_TO_KCAL_PER_MOL, rtol=1e-6, atol=1e-9)
    atoms.calc = UQPotCalculator(model_file, energy_unit="kcal/mol")
    assert atoms.get_potential_energy() == pytest.approx(e_kcal, rel=1e-12)
    assert atoms.get_potential_energies().sum() == pytest.approx(e_kcal, rel=1e-6)


def test_ase_forces_are_energy_gradient_in_ev(model_file, ethanol):
    model = uqpot.load(model_file).double()
    atoms = ethanol[2].to_atoms()
    atoms.calc = UQPotCalculator(model)
    f = atoms.get_forces()
    h = 1e-4
    for a, c in [(0, 0), (4, 2), (8, 1)]:
        p = atoms.positions.copy()
        atoms.positions[a, c] += h
        ep = atoms.get_potential_energy()
        atoms.positions = p.copy()
        atoms.positions[a, c] -= h
        em = atoms.get_potential_energy()
        atoms.positions = p
        assert -(ep - em) / (2 * h) == pytest.approx(f[a, c], rel=1e-5, abs=1e-8)


def test_nve_md_conserves_energy(model_file, ethanol):
    model = uqpot.load(model_file).double()
    atoms = ethanol[0].to_atoms()
    atoms.calc = UQPotCalculator(model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    md = VelocityVerlet(atoms, timestep=0.2 * ase_units.fs)
    e0 = atoms.get_total_energy()
    md.run(50)
    assert abs(atoms.get_total_energy() - e0) < 2e-3 * max(1.0, atoms.get_kinetic_energy())


def test_unknown_element_refused(model_file):
    from uqpot.core.errors import DataError

    atoms = silica_like()
    atoms.calc = UQPotCalculator(model_file)
    with pytest.raises(DataError, match="Si not in the model's training set"):
        atoms.get_potential_energy()
