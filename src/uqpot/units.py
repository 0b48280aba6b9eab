"""Explicit unit conversions.

uqpot works internally in kcal/mol (energy), Å (length) and fs (time), the units of the paper.  Every
conversion goes through this module; the constants are CODATA 2014 values (ASE's default unit set) and are
tested against ``ase.units``.
"""

from __future__ import annotations

#: CODATA 2014, the default unit set of ASE (so conversions round-trip exactly with ASE's eV);
#: the thermochemical calorie is 4.184 J
ELEMENTARY_CHARGE = 1.6021766208e-19  # C
AVOGADRO = 6.022140857e23  # 1/mol
HARTREE_J = 4.359744650e-18  # J
#: 1 eV in kcal/mol: e · N_A / 4184
EV_TO_KCAL_PER_MOL = ELEMENTARY_CHARGE * AVOGADRO / 4184.0
#: 1 Hartree in kcal/mol (627.509474)
HARTREE_TO_KCAL_PER_MOL = HARTREE_J * AVOGADRO / 4184.0
#: 1 kJ/mol in kcal/mol
KJ_PER_MOL_TO_KCAL_PER_MOL = 1.0 / 4.184
#: 1 Bohr in Å
BOHR_TO_ANGSTROM = 0.52917721067
#: 1 nm in Å
NM_TO_ANGSTROM = 10.0

ENERGY_UNITS: dict[str, float] = {
    "kcal/mol": 1.0,
    "eV": EV_TO_KCAL_PER_MOL,
    "meV": EV_TO_KCAL_PER_MOL * 1e-3,
    "Hartree": HARTREE_TO_KCAL_PER_MOL,
    "Ha": HARTREE_TO_KCAL_PER_MOL,
    "kJ/mol": KJ_PER_MOL_TO_KCAL_PER_MOL,
}

LENGTH_UNITS: dict[str, float] = {
    "Å": 1.0,
    "Ang": 1.0,
    "Angstrom": 1.0,
    "A": 1.0,
    "Bohr": BOHR_TO_ANGSTROM,
    "nm": NM_TO_ANGSTROM,
}

#: internal units
ENERGY_UNIT = "kcal/mol"
LENGTH_UNIT = "Å"


class UnitError(ValueError):
    pass


def energy_factor(unit: str) -> float:
    """Factor that converts an energy in ``unit`` to kcal/mol."""
    try:
        return ENERGY_UNITS[unit]
    except KeyError:
        raise UnitError(f"unknown energy unit {unit!r}; known: {', '.join(ENERGY_UNITS)}") from None


def length_factor(unit: str) -> float:
    """Factor that converts a length in ``unit`` to Å."""
    try:
        return LENGTH_UNITS[unit]
    except KeyError:
        raise UnitError(f"unknown length unit {unit!r}; known: {', '.join(LENGTH_UNITS)}") from None


def convert_energy(value, from_unit: str, to_unit: str):
    return value * (energy_factor(from_unit) / energy_factor(to_unit))


def convert_length(value, from_unit: str, to_unit: str):
    return value * (length_factor(from_unit) / length_factor(to_unit))


def convert_force(value, from_energy: str, from_length: str, to_energy: str, to_length: str):
    """Forces in (from_energy / from_length) to (to_energy / to_length)."""
    return value * (energy_factor(from_energy) / energy_factor(to_energy)) * (
        length_factor(to_length) / length_factor(from_length)
    )
