"""Adversarial sampling (paper Eq. 15-16; SI section III).

Seeds x drawn from the training set are displaced by δ, found by gradient ascent on

    max_δ  p(x+δ) · U(x+δ)                                                    (Eq. 15)
    p(x+δ) = exp(−ê(x+δ)/kT) / Σ_{x'∈train} exp(−e(x')/kT)                      (Eq. 16)

with U each method's own uncertainty (σ²_F for ensemble and MVE, the epistemic variance for evidential
regression, the GMM's NLL), ê the predicted and e the reference energy **per atom, relative to the
minimum per-atom training energy** (kcal/mol/atom), kT in kcal/mol/atom (0.7 in the SI).

Implementation choices (each fixes a problem of the original code, see DESIGN.md):
- everything is in log space: log p = −ê/kT − logsumexp(−e_train/kT), evaluated in float64, so absolute DFT
  energies (~1e5 kcal/mol) and energies of 1e5 kcal/mol above the minimum neither overflow nor underflow;
- the ascent maximises log p + log U, which has the same maximiser as p·U (log is monotonic) but does not
  lose its gradient where p underflows;
- a signed U (the GMM's NLL, negative in 128 dimensions) is shifted by its minimum over the training set,
  U' = U − min_train U + ε: with U < 0 the product p·U would be maximised by *lowering* p, i.e. by driving the
  structure to high energy;
- the displacement is applied once to the original coordinates each step (x + δ), never re-added to
  already moved coordinates; periodic cells are wrapped and neighbour lists rebuilt as atoms move;
- all seeds are attacked at once as one batch (one model call per step), with Adam on δ.

Learning rate: the SI's 5e-5 (ammonia) / 3e-5 (silica) were used with an update that re-added δ to the
already displaced coordinates at every step, so after n steps the structure had moved by about
lr·n(n+1)/2 per unit step; the correct update moves by lr·n.  uqpot's defaults, 2e-3 Å (ammonia) and
1.2e-3 Å (silica) = SI lr · (80 + 1)/2, reproduce the SI's displacements with the correct update.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import numpy as np
import torch
from pydantic import Field, field_validator

from ..core import fields as F
from ..data.batch import collate
from ..data.neighbors import neighbor_list
from ..data.structures import Structure, StructureDataset
from ..evaluation.predict import predict
from ..core.progress import LogProgress
from ..core.schema import Strict
from ..uq import method_class
from .base import Proposal, Sampler, SamplingContext, register_sampler

def paper_equivalent_lr(si_lr: float, iterations: int = 80) -> float:
    """The step that gives, with δ applied once, the displacement the SI's re-adding update gave."""
    return si_lr * (iterations + 1) / 2


class AttackSettings(Strict):
    """``attack``: the adversarial sampler's settings in a loop config (SI Sec. III)."""

    kT: float = Field(0.7, gt=0.0)  # kcal/mol/atom
    iterations: int = Field(80, ge=1)  # SI Sec. III: 80 iterations, for every method
    # a different number for evidential models (uqpot's option, not the SI's: unset = ``iterations``)
    iterations_evidential: Optional[int] = Field(None, ge=1)
    lr: float = Field(2.0e-3, gt=0.0)  # Å per step; see the module docstring on the SI's 5e-5
    n_seeds: int = Field(20, ge=1)
    # kcal/mol above the training minimum; one value, or one per attacked generation (silica: 5000, 10000)
    energy_cutoff: Optional[Union[float, list[float]]] = 100.0

    @field_validator("energy_cutoff")
    @classmethod
    def _cutoffs(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an empty list: give one cut-off (kcal/mol), one per attacked generation, or null "
                             "for none")
        return v
    dedup_rmsd: float = Field(0.01, ge=0.0)
    min_displacement: float = Field(1e-3, ge=0.0)
    # where the attack's starting structures, the Boltzmann partition function (Eq. 16) and the energy
    # cut-off's reference (its minimum) come from: "initial", the paper's (Sec. 2.4: "randomly chosen
    # structures, x from the initial training data"; Eq. 16 sums over the initial training data), i.e.
    # every structure of ``data.train`` (training and validation pools of generation 1, the 78 geometries of
    # the ammonia set); or "current", the generation's own training split (earlier adversarial samples
    # included), which moves the reference as the data grows
    seed_pool: Literal["initial", "current"] = "initial"

    def cutoff_for(self, generation: int) -> float | None:
        """The energy cut-off of ``generation`` (the last of a list holds for later ones)."""
        c = self.energy_cutoff
        if isinstance(c, list):
            return c[min(generation - 1, len(c) - 1)] if c else None
        return c


@dataclass
class AttackConfig:
    """The resolved parameters of one :func:`attack` call (one generation's cut-off and seed, the method's
    number of iterations): built from :class:`AttackSettings` by :meth:`AdversarialSampler.run_config`."""

    kT: float = 0.7  # kcal/mol/atom
    iterations: int = 80  # the SI: 80 (60 for evidential)
    lr: float = paper_equivalent_lr(5e-5)  # Å per Adam step (the SI's ammonia rate; a system's: its attack_lr)
    n_seeds: int = 20  # the SI: 20 (ammonia), 100 (silica)
    energy_cutoff: float | None = 100.0  # kcal/mol above the training minimum (total energy)
    dedup_rmsd: float = 0.01  # Å: samples closer than this to another are dropped
    min_displacement: float = 1e-3  # Å: samples that did not move from their seed are dropped
    shift_signed: bool = True
    seed: int = 0

    def __post_init__(self):
        for name in ("kT", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"attack.{name} must be > 0")
        if self.iterations < 1 or self.n_seeds < 1:
            raise ValueError("attack.iterations and attack.n_seeds must be >= 1")


@dataclass
class BoltzmannReference:
    """The training set's side of Eq. 16: the minimum per-atom energy and log Σ exp(−e/kT)."""

    e_min: float  # kcal/mol/atom
    log_z: float
    kT: float

    @classmethod
    def from_energies(cls, energies, n_atoms, kT: float) -> "BoltzmannReference":
        e = np.asarray(energies, dtype=np.float64) / np.asarray(n_atoms, dtype=np.float64)
        e_min = float(e.min())
        x = -(e - e_min) / kT
        log_z = float(x.max() + np.log(np.exp(x - x.max()).sum()))
        return cls(e_min, log_z, kT)

    def log_p(self, energy: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        """log p of Eq. 16 for predicted total energies (B,), in float64."""
        e = energy.to(torch.float64) / n_atoms.to(torch.float64) - self.e_min
        return -e / self.kT - self.log_z


@dataclass
class AttackResult:
    samples: list[Structure]  # accepted, unlabelled structures (info: seed index, U, energies, reason)
    rejected: list[dict]  # seed index and reason for every dropped candidate
    history: dict = field(default_factory=dict)  # per iteration, per seed: objective, U, energy


def _wrap(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    if not pbc.any():
        return positions
    frac = np.linalg.solve(cell.T, positions.T).T
    frac[:, pbc] = frac[:, pbc] % 1.0
    return frac @ cell


def _batch_at(structures: list[Structure], positions: np.ndarray, cutoff: float, dtype, device):
    """A batch of the structures at new positions, wrapped, with fresh neighbour lists."""
    moved, nbrs, offset = [], [], 0
    for s in structures:
        p = _wrap(positions[offset:offset + s.n_atoms], s.cell, s.pbc)
        offset += s.n_atoms
        t = Structure(s.numbers, p, s.cell, s.pbc)
        moved.append(t)
        nbrs.append(neighbor_list(p, s.cell, s.pbc, cutoff))
    return moved, collate(moved, nbrs, dtype=dtype, device=device)


def signed_shift(model, train: StructureDataset, batch_size: int = 64) -> float:
    """min over the training structures of a signed U (used to make it positive)."""
    u = predict(model, train, batch_size=batch_size, keys=(F.UNCERTAINTY,))[F.UNCERTAINTY]
    return float(np.min(u))


def attack(model, seeds: list[Structure], reference: BoltzmannReference, cfg: AttackConfig,
           u_shift: float = 0.0, progress=None) -> AttackResult:
    """Displace all ``seeds`` at once by gradient ascent on log p + log U (Eq. 15-16)."""
    device, dtype = model.device, model.dtype
    model.eval()
    x0 = np.concatenate([s.positions for s in seeds])
    n_atoms = torch.tensor([s.n_atoms for s in seeds], device=device)
    delta = torch.zeros(x0.shape, dtype=dtype, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    x0_t = torch.as_tensor(x0, dtype=dtype, device=device)
    hist = {"objective": [], "uncertainty": [], "energy": []}
    eps = 1e-12
    log_progress = LogProgress(f"adversarial attack on {len(seeds)} seeds", cfg.iterations, "iterations")
    for it in range(cfg.iterations + 1):
        pos = x0_t + delta  # δ applied once to the original coordinates
        moved, batch = _batch_at(seeds, pos.detach().cpu().double().numpy(), model.cutoff, dtype, device)
        pos = pos + (batch.positions - pos).detach()  # wrapping is a constant (lattice) shift
        out = model(batch.with_positions(pos), compute_forces=model.needs_forces_for_uncertainty,
                    create_graph=True)
        u = out[F.UNCERTAINTY].to(torch.float64)
        if getattr(model, "signed_uncertainty", False) and cfg.shift_signed:
            u = u - u_shift
        log_p = reference.log_p(out[F.ENERGY], n_atoms)
        objective = log_p + torch.log(torch.clamp(u, min=eps))
        hist["objective"].append(objective.detach().cpu().numpy())
        hist["uncertainty"].append(out[F.UNCERTAINTY].detach().cpu().double().numpy())
        hist["energy"].append(out[F.ENERGY].detach().cpu().double().numpy())
        if it == cfg.iterations:
            break
        opt.zero_grad()
        (-objective.sum()).backward()
        opt.step()
        if progress is not None:
            progress(it + 1, cfg.iterations)
        log_progress.update(it + 1)
    hist = {k: np.stack(v) for k, v in hist.items()}
    return _select(seeds, moved, hist, reference, cfg)


def displacement(final: Structure, start: Structure) -> np.ndarray:
    """``final − start`` (Å, per atom), modulo lattice vectors of a periodic cell."""
    disp = final.positions - start.positions
    if start.periodic:
        frac = np.linalg.solve(start.cell.T, disp.T).T
        frac[:, start.pbc] -= np.round(frac[:, start.pbc])
        disp = frac @ start.cell
    return disp


def _select(seeds, final, hist, reference, cfg) -> AttackResult:
    samples, rejected = [], []
    e_final, u_final = hist["energy"][-1], hist["uncertainty"][-1]
    kept_pos = []
    for k, (s0, s) in enumerate(zip(seeds, final)):
        e_rel = float(e_final[k] - reference.e_min * s.n_atoms)  # kcal/mol above the training minimum
        disp = displacement(s, s0)
        reason = None
        if not np.all(np.isfinite(s.positions)) or not math.isfinite(e_rel):
            reason = "non-finite"
        elif cfg.energy_cutoff is not None and e_rel > cfg.energy_cutoff:
            reason = f"predicted energy {e_rel:.1f} kcal/mol above the cut-off {cfg.energy_cutoff}"
        elif np.abs(disp).max() < cfg.min_displacement:
            reason = "did not move"
        else:
            for j, p in kept_pos:
                if p.shape == s.positions.shape and np.sqrt(np.mean((p - s.positions) ** 2)) < cfg.dedup_rmsd:
                    reason = f"near-duplicate of sample from seed {j}"
                    break
        if reason:
            rejected.append({"seed": k, "reason": reason})
            continue
        kept_pos.append((k, s.positions))
        s.info = {"attack_seed": k, "source_frame": s0.frame if s0.frame is not None else -1,
                  "predicted_energy_rel": e_rel, "uncertainty": float(u_final[k]),
                  "rmsd_from_seed": float(np.sqrt(np.mean(disp ** 2)))}
        samples.append(s)
    return AttackResult(samples, rejected, hist)


def draw_seeds(train: StructureDataset, n: int, seed: int) -> list[Structure]:
    """n distinct training structures (all of them if n >= len(train)), reproducibly."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(train), size=min(n, len(train)), replace=False)
    return [train[int(i)] for i in sorted(idx)]


@register_sampler("adversarial")
class AdversarialSampler(Sampler):
    """The paper's attack (Eq. 15-16): ``n_seeds`` structures of the pool, displaced by gradient ascent on
    p·U; the pool's energies are the Boltzmann reference and the cut-off's zero."""

    settings = AttackSettings
    section = "attack"

    @staticmethod
    def run_config(a: AttackSettings, method: str, energy_cutoff: float | None, seed: int) -> AttackConfig:
        """One generation's :class:`AttackConfig` for UQ method ``method`` (its number of iterations: the
        settings' key the method names, ``attack_iterations``)."""
        return AttackConfig(kT=a.kT, iterations=getattr(a, method_class(method).attack_iterations) or a.iterations,
                            lr=a.lr, n_seeds=a.n_seeds, energy_cutoff=energy_cutoff, dedup_rmsd=a.dedup_rmsd,
                            min_displacement=a.min_displacement, seed=seed)

    def propose(self, ctx: SamplingContext) -> Proposal:
        a, train, model = ctx.settings, ctx.pool, ctx.model
        cfg = self.run_config(a, ctx.method, ctx.energy_cutoff, ctx.seed)
        ref = BoltzmannReference.from_energies(train.energies(), [s.n_atoms for s in train], cfg.kT)
        shift = signed_shift(model, train, ctx.batch_size) if model.signed_uncertainty else 0.0
        seeds = draw_seeds(train, cfg.n_seeds, cfg.seed)
        t0 = time.perf_counter()
        res = attack(model, seeds, ref, cfg, u_shift=shift)
        rec = {"n_seeds": len(seeds), "n_candidates": len(res.samples), "rejected": res.rejected,
               "kT": cfg.kT, "iterations": cfg.iterations, "lr": cfg.lr, "energy_cutoff": cfg.energy_cutoff,
               "seconds": round(time.perf_counter() - t0, 2), "u_shift": shift,
               "reference_e_min_per_atom": ref.e_min, "seed_pool": a.seed_pool, "pool_size": len(train)}
        return Proposal(res.samples, rec, res.history,
                        f"attack gave {len(res.samples)} candidates from {len(seeds)} seeds")
