"""Neighbour lists (vesin) for molecules and periodic cells.

Full lists: every pair appears as (i, j) and (j, i).  For a periodic cell the integer shift S of the image
is returned so that the model recomputes the pair vector from positions, r_ij = r_j - r_i + S·cell, and
forces flow through positions by autograd.  vesin handles cells smaller than twice the cutoff, where an atom
sees several images of its neighbours and of itself.

vesin's cell list for a molecule spans the bounding box in cells of the cutoff's size; when the box is more
than about 1e5 cutoffs long its cell arithmetic divides by zero and the process dies with SIGFPE (one atom
1e5 Å away and a 0.5 Å cutoff is enough).  Such molecules go to a k-d tree instead (exact, any extent);
input validation rejects coordinates beyond ``MAX_COORDINATE`` before they get here.
"""

from __future__ import annotations

import numpy as np
import vesin

#: bounding-box length / cutoff beyond which a molecule's pairs come from a k-d tree, not vesin
MAX_CELLS_PER_AXIS = 10_000


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray | None, pbc, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within ``cutoff`` (Å).

    Returns ``(i, j, shifts)`` with ``i, j`` int64 arrays of atom indices and ``shifts`` an (n_pairs, 3)
    int64 array of cell-image shifts (zeros for molecules).  The self pair (i, i) with zero shift is never
    included; periodic images of an atom itself are.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    box = np.zeros((3, 3)) if cell is None else np.ascontiguousarray(cell, dtype=np.float64)
    if not pbc.any():
        box = np.zeros((3, 3))
        if len(positions) > 1 and np.ptp(positions, axis=0).max() > MAX_CELLS_PER_AXIS * float(cutoff):
            return _kdtree_pairs(positions, float(cutoff))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = calculator.compute(positions, box, [bool(p) for p in pbc], quantities="ijS")
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    s = s.astype(np.int64).reshape(-1, 3)
    # deterministic order: by centre atom, then neighbour, then shift
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))
    return i[order], j[order], s[order]


def _kdtree_pairs(positions: np.ndarray, cutoff: float):
    """A molecule's full pair list within ``cutoff`` from a k-d tree (for extents vesin cannot grid)."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(positions).query_pairs(cutoff, output_type="ndarray").astype(np.int64).reshape(-1, 2)
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.lexsort((j, i))
    return i[order], j[order], np.zeros((len(i), 3), dtype=np.int64)


def pair_vectors(positions: np.ndarray, cell: np.ndarray | None, i, j, shifts) -> np.ndarray:
    """r_ij = r_j - r_i + S·cell (NumPy; the model has its own differentiable version)."""
    vec = positions[j] - positions[i]
    if cell is not None and len(shifts):
        vec = vec + shifts @ np.asarray(cell)
    return vec
