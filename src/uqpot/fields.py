"""The one registry of field names used across uqpot.

Every module refers to data by these names (data layer, model outputs, losses, metrics, reports), so a
field is renamed or added in exactly one place.  Units are those used *inside* uqpot: energies in
kcal/mol, lengths in Å, forces in kcal/mol/Å (the paper's units).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    per_atom: bool
    unit: str
    doc: str


ENERGY = "energy"
FORCES = "forces"
POSITIONS = "positions"
NUMBERS = "numbers"
CELL = "cell"
PBC = "pbc"
FEATURES = "features"  # per-atom latent features xi before the readout
ATOMIC_ENERGY = "atomic_energy"
UNCERTAINTY = "uncertainty"  # per structure
UNCERTAINTY_ATOM = "uncertainty_atom"  # per atom
ENERGY_VARIANCE = "energy_variance"

FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field(ENERGY, False, "kcal/mol", "total potential energy of a structure"),
        Field(FORCES, True, "kcal/mol/Å", "forces on atoms, F = -dE/dr"),
        Field(POSITIONS, True, "Å", "Cartesian coordinates"),
        Field(NUMBERS, True, "", "atomic numbers"),
        Field(CELL, False, "Å", "cell vectors as rows (3x3)"),
        Field(PBC, False, "", "periodicity along each cell vector"),
        Field(FEATURES, True, "", "per-atom invariant features before the readout"),
        Field(ATOMIC_ENERGY, True, "kcal/mol", "per-atom energy contribution"),
        Field(UNCERTAINTY, False, "method-specific", "uncertainty U(x) of a structure (reduced from atoms)"),
        Field(UNCERTAINTY_ATOM, True, "method-specific", "uncertainty of each atom"),
        Field(ENERGY_VARIANCE, False, "(kcal/mol)^2", "variance of the energy over ensemble members"),
    )
}

#: fields that a labelled structure carries as training targets
TARGETS = (ENERGY, FORCES)
