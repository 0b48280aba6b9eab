"""Integrators of the batched MD engine, one small interface (:class:`Integrator`) shared with the ASE
cross-check: each scheme advances every replica in one tensor and names the ASE dynamics it reproduces
(:meth:`Integrator.ase_dynamics`), so that the campaign's ASE engine runs exactly the same scheme.

A step is ``first_half`` (everything up to the new positions) → one model call → ``second_half``.

* :class:`VelocityVerlet` (``"nve"``): ASE's :class:`~ase.md.verlet.VelocityVerlet`.
* :class:`Langevin` (``"langevin"``): ASE's :class:`ase.md.langevin.Langevin` scheme (Vanden-Eijnden &
  Ciccotti 2006, their Eq. 23; no centre-of-mass correction), friction ``friction_per_fs``.  Its Gaussian
  noise comes from a counter-based generator (:func:`gaussian_noise`) keyed on (replica seed, step, atom,
  component), so a replica sees the same noise whatever batch it runs in, on CPU or GPU, and a replayed block
  is reproduced exactly.
* :class:`NoseHooverChain` (``"nose-hoover"``): a Nosé-Hoover chain (Martyna, Klein & Tuckerman 1992), the
  chain integrated by Trotter factorisation with the 3-term Suzuki-Yoshida scheme around velocity Verlet,
  exactly as ASE's :class:`ase.md.nose_hoover_chain.NoseHooverChainNVT` (thermostat masses
  Q₁ = N_f k_B T τ², Q_j = k_B T τ², N_f = 3N, τ = ``tdamp_fs``).  Its energy-like term
  N_f k_B T η₁ + k_B T Σ_{j>1} η_j + Σ p_η²/2Q enters the conserved quantity.

Units: kcal/mol, Å, fs, amu; velocities Å/fs (:data:`uqpot.core.units.FORCE_TO_ACCELERATION` turns kcal/mol/Å/amu
into Å/fs²).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

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


# ----------------------------------------------------------------------------------------- schemes
class Integrator:
    """One time step in two halves around the force call, for every replica of a
    :class:`~uqpot.md.state.ReplicaState` at once.  An integrator may keep per-replica state of its own (a
    thermostat's variables): :meth:`select` keeps rows of it when replicas leave, :meth:`snapshot` /
    :meth:`restore` save and reset it for an exact replay."""

    name = ""

    def start(self, st) -> None:
        """Creates the integrator's own per-replica state (called once, before the first step)."""

    def bind(self, st) -> None:
        """Per-replica constants from the state (at the start and after every change of the batch)."""

    def first_half(self, st, step: int) -> None:
        raise NotImplementedError

    def second_half(self, st) -> None:
        raise NotImplementedError

    def energy(self, st) -> torch.Tensor:
        """The integrator's energy-like term per replica (kcal/mol), part of the conserved quantity."""
        return torch.zeros(st.n_replicas, dtype=st.dtype, device=st.device)

    def select(self, rows: torch.Tensor) -> None:
        """Keeps the rows ``rows`` of the integrator's own per-replica state."""

    def snapshot(self):
        return None

    def restore(self, snap) -> None:
        pass

    def ase_dynamics(self, atoms, timestep_fs: float, temperature_K: float, seed: int):
        """The same scheme as an ASE dynamics object on ``atoms`` (the campaign's ASE engine)."""
        raise NotImplementedError


class VelocityVerlet(Integrator):
    name = "nve"

    def first_half(self, st, step):
        st.v.add_(st.f * st.inv_m_acc, alpha=0.5 * st.dt)
        st.x.add_(st.v, alpha=st.dt)

    def second_half(self, st):
        st.v.add_(st.f * st.inv_m_acc, alpha=0.5 * st.dt)

    def ase_dynamics(self, atoms, timestep_fs, temperature_K, seed):
        from ase import units
        from ase.md.verlet import VelocityVerlet as AseVV

        return AseVV(atoms, timestep=timestep_fs * units.fs)


class Langevin(Integrator):
    """ASE's Langevin scheme with counter-based noise.  ``friction_per_fs``: γ (1/fs)."""

    name = "langevin"

    def __init__(self, friction_per_fs: float = 0.01):
        self.friction = float(friction_per_fs)

    def bind(self, st):
        dt, fr = st.dt, self.friction
        sigma = torch.sqrt(2.0 * st.kT[st.batch] * fr * st.force_to_acc / st.masses).unsqueeze(-1)
        self.c1 = dt / 2.0 - dt * dt * fr / 8.0
        self.c2 = dt * fr / 2.0 - dt * dt * fr * fr / 8.0
        self.c3 = math.sqrt(dt) * sigma / 2.0 - dt ** 1.5 * fr * sigma / 8.0
        self.c5 = dt ** 1.5 * sigma / (2.0 * math.sqrt(3.0))
        self.c4 = fr / 2.0 * self.c5
        self.atom_seeds = st.seeds[st.batch]

    def first_half(self, st, step):
        noise = gaussian_noise(self.atom_seeds, step, st.local_index, 2, st.dtype)
        rnd_pos = self.c5 * noise[1]
        self._rnd_vel = self.c3 * noise[0] - self.c4 * noise[1]
        st.v.add_(self.c1 * st.f * st.inv_m_acc - self.c2 * st.v + self._rnd_vel)
        st.x.add_(st.dt * st.v + rnd_pos)

    def second_half(self, st):
        st.v.add_(self.c1 * st.f * st.inv_m_acc - self.c2 * st.v + self._rnd_vel)

    def ase_dynamics(self, atoms, timestep_fs, temperature_K, seed):
        from ase import units
        from ase.md.langevin import Langevin as AseLangevin

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return AseLangevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                               friction=self.friction / units.fs, fixcm=False, rng=np.random.default_rng(seed))


class NoseHooverChain(Integrator):
    """Nosé-Hoover chain NVT around velocity Verlet.  ``tdamp_fs``: τ (fs); ``chain_length`` (3);
    ``chain_steps`` (ASE's ``tloop``, 1)."""

    name = "nose-hoover"

    def __init__(self, tdamp_fs: float, chain_length: int = 3, chain_steps: int = 1):
        if tdamp_fs <= 0 or chain_length < 1 or chain_steps < 1:
            raise ValueError("need tdamp_fs > 0, chain_length >= 1, chain_steps >= 1")
        self.tdamp, self.chain_length, self.chain_steps = float(tdamp_fs), int(chain_length), int(chain_steps)

    def start(self, st):
        z = lambda: torch.zeros(st.n_replicas, dtype=st.dtype, device=st.device)  # noqa: E731
        self.eta = [z() for _ in range(self.chain_length)]
        self.p_eta = [z() for _ in range(self.chain_length)]

    def bind(self, st):
        tau2 = self.tdamp ** 2
        self.Q = [st.ndof * st.kT * tau2] + [st.kT * tau2 for _ in range(self.chain_length - 1)]
        self.inv_Q = [1.0 / q for q in self.Q]
        self.ndof_kT = st.ndof * st.kT
        self.kT = st.kT

    def _half(self, st, delta: float) -> None:
        """exp(iL_NHC δ) of ASE's NoseHooverChainThermostat.integrate_nhc, for every replica at once.

        Per Suzuki-Yoshida sub-step d: p_η,j ← (p_η,j·s + d/2·G_j)·s with s = exp(−d/4·p_η,j+1/Q_j+1)
        (ASE's two multiplications by s around the kick), from the end of the chain to its start; η += d·p_η/Q;
        velocities scaled by exp(−d·p_η,1/Q_1); the chain again from its start to its end.  The velocity
        scaling is accumulated per replica (the kinetic energy follows as K·scale²) and applied once."""
        C = self.chain_length
        p, iQ, kT = self.p_eta, self.inv_Q, self.kT
        ke2_0 = st.ke2()
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
        st.v.mul_(scale[st.batch].unsqueeze(-1))

    def first_half(self, st, step):
        self._half(st, 0.5 * st.dt)
        VelocityVerlet.first_half(self, st, step)

    def second_half(self, st):
        VelocityVerlet.second_half(self, st)
        self._half(st, 0.5 * st.dt)

    def energy(self, st):
        e = self.ndof_kT * self.eta[0]
        for j in range(1, self.chain_length):
            e = e + self.kT * self.eta[j]
        for j in range(self.chain_length):
            e = e + 0.5 * self.p_eta[j] ** 2 / self.Q[j]
        return e

    def select(self, rows):
        self.eta = [e.index_select(0, rows) for e in self.eta]
        self.p_eta = [p.index_select(0, rows) for p in self.p_eta]

    def snapshot(self):
        return [e.clone() for e in self.eta], [p.clone() for p in self.p_eta]

    def restore(self, snap):
        self.eta, self.p_eta = snap

    def ase_dynamics(self, atoms, timestep_fs, temperature_K, seed):
        from ase import units
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                                  tdamp=self.tdamp * units.fs, tchain=self.chain_length, tloop=self.chain_steps)


def make_integrator(thermostat: str, *, timestep_fs: float, tdamp_fs: float | None = None, chain_length: int = 3,
                    chain_steps: int = 1, friction_per_fs: float = 0.01) -> Integrator:
    """The integrator named ``thermostat`` (one of :data:`THERMOSTATS`); τ defaults to 100 time steps
    (ASE's recommendation; the paper does not give its damping time)."""
    if thermostat == "nose-hoover":
        return NoseHooverChain(tdamp_fs if tdamp_fs is not None else 100.0 * timestep_fs, chain_length, chain_steps)
    if thermostat == "langevin":
        return Langevin(friction_per_fs)
    if thermostat == "nve":
        return VelocityVerlet()
    raise ValueError(f"unknown thermostat {thermostat!r}; use one of {', '.join(THERMOSTATS)}")
