"""Checks of the batched MD engine: objects evaluated on the device after every step that stop replicas
(:class:`Check`), and the frame recorder of the ``md`` sampler (:class:`FrameRecorder`).

A check returns, per replica, whether it fails now and a reason code (an index into
:data:`uqpot.md.stability.REASONS`); the engine keeps each replica's first failing step and reason and
removes it at the next sync, so a check never makes a host transfer between syncs.  The engine evaluates its
checks in order; the first one that fails names the reason.

* :class:`StabilityCheck`: the paper's stability criteria (:class:`~uqpot.md.stability.StabilityCriteria`).
* :class:`UncertaintyStop`: stops a replica whose uncertainty U passes a threshold (reason ``"uncertain"``):
  beyond the upper trust level frames are not worth labelling, and the trajectory is leaving the region
  where the model can be believed (DP-GEN's upper trust level, FLARE's σ threshold).
"""

from __future__ import annotations

import numpy as np
import torch

from .stability import REASON_CODE, StabilityCriteria, evaluate, max_distance_pairs


class Check:
    """Stops replicas.  ``bind`` is called at the start and after every change of the batch."""

    required_cutoff = 0.0  # Å: the pair list must reach this far

    def bind(self, st) -> None:
        pass

    def __call__(self, st, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(failed (R,) bool, reason (R,) int64)`` for the state ``st`` and its pair list ``pairs``
        (:class:`~uqpot.md.verlet.VerletList`)."""
        raise NotImplementedError


class StabilityCheck(Check):
    """The stability criteria (paper Sec. 2.5): non-finite values, collisions, dissociation, energy below
    the ground state, kinetic energy out of range."""

    def __init__(self, criteria: StabilityCriteria | None = None):
        self.criteria = criteria if criteria is not None else StabilityCriteria()
        self.required_cutoff = self.criteria.required_cutoff

    def bind(self, st):
        pairs = max_distance_pairs(self.criteria, st.numbers.cpu().numpy(), st.n_atoms.cpu().numpy(),
                                   st.pbc.any(1).cpu().numpy())
        self.max_pairs = torch.as_tensor(pairs, device=st.device)

    def __call__(self, st, pairs):
        return evaluate(self.criteria, st.x, st.batch, st.n_replicas, energy=st.e, kinetic_energy=st.ke,
                        forces=st.f, edge_index=pairs.batch.edge_index, edge_offsets=pairs.edge_offsets,
                        max_pairs=self.max_pairs)


class UncertaintyStop(Check):
    """Stops a replica once its uncertainty U (the model's ``uncertainty``, in the method's unit) exceeds
    ``threshold``; a NaN U stops it too.  Needs a model that returns U."""

    code = REASON_CODE["uncertain"]

    def __init__(self, threshold: float):
        self.threshold = float(threshold)

    def bind(self, st):
        if st.u is None:
            raise ValueError("an uncertainty stop needs a model that returns an uncertainty (a UQ method)")

    def __call__(self, st, pairs):
        failed = ~(st.u <= self.threshold)
        return failed, torch.where(failed, self.code, 0).to(torch.int64)


class FrameRecorder:
    """Keeps every ``every``-th frame of every replica (positions Å, energy kcal/mol, U, and the cell for
    periodic replicas) up to the replica's failure: the candidates of the ``md`` sampler, and the frames of
    a campaign's ``frame_every``.  Device tensors are collected per block and moved to the host at the
    sync."""

    def __init__(self, every: int):
        if every < 1:
            raise ValueError("frame interval must be >= 1")
        self.every = int(every)

    @staticmethod
    def new_buffer() -> dict:
        return {"steps": [], "x": [], "e": [], "u": []}

    def record(self, st, step: int, buf: dict) -> None:
        if step % self.every == 0:
            buf["steps"].append(step)
            buf["x"].append(st.x.clone())
            buf["e"].append(st.e)
            if st.u is not None:
                buf["u"].append(st.u)

    def commit(self, buf: dict, st, records, fail_step: np.ndarray) -> None:
        if not buf["steps"]:
            return
        xs = torch.stack(buf["x"]).cpu().numpy()
        es = torch.stack(buf["e"]).cpu().numpy()
        us = torch.stack(buf["u"]).to(torch.float64).cpu().numpy() if buf["u"] else None
        cells = st.cell.to(torch.float64).cpu().numpy()
        periodic = st.pbc.any(1).cpu().numpy()
        for r, (slot, sl) in enumerate(zip(st.slots, st.host_ranges())):
            rec = records[slot]
            last = fail_step[r] if fail_step[r] >= 0 else np.iinfo(np.int64).max
            for t, k in enumerate(buf["steps"]):
                if k > last:
                    break
                rec.frame_steps.append(k)
                rec.frames.append(xs[t, sl].copy())
                rec.frame_energy.append(float(es[t, r]))
                if us is not None:
                    rec.frame_uncertainty.append(float(us[t, r]))
                if periodic[r]:
                    rec.frame_cells.append(cells[r].copy())
