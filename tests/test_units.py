import ase.units
import numpy as np
import pytest

from uqpot.core import units


def test_constants_match_ase():
    kcal_mol_in_ev = ase.units.kcal / ase.units.mol
    assert units.EV_TO_KCAL_PER_MOL == pytest.approx(1.0 / kcal_mol_in_ev, rel=1e-9)
    assert units.HARTREE_TO_KCAL_PER_MOL == pytest.approx(ase.units.Hartree / kcal_mol_in_ev, rel=1e-6)
    assert units.BOHR_TO_ANGSTROM == pytest.approx(ase.units.Bohr, rel=1e-8)


def test_round_trips_and_forces():
    e = np.array([1.0, -2.5])
    assert np.allclose(units.convert_energy(units.convert_energy(e, "eV", "kcal/mol"), "kcal/mol", "eV"), e)
    # 1 eV/Å = 23.06 kcal/mol/Å; 1 Hartree/Bohr = 627.5/0.529 kcal/mol/Å
    assert units.convert_force(1.0, "eV", "Å", "kcal/mol", "Å") == pytest.approx(23.06054801)
    assert units.convert_force(1.0, "Hartree", "Bohr", "kcal/mol", "Å") == pytest.approx(
        627.509474 / 0.52917721067, rel=1e-8)


def test_unknown_unit_is_an_error():
    with pytest.raises(units.UnitError, match="unknown energy unit 'kcal'"):
        units.energy_factor("kcal")
