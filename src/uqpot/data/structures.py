"""In-memory labelled structures in uqpot's internal units (Å, kcal/mol, kcal/mol/Å)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core import fields as F
from .neighbors import neighbor_list


@dataclass
class Structure:
    numbers: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) float64, Å
    cell: np.ndarray  # (3, 3) float64, Å (zeros for molecules)
    pbc: np.ndarray  # (3,) bool
    energy: float | None = None  # kcal/mol
    forces: np.ndarray | None = None  # (n, 3) kcal/mol/Å
    source: str | None = None  # file the structure was read from
    frame: int | None = None  # its index in that file
    info: dict = field(default_factory=dict)
    stress: np.ndarray | None = None  # (3, 3) kcal/mol/Å³, σ = (1/V) ∂E/∂ε (ASE's sign); periodic frames only

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def periodic(self) -> bool:
        return bool(np.any(self.pbc))

    @classmethod
    def from_atoms(cls, atoms, energy=None, forces=None, source=None, frame=None) -> "Structure":
        return cls(
            numbers=np.asarray(atoms.numbers, dtype=np.int64).copy(),
            positions=np.asarray(atoms.positions, dtype=np.float64).copy(),
            cell=np.asarray(atoms.cell.array, dtype=np.float64).copy(),
            pbc=np.asarray(atoms.pbc, dtype=bool).copy(),
            energy=None if energy is None else float(energy),
            forces=None if forces is None else np.asarray(forces, dtype=np.float64).copy(),
            source=source,
            frame=frame,
            info={k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str, np.integer, np.floating))},
        )

    def to_atoms(self):
        """An ``ase.Atoms``; energy, forces and stress (if any) are attached in kcal/mol, kcal/mol/Å and
        kcal/mol/Å³."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info.update(self.info)
        results = {}
        if self.energy is not None:
            results[F.ENERGY] = self.energy
        if self.forces is not None:
            results[F.FORCES] = self.forces
        if self.stress is not None:
            results[F.STRESS] = self.stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]  # ASE's Voigt order
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def where(self) -> str:
        return f"{self.source}: frame {self.frame}" if self.source is not None else f"frame {self.frame}"


class StructureDataset:
    """A list of structures with neighbour lists computed once per cutoff and cached."""

    def __init__(self, structures: list[Structure]):
        self.structures = list(structures)
        self._neighbors: dict[float, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index):
        if isinstance(index, (slice, list, np.ndarray)):
            idx = range(len(self))[index] if isinstance(index, slice) else index
            return self.subset(idx)
        return self.structures[index]

    def __iter__(self):
        return iter(self.structures)

    def subset(self, indices) -> "StructureDataset":
        indices = [int(i) for i in indices]
        sub = StructureDataset([self.structures[i] for i in indices])
        for cutoff, lists in self._neighbors.items():
            sub._neighbors[cutoff] = [lists[i] for i in indices]
        return sub

    def __add__(self, other: "StructureDataset") -> "StructureDataset":
        return StructureDataset(self.structures + other.structures)

    def neighbors(self, cutoff: float):
        """Neighbour lists of every structure for ``cutoff`` (computed once, then cached)."""
        key = float(cutoff)
        if key not in self._neighbors:
            self._neighbors[key] = [
                neighbor_list(s.positions, s.cell, s.pbc, key) for s in self.structures
            ]
        return self._neighbors[key]

    @property
    def has_energy(self) -> bool:
        return all(s.energy is not None for s in self.structures)

    @property
    def has_forces(self) -> bool:
        return all(s.forces is not None for s in self.structures)

    def energies(self) -> np.ndarray:
        return np.array([s.energy for s in self.structures], dtype=np.float64)

    def elements(self) -> list[int]:
        return sorted({int(z) for s in self.structures for z in s.numbers})
