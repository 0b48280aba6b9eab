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


# --------------------------------------------------------------------------------------- dynamics
# Molecular dynamics inside uqpot (``uqpot.md``) works in kcal/mol, Å, fs and amu (g/mol).  The constants
# below are CODATA 2014, like the rest of this module and ASE's default unit set, so that uqpot's
# integrators and ASE's agree to round-off.

#: internal time unit of the MD engine
TIME_UNIT = "fs"
#: internal mass unit (atomic mass unit, g/mol)
MASS_UNIT = "amu"
#: Boltzmann constant, J/K (CODATA 2014)
BOLTZMANN_J_PER_K = 1.38064852e-23
#: atomic mass unit, kg (CODATA 2014)
AMU_KG = 1.660539040e-27
#: k_B in kcal/mol/K (0.0019872036): k_B · N_A / 4184
KB_KCAL_PER_MOL_K = BOLTZMANN_J_PER_K * AVOGADRO / 4184.0
#: acceleration of a force in kcal/mol/Å on a mass in amu, in Å/fs²:
#: (4184 J/mol / N_A) / (1e-10 m · amu) = 4184 / (N_A · amu) · 1e10 m/s², times (1e10 Å/m) · (1e-15 s/fs)²,
#: ≈ 4.184e-4 Å/fs²
FORCE_TO_ACCELERATION = 4184.0 / (AVOGADRO * AMU_KG) * 1e-10
#: kinetic energy m·v² with m in amu and v in Å/fs, in kcal/mol (≈ 2390.06): 1 / FORCE_TO_ACCELERATION
MV2_TO_KCAL_PER_MOL = 1.0 / FORCE_TO_ACCELERATION

TIME_UNITS: dict[str, float] = {"fs": 1.0, "ps": 1e3, "ns": 1e6, "as": 1e-3}


def time_factor(unit: str) -> float:
    """Factor that converts a time in ``unit`` to fs."""
    try:
        return TIME_UNITS[unit]
    except KeyError:
        raise UnitError(f"unknown time unit {unit!r}; known: {', '.join(TIME_UNITS)}") from None


def kinetic_energy_kcal_per_mol(masses, velocities):
    """½ Σ m v² in kcal/mol for masses in amu and velocities in Å/fs (NumPy or torch arrays)."""
    return 0.5 * MV2_TO_KCAL_PER_MOL * (masses[..., None] * velocities ** 2).sum()


def temperature_from_kinetic_energy(kinetic_energy, n_dof):
    """T (K) = 2 E_kin / (n_dof k_B), E_kin in kcal/mol."""
    return 2.0 * kinetic_energy / (n_dof * KB_KCAL_PER_MOL_K)
