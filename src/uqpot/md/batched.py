"""Batched molecular dynamics: many replicas of a system in one tensor, one model call per step.

The paper's stability campaigns (Sec. 2.5) run many short NVT trajectories: for ammonia 100 runs × 5 ps ×
{300, 500, 750, 1000} K at 0.5 fs with a Nosé-Hoover thermostat; for silica 10 runs × 1 ns at 2500 K at
0.25 fs.  Run one at a time through ASE, a 4-atom molecule leaves the model (and the CPU or GPU) idle most
of the time; here every replica (different start structures, temperatures and seeds) is concatenated into
one :class:`~uqpot.data.batch.AtomsBatch` and integrated together.

Units: kcal/mol, Å, fs, amu (velocities Å/fs); the conversions are :data:`uqpot.units.FORCE_TO_ACCELERATION`
(kcal/mol/Å/amu → Å/fs², ≈ 4.184e-4), :data:`uqpot.units.MV2_TO_KCAL_PER_MOL` (amu·Å²/fs² → kcal/mol,
≈ 2390.06) and :data:`uqpot.units.KB_KCAL_PER_MOL_K` (CODATA 2014, as ASE).  Masses are ASE's.

Integrators (``thermostat``):

* ``"nose-hoover"`` (default): a Nosé-Hoover chain (Martyna, Klein & Tuckerman 1992) of length 3, the
  chain integrated by Trotter factorisation with the 3-term Suzuki-Yoshida scheme around velocity Verlet,
  exactly as ASE's :class:`ase.md.nose_hoover_chain.NoseHooverChainNVT` (thermostat masses
  Q₁ = N_f k_B T τ², Q_j = k_B T τ², N_f = 3N, τ = ``tdamp_fs``, default 100 time steps, ASE's
  recommendation; the paper does not give its damping time).  The conserved quantity
  E + K + N_f k_B T η₁ + k_B T Σ_{j>1} η_j + Σ p_η²/2Q is recorded.
* ``"langevin"``: ASE's :class:`ase.md.langevin.Langevin` scheme (Vanden-Eijnden & Ciccotti 2006, their
  Eq. 23; no centre-of-mass correction), friction ``friction_per_fs``.  Its Gaussian noise comes from a
  counter-based generator keyed on (replica seed, step, atom, component), so a replica sees the same noise
  whatever batch it runs in, on CPU or GPU, and a replayed block (below) is reproduced exactly.
* ``"nve"``: velocity Verlet.

One model call per step: forces at the new positions are kept for the first half-kick of the next step.

Neighbour lists (Verlet skin): lists are built (with vesin, on the host) with cutoff + ``skin`` and are
valid as long as no atom moved more than skin/2 since the build.  To avoid a per-step host transfer the
displacement test runs on the device every step and its running maximum is read only at the periodic sync
every ``check_every`` steps.  If it crossed skin/2 anywhere in the block, the block is replayed from a
snapshot of its start with a fresh list and a per-step host check (the classic algorithm), so results are
exactly those of a list checked every step.  To make replays rare, the list is also rebuilt at a sync when
the largest displacement plus 1.5 × the largest single-atom movement of the last block would reach skin/2
(atoms are wrapped into periodic cells at every build).  Edges beyond the cutoff contribute exact zeros
(the models' cutoff functions vanish there), so the skin changes no result.

Stability (:mod:`uqpot.md.stability`): the criteria are evaluated on the device after every step and the
first failing step of each replica is kept on the device; at the sync, failed replicas are recorded with
their time of failure and reason and removed, and the batch shrinks.  A replica that diverges (NaN, inf) is
one such failure; each replica's forces depend only on its own atoms, so it cannot spoil the others.

Host transfers happen only at syncs (every ``check_every`` steps): failure flags, the displacement maximum,
and the records of the block (energies, temperatures, uncertainties every ``record_every`` steps; frames
every ``frame_every`` steps).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from ase.data import atomic_masses

from .. import fields as F
from ..data.batch import DENSE_MAX_ATOMS, AtomsBatch, as_dtype, choose_layout, dense_layout
from ..data.neighbors import neighbor_list
from ..data.structures import Structure
from ..units import FORCE_TO_ACCELERATION, KB_KCAL_PER_MOL_K, MV2_TO_KCAL_PER_MOL
from .stability import REASONS, StabilityCriteria, evaluate, max_distance_pairs

log = logging.getLogger(__name__)

THERMOSTATS = ("nose-hoover", "langevin", "nve")

#: fourth-order Suzuki-Yoshida weights (Yoshida 1990), as in ASE's NoseHooverChainNVT
SUZUKI_YOSHIDA_3 = (1.0 / (2.0 - 2.0 ** (1.0 / 3.0)), -(2.0 ** (1.0 / 3.0)) / (2.0 - 2.0 ** (1.0 / 3.0)),
                    1.0 / (2.0 - 2.0 ** (1.0 / 3.0)))


# ----------------------------------------------------------------------------------------- noise
_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for 0 ≤ x < 2³² in int64 without overflow (16-bit halves)."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xorshift-multiply, "lowbias32" constants) on int64 tensors."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash32_int(x: int) -> int:
    """:func:`_hash32` on a Python int (for keys computed on the host: no device transfer)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def gaussian_noise(seeds: torch.Tensor, step: int, atom_index: torch.Tensor, n_streams: int = 2,
                   dtype=torch.float64) -> torch.Tensor:
    """Standard normal numbers (n_streams, N, 3) for atoms with per-atom ``seeds`` (N,) (the replica's seed)
    and index ``atom_index`` (N,) within their replica at integer ``step``: a counter-based generator (hash of
    (seed, step, atom, component, stream) → two uniforms → Box-Muller), identical on every device and for
    every batch composition.  The step enters as a host-side key, so no host-to-device copy is made."""
    dev = seeds.device
    step = int(step)
    key = _hash32_int(_hash32_int(((step >> 32) & _M32) + 0x9E3779B9) ^ (step & _M32))
    seeds = seeds.to(torch.int64)
    s = _hash32(_hash32(_hash32(seeds >> 32) ^ (seeds & _M32)) ^ key)  # (N,)
    comp = torch.arange(3 * n_streams, device=dev, dtype=torch.int64).view(n_streams, 1, 3)
    ctr = (atom_index.to(torch.int64).view(1, -1, 1) * (3 * n_streams) + comp) * 2  # (S, N, 3)
    base = s.view(1, -1, 1)
    u1 = (_hash32(base ^ _hash32(ctr)) + 1).to(dtype) * 2.0 ** -32  # (0, 1]
    u2 = _hash32(base ^ _hash32(ctr + 1)).to(dtype) * 2.0 ** -32  # [0, 1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


# ----------------------------------------------------------------------------------------- results
@dataclass
class ReplicaRecord:
    """One replica's trajectory summary.  Times in fs, energies kcal/mol (model's frame), temperatures K."""

    replica: int
    temperature_K: float
    seed: int
    n_atoms: int
    stable: bool = True
    failure_step: int | None = None
    time_to_failure_fs: float | None = None
    reason: str = "stable"
    steps_run: int = 0
    record_steps: list = field(default_factory=list)
    energy: list = field(default_factory=list)
    temperature: list = field(default_factory=list)
    conserved: list = field(default_factory=list)
    uncertainty: list = field(default_factory=list)
    pressure: list = field(default_factory=list)  # bar, with the kinetic term (periodic replicas, ASE engine)
    volume: list = field(default_factory=list)  # Å³
    frame_steps: list = field(default_factory=list)
    frames: list = field(default_factory=list)  # (n_atoms, 3) arrays, Å
    frame_cells: list = field(default_factory=list)  # (3, 3) arrays, Å (NPT only: the cell moves)
    final_cell: np.ndarray | None = None  # Å (NPT only)
    final_positions: np.ndarray | None = None
    final_velocities: np.ndarray | None = None  # Å/fs
    error: str | None = None  # the exception that stopped it, if any (ASE path)

    def as_dict(self, timestep_fs: float, traces: bool = True) -> dict:
        d = {"replica": self.replica, "temperature_K": self.temperature_K, "seed": self.seed,
             "n_atoms": self.n_atoms, "stable": self.stable, "reason": self.reason,
             "failure_step": self.failure_step, "time_to_failure_fs": self.time_to_failure_fs,
             "simulated_fs": self.steps_run * timestep_fs, "error": self.error}
        if traces:
            d.update(time_fs=[s * timestep_fs for s in self.record_steps], energy=list(map(float, self.energy)),
                     temperature=list(map(float, self.temperature)), conserved=list(map(float, self.conserved)),
                     uncertainty=list(map(float, self.uncertainty)) if self.uncertainty else None)
            if self.pressure:
                d.update(pressure_bar=list(map(float, self.pressure)), volume_A3=list(map(float, self.volume)))
        return d


@dataclass
class MDResult:
    replicas: list[ReplicaRecord]
    timestep_fs: float
    n_steps: int
    thermostat: str
    wall_time_s: float
    model_calls: int
    neighbor_builds: int
    replays: int
    uncertainty_description: str | None = None

    @property
    def stable_fraction(self) -> float:
        return float(np.mean([r.stable for r in self.replicas])) if self.replicas else float("nan")

    @property
    def replica_steps_per_second(self) -> float:
        done = sum(r.steps_run for r in self.replicas)
        return done / self.wall_time_s if self.wall_time_s > 0 else float("nan")


# ----------------------------------------------------------------------------------------- engine
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


class BatchedMD:
    """Many replicas, one tensor, one model call per step.  See the module docstring for the schemes.

    Parameters
    ----------
    model: a :class:`~uqpot.nn.potential.Potential`, a UQ method, or any module with ``cutoff`` (Å) and
        ``forward(batch, compute_forces=True, create_graph=False)`` returning ``energy`` (B,) kcal/mol and
        ``forces`` (N, 3) kcal/mol/Å (and ``uncertainty`` (B,) for UQ methods: then U is recorded).
    structures: start structures, one per replica (:class:`Structure` or ``ase.Atoms``).
    timestep_fs: the time step (fs); the paper: 0.5 fs (ammonia), 0.25 fs (silica).
    temperatures_K, seeds: per replica or one for all.  The seed draws the initial velocities (unless
        ``velocities`` are given) and keys the Langevin noise.
    thermostat: ``"nose-hoover"`` (default), ``"langevin"`` or ``"nve"``.
    tdamp_fs: Nosé-Hoover damping time τ (fs; default 100 × timestep); ``chain_length`` (3) and
        ``chain_steps`` (ASE's ``tloop``, 1).
    friction_per_fs: Langevin friction (1/fs; default 0.01).
    velocities: initial velocities (Å/fs), one (n, 3) array per replica; default Maxwell-Boltzmann at the
        replica's temperature (:func:`maxwell_boltzmann`, centre-of-mass momentum removed if
        ``remove_com_momentum``).
    skin: Verlet skin (Å).  With ``adapt_skin`` (default) a block that had to be replayed because atoms
        moved more than skin/2 within it grows the skin to 4 × the largest movement in a block (at most the
        cutoff), so that replays stay rare; molecules pay nothing for a large skin (all their pairs are
        within the cutoff anyway), dense periodic systems pay (cutoff + skin)³ in edges.
    check_every: steps between host syncs (stability bookkeeping, list validity).
    record_every: steps between records of energy, temperature, conserved energy and U (default
        ``check_every``).  frame_every: steps between stored frames (default none).
    criteria: :class:`~uqpot.md.stability.StabilityCriteria` (default: finiteness only).
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
    """

    def __init__(self, model, structures: Sequence, *, timestep_fs: float, temperatures_K=300.0, seeds=0,
                 thermostat: str = "nose-hoover", tdamp_fs: float | None = None, chain_length: int = 3,
                 chain_steps: int = 1, friction_per_fs: float = 0.01, velocities=None,
                 remove_com_momentum: bool = True, skin: float = 1.0, check_every: int = 20,
                 record_every: int | None = None, frame_every: int | None = None,
                 criteria: StabilityCriteria | None = None, dtype=None, replica_ids=None,
                 adapt_skin: bool = True, layout: str = "auto", compile: bool = False):
        if thermostat not in THERMOSTATS:
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
        self.skin = float(skin)
        self.adapt_skin = bool(adapt_skin)
        self.criteria = criteria if criteria is not None else StabilityCriteria()
        periodic = any(bool(np.any(x.pbc)) for x in structures)
        if layout == "auto" and (not compile or not _supports_dense(model)):
            layout = "sparse"  # eager, the edge list is the faster one for small molecules
        if layout == "dense" and not _supports_dense(model):
            raise ValueError("layout 'dense' needs a uqpot potential or UQ method; this model reads edge lists")
        self.layout = choose_layout(layout, periodic, max(x.n_atoms for x in structures))
        self._call = self._call_model
        self._capacity = None
        if compile:
            if self.layout != "dense":
                raise ValueError("compile runs on the dense layout only: molecules of at most "
                                 f"{DENSE_MAX_ATOMS} atoms with a uqpot potential or UQ method")
            # static shapes: every call is padded to the starting size (removed replicas become isolated
            # padding atoms), so one compiled graph serves the whole campaign
            self._capacity = (sum(x.n_atoms for x in structures), len(structures),
                              max(x.n_atoms for x in structures))
            # the compiled call sees the weights as constants of the force computation: with parameters that
            # require grad, the traced graph would keep what a backward to the weights needs (~40% slower)
            frozen = {k: p.detach() for k, p in model.named_parameters()}
            compiled = torch.compile(self._call_frozen, dynamic=False)
            self._call = lambda batch: compiled(batch, frozen)
        if self.criteria.required_cutoff > self.cutoff + self.skin:
            raise ValueError(f"min_distance {self.criteria.min_distance} Å exceeds the list cutoff")
        self.dt = float(timestep_fs)
        self.thermostat = thermostat
        self.check_every = int(check_every)
        self.record_every = int(record_every or check_every)
        self.frame_every = int(frame_every) if frame_every else None
        self.chain_length, self.chain_steps = int(chain_length), int(chain_steps)
        self.tdamp = float(tdamp_fs) if tdamp_fs is not None else 100.0 * self.dt
        self.friction = float(friction_per_fs)

        temps = np.broadcast_to(np.asarray(temperatures_K, dtype=np.float64), (R,)).copy()
        seeds_ = np.broadcast_to(np.asarray(seeds, dtype=np.int64), (R,)).copy()
        ids = list(range(R)) if replica_ids is None else [int(i) for i in replica_ids]
        if len(ids) != R:
            raise ValueError("replica_ids must name every replica")
        if velocities is not None and len(velocities) != R:
            raise ValueError("velocities must give one array per replica")

        t = lambda a, d=self.dtype: torch.as_tensor(np.asarray(a), dtype=d, device=self.device)  # noqa: E731
        n_atoms = np.array([s.n_atoms for s in structures], dtype=np.int64)
        numbers = np.concatenate([s.numbers for s in structures])
        masses = atomic_masses[numbers]
        if velocities is None:
            vel = [maxwell_boltzmann(atomic_masses[s.numbers], T, int(sd), remove_com_momentum)
                   for s, T, sd in zip(structures, temps, seeds_)]
        else:
            vel = [np.asarray(v, dtype=np.float64).reshape(s.n_atoms, 3) for s, v in zip(structures, velocities)]
        self.records = [ReplicaRecord(replica=i, temperature_K=float(T), seed=int(sd), n_atoms=int(n))
                        for i, T, sd, n in zip(ids, temps, seeds_, n_atoms)]
        self.finished: list[ReplicaRecord] = []

        # --- per-replica state (alive replicas only); `_slots` maps a row to its record
        self._slots = list(range(R))
        self.n_atoms = torch.as_tensor(n_atoms, device=self.device)
        self.numbers = torch.as_tensor(numbers, device=self.device)
        self.masses = t(masses)
        self.x = t(np.concatenate([s.positions for s in structures]))
        self.v = t(np.concatenate(vel))
        self.cell = t(np.stack([s.cell for s in structures]))
        self.pbc = torch.as_tensor(np.stack([s.pbc for s in structures]), device=self.device)
        self.kT = t(KB_KCAL_PER_MOL_K * temps)
        self.seeds = torch.as_tensor(seeds_, device=self.device)
        self.ndof = t(3.0 * n_atoms)
        C = self.chain_length
        self.eta = [torch.zeros(R, dtype=self.dtype, device=self.device) for _ in range(C)]
        self.p_eta = [torch.zeros(R, dtype=self.dtype, device=self.device) for _ in range(C)]
        self.fail_step = torch.full((R,), -1, dtype=torch.int64, device=self.device)
        self.reason = torch.zeros(R, dtype=torch.int64, device=self.device)
        self._derive()

        self.step_count = 0
        self.model_calls = 0
        self.neighbor_builds = 0
        self.replays = 0
        self.wall_time = 0.0
        self.uncertainty_description = getattr(model, "uncertainty_description", None) or None
        self._careful = False
        self._build()
        self._compute()
        self._check()
        self._dmax2 = torch.zeros((), dtype=self.dtype, device=self.device)
        self._pending = self._new_buffer()
        self._record(self._pending)  # the state at t = 0

    # ------------------------------------------------------------------ derived per-atom tensors
    def _derive(self) -> None:
        """Batch index, local atom index, per-atom thermostat constants, max-distance pairs."""
        R = len(self._slots)
        n = self.n_atoms
        self.batch = torch.repeat_interleave(torch.arange(R, device=self.device), n)
        starts = torch.cumsum(n, 0) - n
        self.local_index = torch.arange(self.batch.shape[0], device=self.device) - starts[self.batch]
        self.inv_m_acc = (FORCE_TO_ACCELERATION / self.masses).unsqueeze(-1)  # (N, 1): F → a
        C = self.chain_length
        tau2 = self.tdamp ** 2
        self.Q = [self.ndof * self.kT * tau2] + [self.kT * tau2 for _ in range(C - 1)]
        self.inv_Q = [1.0 / q for q in self.Q]
        self.ndof_kT = self.ndof * self.kT
        if self.thermostat == "langevin":
            dt, fr = self.dt, self.friction
            sigma = torch.sqrt(2.0 * self.kT[self.batch] * fr * FORCE_TO_ACCELERATION / self.masses).unsqueeze(-1)
            self.c1 = dt / 2.0 - dt * dt * fr / 8.0
            self.c2 = dt * fr / 2.0 - dt * dt * fr * fr / 8.0
            self.c3 = math.sqrt(dt) * sigma / 2.0 - dt ** 1.5 * fr * sigma / 8.0
            self.c5 = dt ** 1.5 * sigma / (2.0 * math.sqrt(3.0))
            self.c4 = fr / 2.0 * self.c5
            self.atom_seeds = self.seeds[self.batch]
        n_host = self.n_atoms.cpu().numpy()
        pairs = max_distance_pairs(self.criteria, self.numbers.cpu().numpy(), n_host,
                                   self.pbc.any(1).cpu().numpy())
        self.max_pairs = torch.as_tensor(pairs, device=self.device)

    # ------------------------------------------------------------------ neighbour lists
    def _wrap(self) -> None:
        """Wrap atoms of periodic replicas into their cell (in place)."""
        per = self.pbc.any(1)
        if not bool(per.any()):
            return
        eye = torch.eye(3, dtype=self.dtype, device=self.device).expand_as(self.cell)
        cell = torch.where(per.view(-1, 1, 1), self.cell, eye)
        inv = torch.linalg.inv(cell)
        ca, ia = cell[self.batch], inv[self.batch]
        frac = torch.einsum("ni,nij->nj", self.x, ia)
        frac = torch.where(self.pbc[self.batch], frac - torch.floor(frac), frac)
        self.x.copy_(torch.einsum("ni,nij->nj", frac, ca))

    def _build(self) -> None:
        """Neighbour lists with cutoff + skin at the current positions (host, vesin); resets the reference."""
        self._wrap()
        x = self.x.detach().to(torch.float64).cpu().numpy()
        cells = self.cell.to(torch.float64).cpu().numpy()
        pbc = self.pbc.cpu().numpy()
        n = self.n_atoms.cpu().numpy()
        dense = {}
        if self.layout == "dense":
            # molecules on the dense layout: the list holds every pair of a replica, so it never goes stale
            # (no skin, no rebuilds) and the stability checks see every distance
            index, mask = dense_layout(n)
            dense = dict(dense_index=torch.as_tensor(index, device=self.device),
                         pair_mask=torch.as_tensor(mask, device=self.device))
            r, i, j = np.nonzero(mask)
            start = (np.cumsum(n) - n)[r]
            ei, ej, sh = [i + start], [j + start], [np.zeros((len(r), 3), dtype=np.int64)]
        else:
            ei, ej, sh = self._verlet_lists(x, cells, pbc, n)
        edge_index = torch.as_tensor(np.stack([np.concatenate(ei), np.concatenate(ej)]).astype(np.int64),
                                     device=self.device)
        shifts = torch.as_tensor(np.concatenate(sh).reshape(-1, 3), dtype=self.model_dtype, device=self.device)
        self._abatch = AtomsBatch(numbers=self.numbers, positions=self.x, cell=self.cell.to(self.model_dtype),
                                  pbc=self.pbc, batch=self.batch, n_atoms=self.n_atoms, edge_index=edge_index,
                                  cell_shifts=shifts, num_structures=len(n), periodic=bool(pbc.any()), **dense)
        self._edge_offsets = self._abatch.edge_offsets().to(self.dtype) if self._abatch.periodic else None
        self._model_batch = self._padded(self._abatch) if self._capacity is not None else self._abatch
        self.x_ref = self.x.clone()
        self.neighbor_builds += 1

    def _verlet_lists(self, x, cells, pbc, n):
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

    def _padded(self, b: AtomsBatch) -> AtomsBatch:
        """``b`` on the dense layout padded to the starting numbers of atoms and replicas (static shapes for
        the compiled model).  Padding atoms sit in padding structures of at least one atom each, with no
        pairs: they interact with nothing, and their outputs are dropped."""
        n_cap, b_cap, n_max = self._capacity
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
        dev = self.device
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

    # ------------------------------------------------------------------ forces
    def _compute(self) -> None:
        xm = self.x if self.dtype == self.model_dtype else self.x.to(self.model_dtype)
        if self._capacity is not None:
            N, B = len(self.numbers), len(self._slots)
            xm = torch.cat([xm, xm.new_zeros(self._capacity[0] - N, 3)])
            f, e, u = self._call(self._model_batch.with_positions(xm))
            f, e, u = f[:N], e[:B], (None if u is None else u[:B])
        else:
            f, e, u = self._call(self._abatch.with_positions(xm))
        self.model_calls += 1
        self.f = f.detach().to(self.dtype)
        self.e = e.detach().to(torch.float64)
        self.u = None if u is None else u.detach()

    def _call_model(self, batch: AtomsBatch):
        out = self.model(batch, compute_forces=True, create_graph=False)
        return out[F.FORCES], out[F.ENERGY], out.get(F.UNCERTAINTY)

    def _call_frozen(self, batch: AtomsBatch, params: dict):
        """:meth:`_call_model` with ``params`` (detached views of the model's parameters: same storage, so
        they follow in-place updates of the weights) in place of the parameters."""
        out = torch.func.functional_call(self.model, params, (batch,), {"compute_forces": True,
                                                                         "create_graph": False})
        return out[F.FORCES], out[F.ENERGY], out.get(F.UNCERTAINTY)

    # ------------------------------------------------------------------ thermostat pieces
    def _ke2(self) -> torch.Tensor:
        """Σ m v² per replica (kcal/mol), i.e. 2 × kinetic energy."""
        mv2 = self.masses * (self.v * self.v).sum(-1)
        return torch.zeros(len(self._slots), dtype=self.dtype, device=self.device).index_add(
            0, self.batch, mv2) * MV2_TO_KCAL_PER_MOL

    def _nhc_half(self, delta: float) -> None:
        """exp(iL_NHC δ) of ASE's NoseHooverChainThermostat.integrate_nhc, for every replica at once.

        Per Suzuki-Yoshida sub-step d: p_η,j ← (p_η,j·s + d/2·G_j)·s with s = exp(−d/4·p_η,j+1/Q_j+1)
        (ASE's two multiplications by s around the kick), from the end of the chain to its start; η += d·p_η/Q;
        velocities scaled by exp(−d·p_η,1/Q_1); the chain again from its start to its end.  The velocity
        scaling is accumulated per replica (the kinetic energy follows as K·scale²) and applied once."""
        C = self.chain_length
        p, iQ, kT = self.p_eta, self.inv_Q, self.kT
        ke2_0 = self._ke2()
        scale = torch.ones_like(ke2_0)

        def update(j, d2, d4):
            if j == 0:
                g = ke2_0 * scale * scale - self.ndof_kT
            else:
                g = p[j - 1] * p[j - 1] * iQ[j - 1] - kT
            if j < C - 1:
                sj = torch.exp(p[j + 1] * iQ[j + 1] * (-d4))
                p[j] = (p[j] * sj + g * d2) * sj
            else:
                p[j] = p[j] + g * d2

        for _ in range(self.chain_steps):
            for w in SUZUKI_YOSHIDA_3:
                d = w * delta / self.chain_steps
                for j in reversed(range(C)):
                    update(j, d / 2, d / 4)
                for j in range(C):
                    self.eta[j] = self.eta[j] + p[j] * iQ[j] * d
                scale = scale * torch.exp(p[0] * iQ[0] * (-d))
                for j in range(C):
                    update(j, d / 2, d / 4)
        self.v.mul_(scale[self.batch].unsqueeze(-1))

    def thermostat_energy(self) -> torch.Tensor:
        """Energy-like term of the Nosé-Hoover chain per replica (kcal/mol)."""
        if self.thermostat != "nose-hoover":
            return torch.zeros(len(self._slots), dtype=self.dtype, device=self.device)
        e = self.ndof * self.kT * self.eta[0]
        for j in range(1, self.chain_length):
            e = e + self.kT * self.eta[j]
        for j in range(self.chain_length):
            e = e + 0.5 * self.p_eta[j] ** 2 / self.Q[j]
        return e

    # ------------------------------------------------------------------ one step
    def _maybe_rebuild_now(self) -> None:
        """Careful mode: the classic per-step Verlet-list test (host sync)."""
        ok = (self.fail_step < 0)[self.batch]
        d2 = torch.where(ok, ((self.x - self.x_ref) ** 2).sum(-1), torch.zeros((), dtype=self.dtype,
                                                                                  device=self.device))
        if float(torch.nan_to_num(d2, nan=0.0).max()) > (0.5 * self.skin) ** 2:
            self._build()

    def _step(self) -> None:
        dt = self.dt
        if self.thermostat == "langevin":
            noise = gaussian_noise(self.atom_seeds, self.step_count, self.local_index, 2, self.dtype)
            rnd_pos = self.c5 * noise[1]
            rnd_vel = self.c3 * noise[0] - self.c4 * noise[1]
            self.v.add_(self.c1 * self.f * self.inv_m_acc - self.c2 * self.v + rnd_vel)
            self.x.add_(dt * self.v + rnd_pos)
        else:
            if self.thermostat == "nose-hoover":
                self._nhc_half(0.5 * dt)
            self.v.add_(self.f * self.inv_m_acc, alpha=0.5 * dt)
            self.x.add_(self.v, alpha=dt)
        if self._careful:
            self._maybe_rebuild_now()
        self._compute()
        if self.thermostat == "langevin":
            self.v.add_(self.c1 * self.f * self.inv_m_acc - self.c2 * self.v + rnd_vel)
        else:
            self.v.add_(self.f * self.inv_m_acc, alpha=0.5 * dt)
            if self.thermostat == "nose-hoover":
                self._nhc_half(0.5 * dt)
        self.step_count += 1
        self._check()
        if not self._careful:
            ok = (self.fail_step < 0)[self.batch]
            d2 = ((self.x - self.x_ref) ** 2).sum(-1)
            d2 = torch.where(ok & torch.isfinite(d2), d2, torch.zeros((), dtype=self.dtype, device=self.device))
            self._dmax2 = torch.maximum(self._dmax2, d2.max())

    def _check(self) -> None:
        ke = 0.5 * self._ke2()
        failed, reason = evaluate(self.criteria, self.x, self.batch, len(self._slots), energy=self.e,
                                  kinetic_energy=ke, forces=self.f, edge_index=self._abatch.edge_index,
                                  edge_offsets=self._edge_offsets, max_pairs=self.max_pairs)
        new = failed & (self.fail_step < 0)
        self.fail_step = torch.where(new, torch.full_like(self.fail_step, self.step_count), self.fail_step)
        self.reason = torch.where(new, reason, self.reason)
        self._ke = ke

    # ------------------------------------------------------------------ records
    def _record(self, buf: dict) -> None:
        k = self.step_count
        if k % self.record_every == 0:
            ke = self._ke
            buf["steps"].append(k)
            # float64: absolute energies (~1e5 kcal/mol for DFT references) exceed float32's resolution
            buf["rows"].append(torch.stack([self.e, (2.0 * ke / (self.ndof * KB_KCAL_PER_MOL_K)).to(torch.float64),
                                            self.e + (ke + self.thermostat_energy()).to(torch.float64)]))
            if self.u is not None:
                buf["u"].append(self.u.to(self.dtype))
        if self.frame_every and k % self.frame_every == 0:
            buf["frame_steps"].append(k)
            buf["frames"].append(self.x.clone())

    def _commit(self, buf: dict, fail_step: np.ndarray) -> None:
        """Move a block's records to the host and into the replicas' records (up to their failure)."""
        rows = torch.stack(buf["rows"]).cpu().numpy() if buf["rows"] else None  # (T, 3, R)
        us = torch.stack(buf["u"]).to(torch.float64).cpu().numpy() if buf["u"] else None
        frames = torch.stack(buf["frames"]).cpu().numpy() if buf["frames"] else None
        n = self.n_atoms.cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(n)[:-1]])
        for r, slot in enumerate(self._slots):
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
            for t, k in enumerate(buf["frame_steps"]):
                if k > last:
                    break
                rec.frame_steps.append(k)
                rec.frames.append(frames[t, starts[r]:starts[r] + n[r]].copy())

    @staticmethod
    def _new_buffer() -> dict:
        return {"steps": [], "rows": [], "u": [], "frame_steps": [], "frames": []}

    # ------------------------------------------------------------------ snapshots and shrinking
    _STATE = ("x", "v", "f", "e", "u", "fail_step", "reason", "_ke")

    def _snapshot(self) -> dict:
        snap = {k: (None if getattr(self, k) is None else getattr(self, k).clone()) for k in self._STATE}
        snap["eta"] = [e.clone() for e in self.eta]
        snap["p_eta"] = [p.clone() for p in self.p_eta]
        snap["step_count"] = self.step_count
        return snap

    def _restore(self, snap: dict) -> None:
        for k in self._STATE:
            setattr(self, k, snap[k])
        self.eta, self.p_eta, self.step_count = snap["eta"], snap["p_eta"], snap["step_count"]

    def _remove(self, keep: np.ndarray) -> None:
        """Keep only the replicas (rows) in ``keep`` (bool, host)."""
        rows = torch.as_tensor(np.nonzero(keep)[0], device=self.device)
        atom_keep = torch.as_tensor(np.repeat(keep, self.n_atoms.cpu().numpy()), device=self.device)
        atoms = torch.nonzero(atom_keep).flatten()
        for name in ("x", "v", "f", "masses", "numbers"):
            setattr(self, name, getattr(self, name).index_select(0, atoms).contiguous())
        for name in ("n_atoms", "cell", "pbc", "kT", "seeds", "ndof", "fail_step", "reason", "e", "_ke"):
            setattr(self, name, getattr(self, name).index_select(0, rows))
        if self.u is not None:
            self.u = self.u.index_select(0, rows)
        self.eta = [e.index_select(0, rows) for e in self.eta]
        self.p_eta = [p.index_select(0, rows) for p in self.p_eta]
        self._slots = [s for s, k in zip(self._slots, keep) if k]
        self._derive()

    def _retire(self, rows: np.ndarray, fail_step: np.ndarray, reason: np.ndarray, survived: bool) -> None:
        x = self.x.detach().to(torch.float64).cpu().numpy()
        v = self.v.detach().to(torch.float64).cpu().numpy()
        n = self.n_atoms.cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(n)[:-1]])
        for r in rows:
            rec = self.records[self._slots[r]]
            sl = slice(starts[r], starts[r] + n[r])
            rec.final_positions, rec.final_velocities = x[sl].copy(), v[sl].copy()
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
        return len(self._slots)

    def run(self, n_steps: int) -> MDResult:
        """Advance every live replica by up to ``n_steps`` steps (stopping failed ones); returns the result of
        everything run so far (survivors counted as stable for the time simulated)."""
        t0 = time.perf_counter()
        target = self.step_count + int(n_steps)
        # the t = 0 record, and replicas that failed at the start
        self._sync(self._pending, None)
        self._pending = self._new_buffer()
        while self.step_count < target and self._slots:
            block = min(self.check_every - self.step_count % self.check_every, target - self.step_count)
            snap = self._snapshot()
            buf = self._new_buffer()
            self._dmax2.zero_()
            for _ in range(block):
                self._step()
                self._record(buf)
            half2 = (0.5 * self.skin) ** 2
            info = self._block_stats(snap["x"])  # the one host transfer of the block, with _sync's
            if info[0] > half2 and self.layout == "sparse":
                # the list went stale somewhere in the block: replay it exactly with per-step checks
                self.replays += 1
                move = math.sqrt(max(info[2], 0.0))
                if self.adapt_skin and 4.0 * move > self.skin and self.skin < self.cutoff:
                    new_skin = min(4.0 * move, self.cutoff)
                    log.info("atoms move %.3f Å per %d steps: Verlet skin %.3f -> %.3f Å", move, block,
                             self.skin, new_skin)
                    self.skin = new_skin
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
        self.wall_time += time.perf_counter() - t0
        return self.result()

    def _block_stats(self, x_start: torch.Tensor) -> np.ndarray:
        """(max squared displacement from the list's reference over the block, the same now, max squared
        movement since ``x_start``) over live replicas, on the host."""
        ok = (self.fail_step < 0)[self.batch]
        zero = torch.zeros((), dtype=self.dtype, device=self.device)

        def masked_max(d2):
            return torch.where(ok, d2, zero).nan_to_num(0.0).max() if d2.numel() else zero

        now = masked_max(((self.x - self.x_ref) ** 2).sum(-1))
        move = masked_max(((self.x - x_start) ** 2).sum(-1))
        return torch.stack([self._dmax2, now, move]).cpu().numpy()

    def _sync(self, buf: dict, info) -> None:
        fail_step = self.fail_step.cpu().numpy()
        reason = self.reason.cpu().numpy()
        self._commit(buf, fail_step)
        for r, slot in enumerate(self._slots):
            self.records[slot].steps_run = self.step_count if fail_step[r] < 0 else int(fail_step[r])
        failed = fail_step >= 0
        if failed.any():
            self._retire(np.nonzero(failed)[0], fail_step, reason, survived=False)
            self._remove(~failed)
            if self._slots:
                self._build()
            return
        if self.layout == "dense":  # all pairs: the list never goes stale
            return
        if info is None:
            if self.step_count > 0:
                self._build()
        else:
            disp, move = math.sqrt(max(info[1], 0.0)), math.sqrt(max(info[2], 0.0))
            if disp + 1.5 * move >= 0.5 * self.skin:
                self._build()

    def result(self) -> MDResult:
        """Records of every replica (finished or still running), in replica order."""
        for r, slot in enumerate(self._slots):
            rec = self.records[slot]
            rec.steps_run = self.step_count
        x = self.x.detach().to(torch.float64).cpu().numpy()
        v = self.v.detach().to(torch.float64).cpu().numpy()
        n = self.n_atoms.cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(n)[:-1]])
        for r, slot in enumerate(self._slots):
            rec = self.records[slot]
            rec.final_positions = x[starts[r]:starts[r] + n[r]].copy()
            rec.final_velocities = v[starts[r]:starts[r] + n[r]].copy()
        return MDResult(replicas=list(self.records), timestep_fs=self.dt, n_steps=self.step_count,
                        thermostat=self.thermostat, wall_time_s=self.wall_time, model_calls=self.model_calls,
                        neighbor_builds=self.neighbor_builds, replays=self.replays,
                        uncertainty_description=self.uncertainty_description)


def run_batched(model, structures: Sequence, n_steps: int, **kwargs) -> MDResult:
    """Convenience: ``BatchedMD(model, structures, **kwargs).run(n_steps)``."""
    return BatchedMD(model, structures, **kwargs).run(n_steps)
