"""The state of a batched MD run: every live replica's atoms in one set of tensors, and
:meth:`ReplicaState.select` to keep some of them (failed replicas leave, the batch shrinks).

Per atom: positions ``x`` (Å), velocities ``v`` (Å/fs), forces ``f`` (kcal/mol/Å), ``masses`` (amu),
``numbers``; per replica: ``n_atoms``, ``cell`` (Å), ``pbc``, ``kT`` (kcal/mol), ``seeds``, ``ndof`` (3N),
energy ``e`` (kcal/mol, float64), uncertainty ``u`` (the method's unit, or None), kinetic energy ``ke``,
the first failing step ``fail_step`` (−1 while alive) and its ``reason`` code; ``slots`` maps each row to
its replica record.  Derived: ``batch`` (replica of each atom), ``local_index`` (atom index within its
replica) and ``inv_m_acc`` (F → acceleration, Å/fs² per kcal/mol/Å).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.units import FORCE_TO_ACCELERATION, KB_KCAL_PER_MOL_K, MV2_TO_KCAL_PER_MOL


def maxwell_boltzmann(masses: np.ndarray, temperature_K: float, seed: int, remove_com: bool = True) -> np.ndarray:
    """Velocities (n, 3) Å/fs from a Maxwell-Boltzmann distribution: the draw of ASE's
    ``thermalize_momenta(atoms, temperature_K=T, rng=np.random.default_rng(seed))`` (same numbers), then
    (``remove_com``) the centre-of-mass velocity subtracted (ASE's ``Stationary`` without its rescaling to
    the previous temperature)."""
    rng = np.random.default_rng(seed)
    m = np.asarray(masses, dtype=np.float64)[:, None]
    kT = KB_KCAL_PER_MOL_K * float(temperature_K)
    v = rng.standard_normal(size=(len(m), 3)) * np.sqrt(kT * FORCE_TO_ACCELERATION / m)
    if remove_com:
        v = v - (m * v).sum(0) / m.sum()
    return v


class ReplicaState:
    PER_ATOM = ("x", "v", "f", "masses", "numbers")
    PER_REPLICA = ("n_atoms", "cell", "pbc", "kT", "seeds", "ndof", "fail_step", "reason", "e", "ke")
    #: what changes along a trajectory (kept by a snapshot for an exact replay)
    DYNAMIC = ("x", "v", "f", "e", "u", "fail_step", "reason", "ke")
    force_to_acc = FORCE_TO_ACCELERATION

    def __init__(self, *, x, v, masses, numbers, n_atoms, cell, pbc, temperatures_K, seeds, dt: float, dtype,
                 device):
        t = lambda a, d=dtype: torch.as_tensor(np.asarray(a), dtype=d, device=device)  # noqa: E731
        self.dtype, self.device, self.dt = dtype, device, float(dt)
        R = len(n_atoms)
        self.slots = list(range(R))
        self.n_atoms = torch.as_tensor(np.asarray(n_atoms, dtype=np.int64), device=device)
        self.numbers = torch.as_tensor(np.asarray(numbers), device=device)
        self.masses = t(masses)
        self.x, self.v = t(x), t(v)
        self.cell = t(cell)
        self.pbc = torch.as_tensor(np.asarray(pbc), device=device)
        self.kT = t(KB_KCAL_PER_MOL_K * np.asarray(temperatures_K, dtype=np.float64))
        self.seeds = torch.as_tensor(np.asarray(seeds, dtype=np.int64), device=device)
        self.ndof = t(3.0 * np.asarray(n_atoms, dtype=np.float64))
        self.fail_step = torch.full((R,), -1, dtype=torch.int64, device=device)
        self.reason = torch.zeros(R, dtype=torch.int64, device=device)
        self.f = torch.zeros_like(self.x)
        self.e = torch.zeros(R, dtype=torch.float64, device=device)
        self.ke = torch.zeros(R, dtype=dtype, device=device)
        self.u = None
        self.derive()

    @property
    def n_replicas(self) -> int:
        return len(self.slots)

    def derive(self) -> None:
        """Batch index, local atom index and F → a factors of the current rows."""
        n = self.n_atoms
        self.batch = torch.repeat_interleave(torch.arange(len(self.slots), device=self.device), n)
        starts = torch.cumsum(n, 0) - n
        self.local_index = torch.arange(self.batch.shape[0], device=self.device) - starts[self.batch]
        self.inv_m_acc = (FORCE_TO_ACCELERATION / self.masses).unsqueeze(-1)  # (N, 1): F → a

    def ke2(self) -> torch.Tensor:
        """Σ m v² per replica (kcal/mol), i.e. 2 × kinetic energy."""
        mv2 = self.masses * (self.v * self.v).sum(-1)
        return torch.zeros(len(self.slots), dtype=self.dtype, device=self.device).index_add(
            0, self.batch, mv2) * MV2_TO_KCAL_PER_MOL

    def host_ranges(self) -> list[slice]:
        """Each row's atoms as a slice (host)."""
        n = self.n_atoms.cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        return [slice(int(a), int(a + k)) for a, k in zip(starts, n)]

    def select(self, keep: np.ndarray) -> torch.Tensor:
        """Keeps the rows where ``keep`` (bool, host) is true; returns their indices (device), for the
        integrator's and the checks' own per-replica state."""
        rows = torch.as_tensor(np.nonzero(keep)[0], device=self.device)
        atom_keep = torch.as_tensor(np.repeat(keep, self.n_atoms.cpu().numpy()), device=self.device)
        atoms = torch.nonzero(atom_keep).flatten()
        for name in self.PER_ATOM:
            setattr(self, name, getattr(self, name).index_select(0, atoms).contiguous())
        for name in self.PER_REPLICA:
            setattr(self, name, getattr(self, name).index_select(0, rows))
        if self.u is not None:
            self.u = self.u.index_select(0, rows)
        self.slots = [s for s, k in zip(self.slots, keep) if k]
        self.derive()
        return rows

    def snapshot(self) -> dict:
        return {k: (None if getattr(self, k) is None else getattr(self, k).clone()) for k in self.DYNAMIC}

    def restore(self, snap: dict) -> None:
        for k in self.DYNAMIC:
            setattr(self, k, snap[k])
