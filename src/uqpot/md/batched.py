"""Batched molecular dynamics: many replicas of a system in one tensor, one model call per step.

The paper's stability campaigns (Sec. 2.5) run many short NVT trajectories: for ammonia 100 runs × 5 ps ×
{300, 500, 750, 1000} K at 0.5 fs with a Nosé-Hoover thermostat; for silica 10 runs × 1 ns at 2500 K at
0.25 fs.  Run one at a time through ASE, a 4-atom molecule leaves the model (and the CPU or GPU) idle most
of the time; here every replica (different start structures, temperatures and seeds) is concatenated into
one :class:`~uqpot.data.batch.AtomsBatch` and integrated together.

The engine (:class:`BatchedMD`) composes four parts, each in its own module:

* the replicas' state, with ``select`` to drop finished ones (:mod:`uqpot.md.state`);
* the integrator: velocity Verlet, Langevin or a Nosé-Hoover chain, each the twin of an ASE dynamics
  (:mod:`uqpot.md.integrators`);
* the Verlet list with its skin, replays and padding (:mod:`uqpot.md.verlet`);
* checks that stop replicas (the paper's stability criteria, an uncertainty stop) and the frame recorder
  (:mod:`uqpot.md.checks`).

One model call per step: forces at the new positions are kept for the first half-kick of the next step.
The checks are evaluated on the device after every step and the first failing step of each replica is kept
on the device; at the sync every ``check_every`` steps, failed replicas are recorded with their time of
failure and reason and removed, and the batch shrinks.  A replica that diverges (NaN, inf) is one such
failure; each replica's forces depend only on its own atoms, so it cannot spoil the others.  Host transfers
happen only at syncs: failure flags, the list's displacement maximum, and the records of the block
(energies, temperatures, uncertainties every ``record_every`` steps; frames every ``frame_every`` steps).

Units: kcal/mol, Å, fs, amu (velocities Å/fs); the conversions are :data:`uqpot.core.units.FORCE_TO_ACCELERATION`
(kcal/mol/Å/amu → Å/fs², ≈ 4.184e-4), :data:`uqpot.core.units.MV2_TO_KCAL_PER_MOL` (amu·Å²/fs² → kcal/mol,
≈ 2390.06) and :data:`uqpot.core.units.KB_KCAL_PER_MOL_K` (CODATA 2014, as ASE).  Masses are ASE's.

Kept whole (about 470 lines): one class, the engine's step loop (compute, step, check, record,
retire, with the snapshot the Verlet list's replays roll back to); its parts (state, integrators, Verlet
list, checks, records) are their own modules already, and what is left shares the engine's tensors.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch
from ase.data import atomic_masses

from ..core import fields as F
from ..data.batch import DENSE_MAX_ATOMS, as_dtype, choose_layout
from ..data.structures import Structure
from ..core.progress import LogProgress
from ..core.units import KB_KCAL_PER_MOL_K
from .checks import Check, FrameRecorder, StabilityCheck
from .integrators import THERMOSTATS, Integrator, gaussian_noise, make_integrator
from .records import MDResult, ReplicaRecord
from .stability import REASONS, StabilityCriteria
from .state import ReplicaState, maxwell_boltzmann
from .verlet import VerletList

__all__ = ["BatchedMD", "MDResult", "ReplicaRecord", "THERMOSTATS", "gaussian_noise", "maxwell_boltzmann",
           "run_batched"]

log = logging.getLogger(__name__)


def _model_dtype(model) -> torch.dtype:
    dt = getattr(model, "dtype", None)
    if isinstance(dt, torch.dtype):
        return dt
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _model_device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _supports_dense(model) -> bool:
    """uqpot's potentials and UQ methods evaluate the dense layout; other models (analytic references)
    read the edge list."""
    from ..nn.potential import Potential

    net = model if isinstance(model, Potential) else getattr(model, "potential", None)
    return isinstance(net, Potential) and bool(net.supports_dense)


def _as_structure(s) -> Structure:
    return s if isinstance(s, Structure) else Structure.from_atoms(s)


class BatchedMD:
    """Many replicas, one tensor, one model call per step.

    Parameters
    ----------
    model: a :class:`~uqpot.nn.potential.Potential`, a UQ method, or any module with ``cutoff`` (Å) and
        ``forward(batch, compute_forces=True, create_graph=False)`` returning ``energy`` (B,) kcal/mol and
        ``forces`` (N, 3) kcal/mol/Å (and ``uncertainty`` (B,) for UQ methods: then U is recorded).
    structures: start structures, one per replica (:class:`Structure` or ``ase.Atoms``).
    timestep_fs: the time step (fs); the paper: 0.5 fs (ammonia), 0.25 fs (silica).
    temperatures_K, seeds: per replica or one for all.  The seed draws the initial velocities (unless
        ``velocities`` are given) and keys the Langevin noise.
    thermostat: ``"nose-hoover"`` (default), ``"langevin"`` or ``"nve"`` (:mod:`uqpot.md.integrators`), or
        ``integrator``: an :class:`~uqpot.md.integrators.Integrator` object instead.
    tdamp_fs: Nosé-Hoover damping time τ (fs; default 100 × timestep); ``chain_length`` (3) and
        ``chain_steps`` (ASE's ``tloop``, 1).
    friction_per_fs: Langevin friction (1/fs; default 0.01).
    velocities: initial velocities (Å/fs), one (n, 3) array per replica; default Maxwell-Boltzmann at the
        replica's temperature (:func:`maxwell_boltzmann`, centre-of-mass momentum removed if
        ``remove_com_momentum``).
    skin, adapt_skin: the Verlet skin (Å) and whether a replayed block grows it (:mod:`uqpot.md.verlet`);
        molecules pay nothing for a large skin (all their pairs are within the cutoff anyway), dense
        periodic systems pay (cutoff + skin)³ in edges.
    check_every: steps between host syncs (stability bookkeeping, list validity).
    record_every: steps between records of energy, temperature, conserved energy and U (default
        ``check_every``).  frame_every: steps between stored frames (default none).
    criteria: :class:`~uqpot.md.stability.StabilityCriteria` (default: finiteness only).
    checks: further :class:`~uqpot.md.checks.Check` objects (e.g. an uncertainty stop), after the
        stability criteria.
    dtype: dtype of the integrator state (default the model's); the model is called in its own dtype.
    replica_ids: labels of the replicas in the records (default 0..R-1).
    layout: pair layout of the model call (see :func:`uqpot.data.batch.choose_layout`): "sparse" (the
        Verlet list) or "dense" (molecules only: every pair of a replica on a padded grid, so the list never
        goes stale: no skin, no rebuilds, and the stability checks see every distance).  "auto" (default) is
        dense for molecules of up to 32 atoms when ``compile`` is on, else sparse (eager, the edge list is
        the faster one).  Same forces to float tolerance.
    compile: evaluate the model through ``torch.compile`` (forces by ``torch.func.grad``), on the dense
        layout only (molecules; a ``ValueError`` otherwise).  It pays a compilation (tens of seconds on a
        CPU) at the start.  Every call is padded to the starting shape, so removing failed replicas never
        recompiles.
    compile_mode: torch.compile's mode: "default", or "reduce-overhead" (the compiled call captured as a CUDA
        graph on a GPU; its outputs are copied out before the next replay; on a CPU it compiles as default).
    """

    def __init__(self, model, structures: Sequence, *, timestep_fs: float, temperatures_K=300.0, seeds=0,
                 thermostat: str = "nose-hoover", tdamp_fs: float | None = None, chain_length: int = 3,
                 chain_steps: int = 1, friction_per_fs: float = 0.01, velocities=None,
                 remove_com_momentum: bool = True, skin: float = 1.0, check_every: int = 20,
                 record_every: int | None = None, frame_every: int | None = None,
                 criteria: StabilityCriteria | None = None, checks: Sequence[Check] = (), dtype=None,
                 replica_ids=None, adapt_skin: bool = True, layout: str = "auto", compile: bool = False,
                 compile_mode: str = "default",
                 integrator: Integrator | None = None):
        if integrator is None and thermostat not in THERMOSTATS:
            raise ValueError(f"unknown thermostat {thermostat!r}; use one of {', '.join(THERMOSTATS)}")
        if timestep_fs <= 0 or skin <= 0 or check_every < 1 or chain_length < 1 or chain_steps < 1:
            raise ValueError("need timestep_fs > 0, skin > 0, check_every >= 1, chain_length >= 1, chain_steps >= 1")
        structures = [_as_structure(s) for s in structures]
        R = len(structures)
        if R == 0:
            raise ValueError("no structures")
        self.model = model
        self.model_dtype = _model_dtype(model)
        self.device = _model_device(model)
        self.dtype = as_dtype(dtype) if dtype is not None else self.model_dtype
        self.cutoff = float(model.cutoff)
        periodic = any(bool(np.any(x.pbc)) for x in structures)
        if layout == "auto" and (not compile or not _supports_dense(model)):
            layout = "sparse"  # eager, the edge list is the faster one for small molecules
        if layout == "dense" and not _supports_dense(model):
            raise ValueError("layout 'dense' needs a uqpot potential or UQ method; this model reads edge lists")
        layout = choose_layout(layout, periodic, max(x.n_atoms for x in structures))
        self._call = self._call_model
        capacity = None
        if compile:
            if layout != "dense":
                raise ValueError("compile runs on the dense layout only: molecules of at most "
                                 f"{DENSE_MAX_ATOMS} atoms with a uqpot potential or UQ method")
            # static shapes: every call is padded to the starting size (removed replicas become isolated
            # padding atoms), so one compiled graph serves the whole campaign
            capacity = (sum(x.n_atoms for x in structures), len(structures), max(x.n_atoms for x in structures))
            # the compiled call sees the weights as constants of the force computation: with parameters that
            # require grad, the traced graph would keep what a backward to the weights needs (~40% slower)
            frozen = {k: p.detach() for k, p in model.named_parameters()}
            mode = None if compile_mode == "default" else compile_mode
            compiled = torch.compile(self._call_frozen, dynamic=False, mode=mode)
            if mode == "reduce-overhead":
                # CUDA graphs: outputs live in the graph's static buffers until the next replay, so the
                # integrator gets copies
                def call(batch):
                    torch.compiler.cudagraph_mark_step_begin()
                    return tuple(None if x is None else x.clone() for x in compiled(batch, frozen))

                self._call = call
            else:
                self._call = lambda batch: compiled(batch, frozen)
        self.verlet = VerletList(self.cutoff, skin, layout=layout, model_dtype=self.model_dtype,
                                 adapt_skin=adapt_skin, capacity=capacity)
        self.criteria = criteria if criteria is not None else StabilityCriteria()
        self.checks = [StabilityCheck(self.criteria), *checks]
        need = max(c.required_cutoff for c in self.checks)
        if need > self.cutoff + skin:
            raise ValueError(f"min_distance {need} Å exceeds the list cutoff")
        self.dt = float(timestep_fs)
        self.integrator = integrator if integrator is not None else make_integrator(
            thermostat, timestep_fs=self.dt, tdamp_fs=tdamp_fs, chain_length=chain_length, chain_steps=chain_steps,
            friction_per_fs=friction_per_fs)
        self.thermostat = self.integrator.name
        self.check_every = int(check_every)
        self.record_every = int(record_every or check_every)
        self.frame_recorder = FrameRecorder(frame_every) if frame_every else None

        temps = np.broadcast_to(np.asarray(temperatures_K, dtype=np.float64), (R,)).copy()
        seeds_ = np.broadcast_to(np.asarray(seeds, dtype=np.int64), (R,)).copy()
        ids = list(range(R)) if replica_ids is None else [int(i) for i in replica_ids]
        if len(ids) != R:
            raise ValueError("replica_ids must name every replica")
        if velocities is not None and len(velocities) != R:
            raise ValueError("velocities must give one array per replica")
        n_atoms = np.array([s.n_atoms for s in structures], dtype=np.int64)
        numbers = np.concatenate([s.numbers for s in structures])
        if velocities is None:
            vel = [maxwell_boltzmann(atomic_masses[s.numbers], T, int(sd), remove_com_momentum)
                   for s, T, sd in zip(structures, temps, seeds_)]
        else:
            vel = [np.asarray(v, dtype=np.float64).reshape(s.n_atoms, 3) for s, v in zip(structures, velocities)]
        self.records = [ReplicaRecord(replica=i, temperature_K=float(T), seed=int(sd), n_atoms=int(n))
                        for i, T, sd, n in zip(ids, temps, seeds_, n_atoms)]
        self.finished: list[ReplicaRecord] = []
        self.state = ReplicaState(
            x=np.concatenate([s.positions for s in structures]), v=np.concatenate(vel),
            masses=atomic_masses[numbers], numbers=numbers, n_atoms=n_atoms,
            cell=np.stack([s.cell for s in structures]), pbc=np.stack([s.pbc for s in structures]),
            temperatures_K=temps, seeds=seeds_, dt=self.dt, dtype=self.dtype, device=self.device)
        self.integrator.start(self.state)

        self.step_count = 0
        self.model_calls = 0
        self.wall_time = 0.0
        self.uncertainty_description = getattr(model, "uncertainty_description", None) or None
        self._careful = False
        self.verlet.build(self.state)
        self._compute()
        self._bind()
        self._check()
        self._pending = self._new_buffer()
        self._record(self._pending)  # the state at t = 0

    # ------------------------------------------------------------------ views kept for callers
    x = property(lambda self: self.state.x)
    cell = property(lambda self: self.state.cell)
    batch = property(lambda self: self.state.batch)
    numbers = property(lambda self: self.state.numbers)
    n_atoms = property(lambda self: self.state.n_atoms)
    skin = property(lambda self: self.verlet.skin)
    layout = property(lambda self: self.verlet.layout)
    replays = property(lambda self: self.verlet.replays)
    neighbor_builds = property(lambda self: self.verlet.builds)
    _model_batch = property(lambda self: self.verlet.model_batch)
    _capacity = property(lambda self: self.verlet.capacity)

    def _build(self) -> None:
        self.verlet.build(self.state)

    def _bind(self) -> None:
        """Per-replica constants of the integrator and the checks for the current rows."""
        self.integrator.bind(self.state)
        for c in self.checks:
            c.bind(self.state)

    # ------------------------------------------------------------------ forces
    def _compute(self) -> None:
        st = self.state
        xm = st.x if self.dtype == self.model_dtype else st.x.to(self.model_dtype)
        f, e, u = self._call(self.verlet.model_input(xm))
        if self.verlet.capacity is not None:
            N, B = st.x.shape[0], st.n_replicas
            f, e, u = f[:N], e[:B], (None if u is None else u[:B])
        self.model_calls += 1
        st.f = f.detach().to(self.dtype)
        st.e = e.detach().to(torch.float64)
        st.u = None if u is None else u.detach()

    def _call_model(self, batch):
        out = self.model(batch, compute_forces=True, create_graph=False)
        return out[F.FORCES], out[F.ENERGY], out.get(F.UNCERTAINTY)

    def _call_frozen(self, batch, params: dict):
        """:meth:`_call_model` with ``params`` (detached views of the model's parameters: same storage, so
        they follow in-place updates of the weights) in place of the parameters."""
        out = torch.func.functional_call(self.model, params, (batch,), {"compute_forces": True,
                                                                         "create_graph": False})
        return out[F.FORCES], out[F.ENERGY], out.get(F.UNCERTAINTY)

    def thermostat_energy(self) -> torch.Tensor:
        """The integrator's energy-like term per replica (kcal/mol)."""
        return self.integrator.energy(self.state)

    # ------------------------------------------------------------------ one step
    def _step(self) -> None:
        st = self.state
        self.integrator.first_half(st, self.step_count)
        if self._careful:
            self.verlet.check_now(st)
        self._compute()
        self.integrator.second_half(st)
        self.step_count += 1
        self._check()
        if not self._careful:
            self.verlet.track(st)

    def _check(self) -> None:
        st = self.state
        st.ke = 0.5 * st.ke2()
        failed = reason = None
        for c in self.checks:
            f, r = c(st, self.verlet)
            if failed is None:
                failed, reason = f, r
            else:
                reason = torch.where(failed, reason, r)
                failed = failed | f
        new = failed & (st.fail_step < 0)
        st.fail_step = torch.where(new, torch.full_like(st.fail_step, self.step_count), st.fail_step)
        st.reason = torch.where(new, reason, st.reason)

    # ------------------------------------------------------------------ records
    def _record(self, buf: dict) -> None:
        st, k = self.state, self.step_count
        if k % self.record_every == 0:
            ke = st.ke
            buf["steps"].append(k)
            # float64: absolute energies (~1e5 kcal/mol for DFT references) exceed float32's resolution
            buf["rows"].append(torch.stack([st.e, (2.0 * ke / (st.ndof * KB_KCAL_PER_MOL_K)).to(torch.float64),
                                            st.e + (ke + self.thermostat_energy()).to(torch.float64)]))
            if st.u is not None:
                buf["u"].append(st.u.to(self.dtype))
        if self.frame_recorder is not None:
            self.frame_recorder.record(st, k, buf["frames"])

    def _commit(self, buf: dict, fail_step: np.ndarray) -> None:
        """Move a block's records to the host and into the replicas' records (up to their failure)."""
        st = self.state
        rows = torch.stack(buf["rows"]).cpu().numpy() if buf["rows"] else None  # (T, 3, R)
        us = torch.stack(buf["u"]).to(torch.float64).cpu().numpy() if buf["u"] else None
        for r, slot in enumerate(st.slots):
            rec = self.records[slot]
            last = fail_step[r] if fail_step[r] >= 0 else np.iinfo(np.int64).max
            for t, k in enumerate(buf["steps"]):
                if k > last:
                    break
                rec.record_steps.append(k)
                rec.energy.append(rows[t, 0, r])
                rec.temperature.append(rows[t, 1, r])
                rec.conserved.append(rows[t, 2, r])
                if us is not None:
                    rec.uncertainty.append(us[t, r])
        if self.frame_recorder is not None:
            self.frame_recorder.commit(buf["frames"], st, self.records, fail_step)

    @staticmethod
    def _new_buffer() -> dict:
        return {"steps": [], "rows": [], "u": [], "frames": FrameRecorder.new_buffer()}

    # ------------------------------------------------------------------ snapshots and shrinking
    def _snapshot(self) -> dict:
        return {"state": self.state.snapshot(), "integrator": self.integrator.snapshot(), "step_count": self.step_count}

    def _restore(self, snap: dict) -> None:
        self.state.restore(snap["state"])
        self.integrator.restore(snap["integrator"])
        self.step_count = snap["step_count"]

    def _remove(self, keep: np.ndarray) -> None:
        """Keep only the replicas (rows) in ``keep`` (bool, host)."""
        rows = self.state.select(keep)
        self.integrator.select(rows)
        self._bind()

    def _retire(self, rows: np.ndarray, fail_step: np.ndarray, reason: np.ndarray, survived: bool) -> None:
        st = self.state
        x = st.x.detach().to(torch.float64).cpu().numpy()
        v = st.v.detach().to(torch.float64).cpu().numpy()
        ranges = st.host_ranges()
        for r in rows:
            rec = self.records[st.slots[r]]
            rec.final_positions, rec.final_velocities = x[ranges[r]].copy(), v[ranges[r]].copy()
            if survived:
                rec.steps_run = self.step_count
            else:
                rec.stable = False
                rec.failure_step = int(fail_step[r])
                rec.time_to_failure_fs = rec.failure_step * self.dt
                rec.reason = REASONS[int(reason[r])]
                rec.steps_run = rec.failure_step
            self.finished.append(rec)

    # ------------------------------------------------------------------ driver
    @property
    def n_alive(self) -> int:
        return self.state.n_replicas

    def run(self, n_steps: int) -> MDResult:
        """Advance every live replica by up to ``n_steps`` steps (stopping failed ones); returns the result of
        everything run so far (survivors counted as stable for the time simulated)."""
        t0 = time.perf_counter()
        target = self.step_count + int(n_steps)
        log_progress = LogProgress(f"MD of {self.state.n_replicas} replicas", int(n_steps), "steps")
        first = self.step_count
        # the t = 0 record, and replicas that failed at the start
        self._sync(self._pending, None)
        self._pending = self._new_buffer()
        while self.step_count < target and self.state.slots:
            block = min(self.check_every - self.step_count % self.check_every, target - self.step_count)
            snap = self._snapshot()
            buf = self._new_buffer()
            self.verlet.dmax2.zero_()
            for _ in range(block):
                self._step()
                self._record(buf)
            info = self.verlet.block_stats(self.state, snap["state"]["x"])  # the one host transfer, with _sync's
            if self.verlet.went_stale(info, block):
                # the list went stale somewhere in the block: replay it exactly with per-step checks
                log.debug("replaying steps %d-%d with per-step neighbour checks", snap["step_count"], self.step_count)
                self._restore(snap)
                self._build()
                self._careful = True
                buf = self._new_buffer()
                try:
                    for _ in range(block):
                        self._step()
                        self._record(buf)
                finally:
                    self._careful = False
                info = None  # rebuild at the sync: the replayed block says nothing about the next one
            self._sync(buf, info)
            log_progress.update(self.step_count - first, note=f"{self.state.n_replicas} replicas still running")
        self.wall_time += time.perf_counter() - t0
        return self.result()

    def _sync(self, buf: dict, info) -> None:
        st = self.state
        fail_step = st.fail_step.cpu().numpy()
        reason = st.reason.cpu().numpy()
        self._commit(buf, fail_step)
        for r, slot in enumerate(st.slots):
            self.records[slot].steps_run = self.step_count if fail_step[r] < 0 else int(fail_step[r])
        failed = fail_step >= 0
        if failed.any():
            self._retire(np.nonzero(failed)[0], fail_step, reason, survived=False)
            self._remove(~failed)
            if st.slots:
                self._build()
            return
        self.verlet.at_sync(st, info, self.step_count)

    def result(self) -> MDResult:
        """Records of every replica (finished or still running), in replica order."""
        st = self.state
        x = st.x.detach().to(torch.float64).cpu().numpy()
        v = st.v.detach().to(torch.float64).cpu().numpy()
        for r, (slot, sl) in enumerate(zip(st.slots, st.host_ranges())):
            rec = self.records[slot]
            rec.steps_run = self.step_count
            rec.final_positions = x[sl].copy()
            rec.final_velocities = v[sl].copy()
        return MDResult(replicas=list(self.records), timestep_fs=self.dt, n_steps=self.step_count,
                        thermostat=self.thermostat, wall_time_s=self.wall_time, model_calls=self.model_calls,
                        neighbor_builds=self.neighbor_builds, replays=self.replays,
                        uncertainty_description=self.uncertainty_description)


def run_batched(model, structures: Sequence, n_steps: int, **kwargs) -> MDResult:
    """Convenience: ``BatchedMD(model, structures, **kwargs).run(n_steps)``."""
    return BatchedMD(model, structures, **kwargs).run(n_steps)
