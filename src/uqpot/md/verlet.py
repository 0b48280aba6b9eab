"""Neighbour lists of the batched MD engine: a Verlet list with a skin, its validity test, replays and the
padding that gives a compiled model static shapes.

Lists are built (with vesin, on the host) with cutoff + ``skin`` and are valid as long as no atom moved more
than skin/2 since the build.  To avoid a per-step host transfer the displacement test runs on the device
every step (:meth:`VerletList.track`) and its running maximum is read only at the engine's periodic sync.  If
it crossed skin/2 anywhere in the block, the engine replays the block from a snapshot of its start with a
fresh list and a per-step host check (:meth:`VerletList.check_now`, the classic algorithm), so results are
exactly those of a list checked every step.  To make replays rare, the list is also rebuilt at a sync when
the largest displacement plus 1.5 × the largest single-atom movement of the last block would reach skin/2
(:meth:`VerletList.at_sync`), and with ``adapt_skin`` a replayed block grows the skin to 4 × the largest
movement in a block (at most the cutoff).  Atoms are wrapped into periodic cells at every build.  Edges
beyond the cutoff contribute exact zeros (the models' cutoff functions vanish there), so the skin changes
no result.

On the dense layout (molecules) the list holds every pair of a replica: it never goes stale (no skin, no
rebuilds), and the stability checks see every distance.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..data.batch import AtomsBatch, dense_layout
from ..data.neighbors import neighbor_list

log = logging.getLogger(__name__)


class VerletList:
    """The pair list of a :class:`~uqpot.md.state.ReplicaState`.  ``layout``: "sparse" (Verlet list) or
    "dense"; ``capacity``: (atoms, replicas, atoms per replica) to pad every model input to (compiled model),
    or None."""

    def __init__(self, cutoff: float, skin: float, *, layout: str, model_dtype, adapt_skin: bool = True,
                 capacity=None):
        self.cutoff, self.skin, self.adapt_skin = float(cutoff), float(skin), bool(adapt_skin)
        self.layout, self.model_dtype, self.capacity = layout, model_dtype, capacity
        self.builds = 0
        self.replays = 0

    # ------------------------------------------------------------------ building
    def wrap(self, st) -> None:
        """Wraps atoms of periodic replicas into their cell (in place)."""
        per = st.pbc.any(1)
        if not bool(per.any()):
            return
        eye = torch.eye(3, dtype=st.dtype, device=st.device).expand_as(st.cell)
        cell = torch.where(per.view(-1, 1, 1), st.cell, eye)
        inv = torch.linalg.inv(cell)
        ca, ia = cell[st.batch], inv[st.batch]
        frac = torch.einsum("ni,nij->nj", st.x, ia)
        frac = torch.where(st.pbc[st.batch], frac - torch.floor(frac), frac)
        st.x.copy_(torch.einsum("ni,nij->nj", frac, ca))

    def build(self, st) -> None:
        """Lists with cutoff + skin at the current positions (host, vesin); resets the reference."""
        self.wrap(st)
        x = st.x.detach().to(torch.float64).cpu().numpy()
        cells = st.cell.to(torch.float64).cpu().numpy()
        pbc = st.pbc.cpu().numpy()
        n = st.n_atoms.cpu().numpy()
        dense = {}
        if self.layout == "dense":
            index, mask = dense_layout(n)
            dense = dict(dense_index=torch.as_tensor(index, device=st.device),
                         pair_mask=torch.as_tensor(mask, device=st.device))
            r, i, j = np.nonzero(mask)
            start = (np.cumsum(n) - n)[r]
            ei, ej, sh = [i + start], [j + start], [np.zeros((len(r), 3), dtype=np.int64)]
        else:
            ei, ej, sh = self._lists(x, cells, pbc, n)
        edge_index = torch.as_tensor(np.stack([np.concatenate(ei), np.concatenate(ej)]).astype(np.int64),
                                     device=st.device)
        shifts = torch.as_tensor(np.concatenate(sh).reshape(-1, 3), dtype=self.model_dtype, device=st.device)
        self.batch = AtomsBatch(numbers=st.numbers, positions=st.x, cell=st.cell.to(self.model_dtype),
                                pbc=st.pbc, batch=st.batch, n_atoms=st.n_atoms, edge_index=edge_index,
                                cell_shifts=shifts, num_structures=len(n), periodic=bool(pbc.any()), **dense)
        self.edge_offsets = self.batch.edge_offsets().to(st.dtype) if self.batch.periodic else None
        self.model_batch = self._padded(self.batch, st.device) if self.capacity is not None else self.batch
        self.x_ref = st.x.clone()
        self.dmax2 = torch.zeros((), dtype=st.dtype, device=st.device)
        self.builds += 1

    def _lists(self, x, cells, pbc, n):
        """Per-replica lists (i, j, shifts) with cutoff + skin, atom indices offset into the batch."""
        rc = self.cutoff + self.skin
        ei, ej, sh = [], [], []
        start = 0
        for r in range(len(n)):
            sl = slice(start, start + int(n[r]))
            if np.all(np.isfinite(x[sl])):
                i, j, s = neighbor_list(x[sl], cells[r], pbc[r], rc)
            else:  # a diverged replica awaiting removal: no edges
                i = j = np.zeros(0, dtype=np.int64)
                s = np.zeros((0, 3), dtype=np.int64)
            ei.append(i + start)
            ej.append(j + start)
            sh.append(s)
            start += int(n[r])
        return ei, ej, sh

    def _padded(self, b: AtomsBatch, dev) -> AtomsBatch:
        """``b`` on the dense layout padded to the starting numbers of atoms and replicas (static shapes for
        the compiled model).  Padding atoms sit in padding structures of at least one atom each, with no
        pairs: they interact with nothing, and their outputs are dropped."""
        n_cap, b_cap, n_max = self.capacity
        N, B = len(b.numbers), b.num_structures
        n_pad, b_pad = n_cap - N, b_cap - B  # every removed replica had 1..n_max atoms
        sizes = np.ones(b_pad, dtype=np.int64)
        extra = n_pad - b_pad
        for k in range(b_pad):
            take = min(extra, n_max - 1)
            sizes[k] += take
            extra -= take
        n_atoms = np.concatenate([b.n_atoms.cpu().numpy(), sizes])
        index, mask = dense_layout(n_atoms, n_max)
        mask[B:] = False
        pad_z = b.numbers[:1].expand(n_pad)
        return AtomsBatch(
            numbers=torch.cat([b.numbers, pad_z]), positions=b.positions,
            cell=torch.cat([b.cell, torch.eye(3, dtype=b.cell.dtype, device=dev).expand(b_pad, 3, 3)]),
            pbc=torch.cat([b.pbc, torch.zeros(b_pad, 3, dtype=torch.bool, device=dev)]),
            batch=torch.as_tensor(np.repeat(np.arange(b_cap), n_atoms), device=dev),
            n_atoms=torch.as_tensor(n_atoms, device=dev),
            edge_index=torch.zeros(2, 0, dtype=torch.int64, device=dev),
            cell_shifts=torch.zeros(0, 3, dtype=b.cell_shifts.dtype, device=dev), num_structures=b_cap,
            periodic=False, dense_index=torch.as_tensor(index, device=dev),
            pair_mask=torch.as_tensor(mask, device=dev))

    def model_input(self, x: torch.Tensor) -> AtomsBatch:
        """The model's input at positions ``x`` (in the model's dtype), padded to the capacity if any."""
        if self.capacity is not None:
            x = torch.cat([x, x.new_zeros(self.capacity[0] - x.shape[0], 3)])
            return self.model_batch.with_positions(x)
        return self.batch.with_positions(x)

    # ------------------------------------------------------------------ validity
    def track(self, st) -> None:
        """The running maximum of the squared displacement since the build over live replicas (device)."""
        ok = (st.fail_step < 0)[st.batch]
        d2 = ((st.x - self.x_ref) ** 2).sum(-1)
        d2 = torch.where(ok & torch.isfinite(d2), d2, torch.zeros((), dtype=st.dtype, device=st.device))
        self.dmax2 = torch.maximum(self.dmax2, d2.max())

    def check_now(self, st) -> None:
        """The classic per-step test (a host sync): rebuild if an atom moved more than skin/2."""
        ok = (st.fail_step < 0)[st.batch]
        d2 = torch.where(ok, ((st.x - self.x_ref) ** 2).sum(-1), torch.zeros((), dtype=st.dtype, device=st.device))
        if float(torch.nan_to_num(d2, nan=0.0).max()) > (0.5 * self.skin) ** 2:
            self.build(st)

    def block_stats(self, st, x_start: torch.Tensor) -> np.ndarray:
        """(max squared displacement from the reference over the block, the same now, max squared movement
        since ``x_start``) over live replicas, on the host: the one transfer of a block."""
        ok = (st.fail_step < 0)[st.batch]
        zero = torch.zeros((), dtype=st.dtype, device=st.device)

        def masked_max(d2):
            return torch.where(ok, d2, zero).nan_to_num(0.0).max() if d2.numel() else zero

        now = masked_max(((st.x - self.x_ref) ** 2).sum(-1))
        move = masked_max(((st.x - x_start) ** 2).sum(-1))
        return torch.stack([self.dmax2, now, move]).cpu().numpy()

    def went_stale(self, info: np.ndarray, block: int) -> bool:
        """Whether the block must be replayed (sparse lists only); grows the skin first if adaptive."""
        if self.layout != "sparse" or info[0] <= (0.5 * self.skin) ** 2:
            return False
        self.replays += 1
        move = math.sqrt(max(info[2], 0.0))
        if self.adapt_skin and 4.0 * move > self.skin and self.skin < self.cutoff:
            new_skin = min(4.0 * move, self.cutoff)
            log.info("atoms move %.3f Å per %d steps: Verlet skin %.3f -> %.3f Å", move, block, self.skin, new_skin)
            self.skin = new_skin
        return True

    def at_sync(self, st, info, step: int) -> None:
        """Rebuilds at a sync if the next block could make the list stale (``info`` None: after a replay)."""
        if self.layout == "dense":  # all pairs: the list never goes stale
            return
        if info is None:
            if step > 0:
                self.build(st)
        else:
            disp, move = math.sqrt(max(info[1], 0.0)), math.sqrt(max(info[2], 0.0))
            if disp + 1.5 * move >= 0.5 * self.skin:
                self.build(st)
