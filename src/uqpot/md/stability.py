"""Stability criteria of MD trajectories (paper Sec. 2.5), vectorised over replicas in torch.

Every criterion here is optional and configurable (:class:`StabilityCriteria`); the paper's sets for
ammonia and silica (Sec. 2.5) are those systems' own (:meth:`uqpot.systems.base.System.stability_criteria`).
Whatever the configuration, a replica
whose positions, energy, forces or kinetic energy are not finite (NaN or inf) is unstable (reason
``"nonfinite"``): a diverging replica is stopped and counted, never allowed to crash a campaign.

:func:`evaluate` works on a batch of replicas concatenated atom-wise (the layout of
:class:`~uqpot.data.batch.AtomsBatch`) and returns, per replica, whether it failed and the first reason in
the order of :data:`REASONS`, without any host synchronisation.  Minimum distances are taken over the
neighbour-list edges (so periodic images count; the list's cutoff must exceed ``min_distance``); the maximum
distance is taken over explicit within-replica pairs of the named elements (:func:`max_distance_pairs`;
molecules only).  Units: Å, kcal/mol.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from ase.data import atomic_numbers
from pydantic import BaseModel, ConfigDict, Field, field_validator

#: failure reasons, in order of precedence; code 0 is "stable"
REASONS = ("stable", "nonfinite", "collision", "dissociation", "below_ground_state", "kinetic_zero",
           "kinetic_high", "uncertain")  # "uncertain": an uncertainty stop (uqpot.md.checks), not a criterion
REASON_CODE = {name: k for k, name in enumerate(REASONS)}


def _as_z(e) -> int:
    if isinstance(e, str):
        try:
            return atomic_numbers[e]
        except KeyError:
            raise ValueError(f"unknown element {e!r}") from None
    return int(e)


class StabilityCriteria(BaseModel):
    """Which states count as unstable.  ``None`` switches a criterion off; non-finite values always fail.

    * ``min_distance`` (Å): any interatomic distance (periodic images included) below it → ``collision``.
    * ``max_distance`` (Å): any distance between atoms of the element pairs ``max_distance_pairs`` (all
      pairs when that is ``None``) above it → ``dissociation``.  Molecules only.
    * ``min_energy`` (kcal/mol, the model's energy frame): predicted energy below it →
      ``below_ground_state``.
    * ``min_kinetic_energy`` (kcal/mol): kinetic energy ≤ it → ``kinetic_zero`` (the paper: "becomes 0").
    * ``max_kinetic_energy`` (kcal/mol): kinetic energy above it → ``kinetic_high``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_distance: Optional[float] = Field(None, gt=0.0)
    max_distance: Optional[float] = Field(None, gt=0.0)
    max_distance_pairs: Optional[tuple[tuple[int, int], ...]] = None
    min_energy: Optional[float] = None
    min_kinetic_energy: Optional[float] = None
    max_kinetic_energy: Optional[float] = None

    @field_validator("max_distance_pairs", mode="before")
    @classmethod
    def _pairs(cls, v):
        if v is None:
            return None
        return tuple(tuple(sorted((_as_z(a), _as_z(b)))) for a, b in v)

    @property
    def required_cutoff(self) -> float:
        """The neighbour-list cutoff (Å) the distance criteria need."""
        return float(self.min_distance or 0.0)


def max_distance_pairs(criteria: StabilityCriteria, numbers: np.ndarray, n_atoms: np.ndarray,
                       periodic: np.ndarray | None = None) -> np.ndarray:
    """(2, P) int64 global atom indices of the within-replica pairs that ``max_distance`` applies to."""
    if criteria.max_distance is None:
        return np.zeros((2, 0), dtype=np.int64)
    if periodic is not None and np.any(periodic):
        raise ValueError("max_distance applies to molecules; switch it off for periodic systems")
    wanted = None if criteria.max_distance_pairs is None else set(criteria.max_distance_pairs)
    out = []
    start = 0
    for n in np.asarray(n_atoms, dtype=np.int64):
        z = numbers[start:start + n]
        a, b = np.triu_indices(int(n), k=1)
        if wanted is not None:
            keep = np.array([tuple(sorted((int(z[p]), int(z[q])))) in wanted for p, q in zip(a, b)], dtype=bool)
            a, b = a[keep], b[keep]
        out.append(np.stack([a + start, b + start]))
        start += int(n)
    return np.concatenate(out, axis=1).astype(np.int64) if out else np.zeros((2, 0), dtype=np.int64)


def _segment_any(flags: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int32, device=flags.device).index_add(0, index, flags.to(torch.int32)) > 0


def evaluate(criteria: StabilityCriteria, positions: torch.Tensor, batch: torch.Tensor, n_replicas: int, *,
             energy: torch.Tensor | None = None, kinetic_energy: torch.Tensor | None = None,
             forces: torch.Tensor | None = None, edge_index: torch.Tensor | None = None,
             edge_offsets: torch.Tensor | None = None, max_pairs: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per replica: ``(failed (R,) bool, reason (R,) int64)`` with reason codes indexing :data:`REASONS`.

    ``positions`` (N, 3) Å and ``batch`` (N,) replica index of each atom; ``energy`` (R,) and
    ``kinetic_energy`` (R,) kcal/mol; ``forces`` (N, 3); ``edge_index`` (2, E) and ``edge_offsets`` (E, 3)
    (Cartesian image offsets, Å) for the minimum distance; ``max_pairs`` (2, P) for the maximum distance.
    No host synchronisation.
    """
    R = n_replicas
    dev = positions.device
    fails = []  # in the order of REASONS[1:]
    finite = torch.isfinite(positions).all(-1)
    if forces is not None:
        finite = finite & torch.isfinite(forces).all(-1)
    bad = _segment_any(~finite, batch, R)
    if energy is not None:
        bad = bad | ~torch.isfinite(energy)
    if kinetic_energy is not None:
        bad = bad | ~torch.isfinite(kinetic_energy)
    fails.append(bad)
    no = torch.zeros(R, dtype=torch.bool, device=dev)
    # collision
    if criteria.min_distance is not None:
        if edge_index is None:
            raise ValueError("min_distance needs the neighbour-list edges")
        i, j = edge_index[0], edge_index[1]
        vec = positions.index_select(0, j) - positions.index_select(0, i)
        if edge_offsets is not None:
            vec = vec + edge_offsets.to(vec.dtype)
        close = (vec * vec).sum(-1) < criteria.min_distance ** 2
        fails.append(_segment_any(close, batch.index_select(0, i), R))
    else:
        fails.append(no)
    # dissociation
    if criteria.max_distance is not None and max_pairs is not None and max_pairs.shape[1] > 0:
        a, b = max_pairs[0], max_pairs[1]
        vec = positions.index_select(0, b) - positions.index_select(0, a)
        far = (vec * vec).sum(-1) > criteria.max_distance ** 2
        fails.append(_segment_any(far, batch.index_select(0, a), R))
    else:
        fails.append(no)
    # energy below the ground state
    if criteria.min_energy is not None and energy is not None:
        fails.append(energy < criteria.min_energy)
    else:
        fails.append(no)
    # kinetic energy
    if kinetic_energy is not None and criteria.min_kinetic_energy is not None:
        fails.append(kinetic_energy <= criteria.min_kinetic_energy)
    else:
        fails.append(no)
    if kinetic_energy is not None and criteria.max_kinetic_energy is not None:
        fails.append(kinetic_energy > criteria.max_kinetic_energy)
    else:
        fails.append(no)
    stacked = torch.stack(fails, dim=1)  # (R, K)
    failed = stacked.any(1)
    # first failing criterion (argmax of a bool/int tensor returns the first maximum)
    reason = torch.where(failed, stacked.to(torch.int8).argmax(1) + 1, torch.zeros_like(failed, dtype=torch.int64))
    return failed, reason.to(torch.int64)


def check_structure(criteria: StabilityCriteria, positions, numbers, *, cell=None, pbc=False,
                    energy: float | None = None, kinetic_energy: float | None = None,
                    forces=None) -> str:
    """One structure (NumPy, Å, kcal/mol): the failure reason, or ``"stable"``.  Used by the ASE path of a
    campaign, with the same criteria code as the batched engine."""
    from ..data.neighbors import neighbor_list

    positions = np.asarray(positions, dtype=np.float64)
    numbers = np.asarray(numbers, dtype=np.int64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    edge_index = edge_offsets = None
    if criteria.min_distance is not None and np.all(np.isfinite(positions)):
        i, j, s = neighbor_list(positions, cell, pbc, criteria.min_distance * 1.01)
        edge_index = torch.as_tensor(np.stack([i, j]))
        edge_offsets = torch.as_tensor(s.astype(np.float64) @ cell)
    elif criteria.min_distance is not None:
        edge_index = torch.zeros((2, 0), dtype=torch.int64)
    pairs = torch.as_tensor(max_distance_pairs(criteria, numbers, np.array([len(numbers)]),
                                               np.array([pbc.any()])))
    t = lambda v: None if v is None else torch.as_tensor(np.atleast_1d(np.asarray(v, dtype=np.float64)))  # noqa: E731
    failed, reason = evaluate(criteria, torch.as_tensor(positions), torch.zeros(len(numbers), dtype=torch.int64), 1,
                              energy=t(energy), kinetic_energy=t(kinetic_energy),
                              forces=None if forces is None else torch.as_tensor(np.asarray(forces, dtype=np.float64)),
                              edge_index=edge_index, edge_offsets=edge_offsets, max_pairs=pairs)
    return REASONS[int(reason[0])]
