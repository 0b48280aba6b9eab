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
    stress: torch.Tensor | None = None  # (B, 3, 3) kcal/mol/Å³, when every structure carries one
    periodic: bool = False
    # dense layout (molecules only): every pair of atoms within a structure, on a padded (B, n, n) grid
    dense_index: torch.Tensor | None = None  # (N,) int64: slot b * n + k of each atom in the padded grid
    pair_mask: torch.Tensor | None = None  # (B, n, n) bool: True for the pairs (i, j) of two real atoms, i != j

    @property
    def dense(self) -> bool:
        return self.dense_index is not None

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


#: the layouts of the pair list: "sparse" (edge list within the cutoff), "dense" (all pairs of a structure
#: on a padded grid, molecules only) or "auto" (dense where it is allowed and cheap, see ``choose_layout``)
LAYOUTS = ("auto", "sparse", "dense")
#: "auto" picks the dense layout for molecules of at most this many atoms
DENSE_MAX_ATOMS = 32


def choose_layout(layout: str, periodic: bool, max_atoms: int) -> str:
    """The layout to use for structures with these properties.

    The dense layout evaluates every pair of a structure (masked beyond the cutoff by the cutoff function),
    so it costs n² pairs per structure against the edge count of the sparse list; it replaces gathers and
    scatters by broadcasts and sums and gives the same results to float tolerance.  It exists for molecules
    only: periodic images need the sparse list."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "dense" and periodic:
        raise ValueError("the dense layout is for molecules; periodic structures need layout 'sparse'")
    if layout == "auto":
        return "dense" if not periodic and max_atoms <= DENSE_MAX_ATOMS else "sparse"
    return layout


def dense_layout(n_atoms: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``dense_index`` (N,) and ``pair_mask`` (B, n, n) for structures of ``n_atoms`` atoms; the grid size
    n defaults to the largest structure."""
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    n = (int(n_atoms.max()) if len(n_atoms) else 0) if n is None else int(n)
    slot = np.concatenate([np.arange(k) for k in n_atoms]) if len(n_atoms) else np.zeros(0, np.int64)
    index = np.repeat(np.arange(len(n_atoms)), n_atoms) * n + slot
    real = np.arange(n)[None, :] < n_atoms[:, None]  # (B, n)
    mask = real[:, :, None] & real[:, None, :] & ~np.eye(n, dtype=bool)[None]
    return index.astype(np.int64), mask


def collate(
    structures: list[Structure],
    neighbors: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    cutoff: float | None = None,
    dtype="float32",
    device=None,
    layout: str = "sparse",
) -> AtomsBatch:
    """Concatenates structures into an :class:`AtomsBatch`.

    ``neighbors`` are precomputed lists (i, j, shifts) per structure; without them they are computed with
    ``cutoff``.  ``layout`` "dense" (or "auto", see :func:`choose_layout`) adds the padded all-pairs grid
    that the model then uses instead of the edge list.
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
    has_s = all(getattr(s, "stress", None) is not None for s in structures)
    dt = as_dtype(dtype)
    t = lambda a, d=dt: torch.as_tensor(a, dtype=d, device=device)  # noqa: E731
    dense = {}
    if choose_layout(layout, bool(pbc.any()), int(n_atoms.max()) if len(n_atoms) else 0) == "dense":
        index, mask = dense_layout(n_atoms)
        dense = dict(dense_index=t(index, torch.int64), pair_mask=t(mask, torch.bool))
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
        stress=t(np.stack([s.stress for s in structures])) if has_s else None,
        periodic=bool(pbc.any()),
        **dense,
    )


def collate_dataset(dataset: StructureDataset, indices, cutoff: float, dtype="float32", device=None,
                    layout: str = "sparse") -> AtomsBatch:
    """Batch of ``dataset[indices]`` using the dataset's cached neighbour lists."""
    nbrs = dataset.neighbors(cutoff)
    idx = [int(i) for i in indices]
    return collate([dataset.structures[i] for i in idx], [nbrs[i] for i in idx], dtype=dtype, device=device,
                   layout=layout)


def dataset_layout(dataset: StructureDataset, layout: str) -> str:
    """``layout`` resolved for a whole data set ("auto": dense for small molecules, else sparse), so that
    every batch of one run has the same layout."""
    if layout == "sparse":
        return layout
    periodic = any(bool(np.any(s.pbc)) for s in dataset.structures)
    max_atoms = max((s.n_atoms for s in dataset.structures), default=0)
    return choose_layout(layout, periodic, max_atoms)


#: the most atoms in one batch of an inference pass (prediction, post-hoc fits, reference shifts): a batch of
#: ``batch_size`` large cells is split so that memory stays bounded whatever the structures' size (64 cells of
#: 192 atoms through SevenNet-0 with forces took more than 21 GB and were killed; batches of 2048 atoms peaked at
#: 9.3 GB for the whole process).  Outputs are per structure, so the split changes no result; training batches
#: are never split (their size is a setting).
INFERENCE_MAX_ATOMS = 1024


def _chunks(dataset: StructureDataset, order: np.ndarray, batch_size: int, max_atoms: int | None):
    """``order`` cut into batches of at most ``batch_size`` structures and (with ``max_atoms``) at most that
    many atoms, a structure larger than ``max_atoms`` alone."""
    if max_atoms is None:
        yield from (order[k:k + batch_size] for k in range(0, len(order), batch_size))
        return
    start, atoms = 0, 0
    for k, i in enumerate(order):
        n = dataset.structures[int(i)].n_atoms
        if k > start and (k - start >= batch_size or atoms + n > max_atoms):
            yield order[start:k]
            start, atoms = k, 0
        atoms += n
    if start < len(order):
        yield order[start:]


def iterate_batches(dataset: StructureDataset, batch_size: int, cutoff: float, dtype="float32", device=None,
                    shuffle: bool = False, generator: np.random.Generator | None = None, layout: str = "sparse",
                    max_atoms: int | None = None):
    """Yields ``(indices, AtomsBatch)`` over the dataset: ``batch_size`` structures per batch, and at most
    ``max_atoms`` atoms where given (inference passes: :data:`INFERENCE_MAX_ATOMS`)."""
    n = len(dataset)
    order = generator.permutation(n) if shuffle else np.arange(n)
    layout = dataset_layout(dataset, layout)
    for idx in _chunks(dataset, order, batch_size, max_atoms):
        yield idx, collate_dataset(dataset, idx, cutoff, dtype=dtype, device=device, layout=layout)
