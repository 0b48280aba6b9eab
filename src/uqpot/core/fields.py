"""The one registry of field names used across uqpot.

Every module refers to data by these names (data layer, model outputs, losses, metrics, reports), so a
field is renamed or added in exactly one place.  Each field has a *kind*: per atom (its first axis runs over
the atoms of a batch) or per structure (over its structures), and a unit.  Units are those used *inside*
uqpot: energies in kcal/mol, lengths in Å, forces in kcal/mol/Å (the paper's units).

Model outputs follow two conventions, so that no consumer guesses from a tensor's shape:

* ``<prop>_members``: the values of every member (ensemble members, shallow-ensemble heads) with a leading
  member axis (K, ...) before the atom or structure axis; registered by :func:`members_of`;
* ``<prop>_variance``: a variance of ``<prop>`` (same kind, squared unit); registered by :func:`variance_of`.

A module that produces a new output key registers it (:func:`register`) where it is computed; consumers
(:mod:`uqpot.evaluation.predict`, evaluation, reports) read its kind with :func:`get`, which refuses unregistered keys.
"""

from __future__ import annotations

from dataclasses import dataclass

ATOM, STRUCTURE = "atom", "structure"


@dataclass(frozen=True)
class Field:
    name: str
    per_atom: bool
    unit: str
    doc: str
    #: a leading member axis (K, ...) before the atom/structure axis (``<prop>_members``)
    members: bool = False

    @property
    def kind(self) -> str:
        return ATOM if self.per_atom else STRUCTURE

    @property
    def axis(self) -> int:
        """The axis that runs over atoms (per-atom fields) or structures (per-structure fields)."""
        return 1 if self.members else 0


FIELDS: dict[str, Field] = {}


def register(name: str, per_atom: bool, unit: str, doc: str, members: bool = False) -> str:
    """Adds a field (idempotent for the same definition; a different definition of a registered name is an
    error) and returns its name."""
    new = Field(name, bool(per_atom), unit, doc, bool(members))
    old = FIELDS.get(name)
    if old is not None and (old.per_atom, old.unit, old.members) != (new.per_atom, new.unit, new.members):
        raise ValueError(f"field {name!r} is already registered as {old}; cannot redefine it as {new}")
    FIELDS.setdefault(name, new)
    return name


def get(name: str) -> Field:
    try:
        return FIELDS[name]
    except KeyError:
        raise KeyError(f"output key {name!r} is not registered in uqpot.core.fields (the module that computes it "
                       "registers it with uqpot.core.fields.register)") from None


def members_of(prop: str, doc: str = "") -> str:
    """``<prop>_members``: ``prop`` of every member, with a leading member axis."""
    base = get(prop)
    return register(f"{prop}_members", base.per_atom, base.unit, doc or f"{prop} of every member (K, ...)",
                    members=True)


def _squared(unit: str) -> str:
    return f"({unit})^2" if unit and unit != "method-specific" else unit


def variance_of(prop: str, doc: str = "") -> str:
    """``<prop>_variance``: a variance of ``prop`` (same kind, squared unit)."""
    base = get(prop)
    return register(f"{prop}_variance", base.per_atom, _squared(base.unit), doc or f"variance of {prop}")


ENERGY = register("energy", False, "kcal/mol", "total potential energy of a structure")
FORCES = register("forces", True, "kcal/mol/Å", "forces on atoms, F = -dE/dr")
POSITIONS = register("positions", True, "Å", "Cartesian coordinates")
NUMBERS = register("numbers", True, "", "atomic numbers")
CELL = register("cell", False, "Å", "cell vectors as rows (3x3)")
PBC = register("pbc", False, "", "periodicity along each cell vector")
FEATURES = register("features", True, "", "per-atom invariant features before the readout")
ATOMIC_ENERGY = register("atomic_energy", True, "kcal/mol", "per-atom energy contribution (without references)")
ENERGY_RESIDUAL = register("energy_residual", False, "kcal/mol",
                           "energy without the per-element reference energies (what the network predicts)")
UNCERTAINTY = register("uncertainty", False, "method-specific", "uncertainty U(x) of a structure (reduced from atoms)")
UNCERTAINTY_ATOM = register("uncertainty_atom", True, "method-specific", "uncertainty of each atom")
ENERGY_VARIANCE = variance_of(ENERGY, "variance of the energy (over members, or a posterior's)")
FORCES_VARIANCE = variance_of(FORCES, "variance of the forces: per component (N, 3) or isotropic per atom (N,)")
ENERGY_MEMBERS = members_of(ENERGY)
FORCES_MEMBERS = members_of(FORCES)
#: σ = (1/V) ∂E/∂ε with ε the symmetric strain (ASE's convention and sign), per structure (B, 3, 3)
STRESS = register("stress", False, "kcal/mol/Å³", "stress of a periodic structure, σ = (1/V) ∂E/∂ε, 3x3")
STRESS_VARIANCE = variance_of(STRESS, "variance of the stress components (over members)")
STRESS_MEMBERS = members_of(STRESS)
#: the zero symmetric strain ε that the stress differentiates at (internal: methods differentiate their own
#: outputs w.r.t. it, e.g. LLPR's stress variance)
STRAIN = register("strain", False, "", "zero strain of a stress evaluation (internal), (M, B, 3, 3)")
ATOMIC_ENERGY_MEMBERS = members_of(ATOMIC_ENERGY)
FEATURES_MEMBERS = members_of(FEATURES)

#: fields that a labelled structure carries as training targets
TARGETS = (ENERGY, FORCES)
