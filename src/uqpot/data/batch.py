"""``AtomsBatch``: structures concatenated atom-wise with a batch index, plus their neighbour lists.

Neighbour lists and dtype/device casts are done here, in the data layer; the model only gathers and
scatters.  Pair vectors are recomputed inside the forward pass from positions and the Cartesian image
offsets (r_ij = r_j - r_i + S·cell), so forces come from positions by autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from .structures import Structure, StructureDataset
from .neighbors import neighbor_list

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: absolute energies (~1e5 kcal/mol for DFT) exceed float32's resolution: they stay float64 in every batch
_KEEP_FLOAT64 = ("energy",)


def as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32 or float64") from None


@dataclass
class AtomsBatch:
    numbers: torch.Tensor  # (N,) int64
    positions: torch.Tensor  # (N, 3)
    cell: torch.Tensor  # (B, 3, 3)
    pbc: torch.Tensor  # (B, 3) bool
    batch: torch.Tensor  # (N,) int64: structure index of each atom
    n_atoms: torch.Tensor  # (B,) int64
    edge_index: torch.Tensor  # (2, E) int64: row 0 centre atom i, row 1 neighbour j
    cell_shifts: torch.Tensor  # (E, 3) integer image shifts S (stored as float)
    num_structures: int
    energy: torch.Tensor | None = None  # (B,) kcal/mol, always float64
    forces: torch.Tensor | None = None  # (N, 3) kcal/mol/Å
    periodic: bool = False

    def to(self, device=None, dtype=None) -> "AtomsBatch":
        """A copy on ``device``; floating tensors cast to ``dtype``."""
        dtype = as_dtype(dtype) if dtype is not None else None
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                if dtype is not None and v.is_floating_point() and f.name not in _KEEP_FLOAT64:
                    v = v.to(device=device, dtype=dtype)
                else:
                    v = v.to(device=device)
            out[f.name] = v
        return AtomsBatch(**out)

    def with_positions(self, positions: torch.Tensor) -> "AtomsBatch":
        return replace(self, positions=positions)

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    def edge_offsets(self) -> torch.Tensor:
        """Cartesian image offsets S·cell of every edge (zeros for molecules)."""
        if not self.periodic:
            return torch.zeros_like(self.cell_shifts)
        cell_of_edge = self.cell[self.batch[self.edge_index[0]]]
        return torch.einsum("ek,ekc->ec", self.cell_shifts, cell_of_edge)


def collate(
    structures: list[Structure],
    neighbors: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    cutoff: float | None = None,
    dtype="float32",
    device=None,
) -> AtomsBatch:
    """Concatenates structures into an :class:`AtomsBatch`.

    ``neighbors`` are precomputed lists (i, j, shifts) per structure; without them they are computed with
    ``cutoff``.
    """
    if neighbors is None:
        if cutoff is None:
            raise ValueError("collate needs neighbour lists or a cutoff")
        neighbors = [neighbor_list(s.positions, s.cell, s.pbc, cutoff) for s in structures]
    n_atoms = np.array([s.n_atoms for s in structures], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    numbers = np.concatenate([s.numbers for s in structures])
    positions = np.concatenate([s.positions for s in structures])
    cells = np.stack([s.cell for s in structures])
    pbc = np.stack([s.pbc for s in structures])
    batch = np.repeat(np.arange(len(structures)), n_atoms)
    ei = np.concatenate([nb[0] + off for nb, off in zip(neighbors, offsets)])
    ej = np.concatenate([nb[1] + off for nb, off in zip(neighbors, offsets)])
    shifts = np.concatenate([nb[2] for nb in neighbors]).reshape(-1, 3)
    has_e = all(s.energy is not None for s in structures)
    has_f = all(s.forces is not None for s in structures)
    dt = as_dtype(dtype)
    t = lambda a, d=dt: torch.as_tensor(a, dtype=d, device=device)  # noqa: E731
    return AtomsBatch(
        numbers=t(numbers, torch.int64),
        positions=t(positions),
        cell=t(cells),
        pbc=t(pbc, torch.bool),
        batch=t(batch, torch.int64),
        n_atoms=t(n_atoms, torch.int64),
        edge_index=t(np.stack([ei, ej]), torch.int64),
        cell_shifts=t(shifts),
        num_structures=len(structures),
        energy=t(np.array([s.energy for s in structures]), torch.float64) if has_e else None,
        forces=t(np.concatenate([s.forces for s in structures])) if has_f else None,
        periodic=bool(pbc.any()),
    )


def collate_dataset(dataset: StructureDataset, indices, cutoff: float, dtype="float32", device=None) -> AtomsBatch:
    """Batch of ``dataset[indices]`` using the dataset's cached neighbour lists."""
    nbrs = dataset.neighbors(cutoff)
    idx = [int(i) for i in indices]
    return collate([dataset.structures[i] for i in idx], [nbrs[i] for i in idx], dtype=dtype, device=device)


def iterate_batches(dataset: StructureDataset, batch_size: int, cutoff: float, dtype="float32", device=None,
                    shuffle: bool = False, generator: np.random.Generator | None = None):
    """Yields ``(indices, AtomsBatch)`` over the dataset."""
    n = len(dataset)
    order = generator.permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield idx, collate_dataset(dataset, idx, cutoff, dtype=dtype, device=device)
