"""Shallow ensemble (Kellner & Ceriotti 2024): K readout heads on one shared PaiNN backbone.

Architecture.  Head 0 is the potential's own readout; heads 1..K−1 are readouts of the same shape
(F → H → 1, activation as the potential), each initialised from its own seed.  Every head k gives atomic
energies e_k,i = s·MLP_k(ξ_i) from the same features ξ (s: the potential's force scale), energies
E_k = Σ_i e_k,i + e_ref and forces F_k = −∂E_k/∂r.  The heads are a head axis on the readout only (the
backbone runs once); their K force fields come from K vector-Jacobian products through the backbone, one
per head for the whole batch (:func:`uqpot.nn.response.stacked_forces`).

Prediction: Ē = mean_k E_k, F̄ = mean_k F_k.  Uncertainty: the variance of the forces over heads with the
1/(K−1) estimator, averaged over the Cartesian components per atom,

    U_i = ⅓ Σ_a Var_k(F_k,ia),   U(x) = reduction over atoms   (in (kcal/mol/Å)², like the ensemble's σ²_F).

Training, in two stages (the efficient protocol of Schäfer, Kellner, Kästner & Ceriotti 2026, "How to
train a shallow ensemble": fine-tune a model trained with a cheaper objective on the force NLL):

1. The trainer (``make_loss``): SI Eq. 1 on the heads' mean, w_E · MAE(Ē) + w_F · MAE(F̄), with
   F̄ = −∂Ē/∂r from one backward pass — a training step costs what one PaiNN's does (plus K − 1 small heads).
2. A trainer stage (``stages``, run by :func:`uqpot.train.stages.run_stage` after training, before the
   calibration): ``nll_epochs`` epochs of full-model fine-tuning (Adam, ``nll_lr``, batches of
   ``nll_batch_size``) on a Gaussian NLL of every force component under the heads' mean and spread, keeping
   the epoch with the lowest validation loss (or the trained model, epoch 0, if none improves on it):

       σ²_ia = Var_k(F_k,ia) + σ²_min                      (1/(K−1) estimator),
       NLL_F = mean_ia [½ log(2π σ²_ia) + (F_ia − sg(F̄_ia))² / (2σ²_ia)],
       L     = w_E · MAE(Ē) + w_F · [MAE(F̄) + NLL_F],

   with w_E, w_F the run's configured loss weights (``train.energy_weight``, ``train.forces_weight``; the
   SI's 0.1 and 1 by default), σ²_min = ``min_variance`` (kcal/mol/Å)² and sg a stop-gradient.  Each step needs the K per-head forces (K VJPs), hence the short fine-tuning.  The two
   parts act on different things: ∂Var_k/∂F_k ∝ F_k − F̄ sums to zero over the heads, so the NLL moves the
   spread of the heads (they disagree where the mean force is poorly predicted — the force-aware NLL; an
   energy-only NLL leaves the force spread uncalibrated), while the MAE, whose gradient is the same for every
   head, moves the mean.

Why not the NLL from the start: with random heads the spread (~1) is far below the squared residuals of an
untrained model (~400 (kcal/mol/Å)²), the NLL's gradients (∝ r²/σ⁴) swamp everything else in the shared
backbone, and the mean force does not learn — on ethanol the training force MAE stayed at ~20 kcal/mol/Å
(the untrained value) over 24 steps with the NLL (also with it scaled by 0.01), while the same steps with
the MAE alone brought it to 11.

Cost: one backbone forward; the per-head forces (inference, fine-tuning) take K backward passes through the
backbone (no K-fold forward, no K-fold parameters); the measured ratios are reported by
``benchmarks/uq_methods.py --cost``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..core import fields as F
from ..nn import response
from ..nn.layers import activation
from ..nn.stacked import StackedLinear, init_members
from ..train.losses import energy_mae, forces_mae
from ..train.stages import Stage
from .base import UQMethod, reduce_atoms, register_method
from .options import UQOptions

HEAD_SEED_OFFSET = 3_000_017


class ShallowEnsembleOptions(UQOptions):
    """``uq: {method: shallow_ensemble, heads, min_variance, nll_epochs, nll_lr, nll_batch_size}``."""

    method: Literal["shallow_ensemble"] = "shallow_ensemble"
    heads: int = Field(8, ge=2, description="readout heads on the shared backbone")
    min_variance: float = Field(1e-4, gt=0.0, description="floor σ²_min of the heads' force variance, (kcal/mol/Å)²")
    nll_epochs: int = Field(10, ge=0, description="epochs of force-NLL fine-tuning after training")
    nll_lr: float = Field(1e-4, gt=0.0, description="learning rate of the NLL fine-tuning")
    nll_batch_size: int = Field(16, ge=1, description="batch size of the NLL fine-tuning")


class ExtraHeads(nn.Module):
    """n heads F → H → 1 evaluated together: one F → n·H layer and a block-diagonal n·H → n layer.

    Parameters carry the leading member axis of size 1 (the trainer's per-member optimiser); each head is
    initialised like PyTorch's default Linear (U(±1/√n_in) for weights and biases)."""

    def __init__(self, n_heads: int, n_in: int, hidden: int, act: str):
        super().__init__()
        self.n_heads, self.hidden = n_heads, hidden
        self.lin1 = StackedLinear(1, n_in, n_heads * hidden)
        self.act = activation(act)
        self.weight2 = nn.Parameter(torch.empty(1, n_heads, hidden))
        self.bias2 = nn.Parameter(torch.empty(1, n_heads))

    def init_member(self, m: int, generator: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(self.hidden)
        with torch.no_grad():
            w = torch.rand(self.n_heads, self.hidden, generator=generator, dtype=torch.float64) * 2 - 1
            b = torch.rand(self.n_heads, generator=generator, dtype=torch.float64) * 2 - 1
            self.weight2[m].copy_(w * bound)
            self.bias2[m].copy_(b * bound)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(1, N, F) → (1, N, n_heads)."""
        h = self.act(self.lin1(features))
        h = h.view(*h.shape[:-1], self.n_heads, self.hidden)
        return torch.einsum("mnkh,mkh->mnk", h, self.weight2) + self.bias2.unsqueeze(1)


@register_method("shallow_ensemble")
class ShallowEnsemble(UQMethod):
    stacks_replicates = False  # one network stacks its own branches on the member axis
    colour = "#8c564b"
    options = ShallowEnsembleOptions
    uncertainty_description = "force variance over the heads of a shallow ensemble, (kcal/mol/Å)²"
    needs_forces_for_uncertainty = True

    def __init__(self, potential: dict, reduction: str = "mean", heads: int = 8, min_variance: float = 1e-4,
                 nll_epochs: int = 10, nll_lr: float = 1e-4, nll_batch_size: int = 16):
        super().__init__(potential, reduction)
        if self.members != 1:
            raise ValueError("a shallow ensemble shares one backbone (members = 1); its size is uq.heads")
        if int(heads) < 2:
            raise ValueError("a shallow ensemble needs at least 2 heads")
        p = self.potential.hparams
        if int(nll_epochs) < 0 or not nll_lr > 0 or int(nll_batch_size) < 1:
            raise ValueError("shallow ensemble: nll_epochs >= 0, nll_lr > 0 and nll_batch_size >= 1")
        self.heads, self.min_variance = int(heads), float(min_variance)
        self.nll_epochs, self.nll_lr, self.nll_batch_size = int(nll_epochs), float(nll_lr), int(nll_batch_size)
        self.extra_heads = ExtraHeads(self.heads - 1, p["features"], p["readout_hidden"], p["activation"])
        init_members(self.extra_heads, [p["seeds"][0] + HEAD_SEED_OFFSET])

    def method_hparams(self) -> dict:
        return {"heads": self.heads, "min_variance": self.min_variance, "nll_epochs": self.nll_epochs,
                "nll_lr": self.nll_lr, "nll_batch_size": self.nll_batch_size}

    def forward(self, batch, compute_forces: bool = True, create_graph: bool | None = None,
                retain_graph: bool | None = None) -> dict:
        out = self.forward_members(batch, compute_forces, create_graph, retain_graph, head_forces=True)
        res = self.combine(out, batch)
        res[F.UNCERTAINTY] = reduce_atoms(res[F.UNCERTAINTY_ATOM], batch, self.reduction)
        return res

    def forward_members(self, batch, compute_forces=True, create_graph=None, retain_graph=None,
                        head_forces: bool = False) -> dict:
        """Outputs with the member axis (M = 1): mean energy (1, B) and forces (1, N, 3), and per head
        ``energy_members`` (1, K, B), ``atomic_energy_members`` (1, K, N) and, with ``head_forces``,
        ``forces_members`` (1, K, N, 3) (K VJPs; without, F̄ = −∂Ē/∂r takes one)."""
        create_graph = self.training if create_graph is None else create_graph
        with response.tracking(batch.positions, compute_forces):
            pos = response.leaf(batch.positions, compute_forces)
            batch = batch.with_positions(pos)
            out = self.potential.forward_members(batch, compute_forces=False)
            s = out[F.FEATURES]  # (1, N, F)
            e_extra = self.extra_heads(s) * self.potential.energy_scale  # (1, N, K-1)
            e_atom = torch.cat([out[F.ATOMIC_ENERGY].unsqueeze(-1), e_extra], dim=-1).transpose(1, 2)  # (1, K, N)
            e_res = e_atom.new_zeros(1, self.heads, batch.num_structures).index_add(2, batch.batch, e_atom)
            ref = self.potential.reference_energy(batch)
            res = {F.FEATURES: s, F.ATOMIC_ENERGY_MEMBERS: e_atom, F.ATOMIC_ENERGY: e_atom.mean(1),
                   F.ENERGY_MEMBERS: e_res.to(torch.float64) + ref, F.ENERGY_RESIDUAL: e_res.mean(1)}
            res[F.ENERGY] = res[F.ENERGY_MEMBERS].mean(1)
            if compute_forces and head_forces:
                res[F.FORCES_MEMBERS] = response.stacked_forces(e_res[0], pos, create_graph=create_graph).unsqueeze(0)
                res[F.FORCES] = res[F.FORCES_MEMBERS].mean(1)
            elif compute_forces:
                res[F.FORCES] = response.forces(e_res.mean(1), pos, create_graph, retain_graph).unsqueeze(0)
        return res

    # the trainer uses the base class's loss: SI Eq. 1 on the heads' mean (stage 1)

    def stages(self, train_cfg) -> list:
        """Stage 2: ``nll_epochs`` epochs of force-NLL fine-tuning with the run's loss weights; keeps the
        epoch with the lowest validation loss."""
        loss = ShallowEnsembleLoss(train_cfg.energy_weight, train_cfg.forces_weight, self.min_variance)
        return [Stage("force-NLL fine-tuning", loss, self.nll_epochs, self.nll_lr, self.nll_batch_size,
                      seed=int(self.potential.hparams["seeds"][0]), forward_kwargs={"head_forces": True})]

    def combine(self, out: dict, batch) -> dict:
        return combine_heads(out)


def combine_heads(out: dict) -> dict:
    """Outputs of one network with K heads or members on a second axis (``*_members`` (1, K, ...)) → the
    committee's prediction and U: the force variance over the K (1/(K−1) estimator), averaged over the
    Cartesian components, or without forces the variance of the atomic energies."""
    res = {k: v.squeeze(0) for k, v in out.items()}
    res[F.ENERGY_VARIANCE] = res[F.ENERGY_MEMBERS].var(0, correction=1)
    if F.FORCES_MEMBERS in res:
        res[F.UNCERTAINTY_ATOM] = res[F.FORCES_MEMBERS].var(0, correction=1).mean(-1)
    else:  # without forces, the spread of the atomic energies
        res[F.UNCERTAINTY_ATOM] = res[F.ATOMIC_ENERGY_MEMBERS].var(0, correction=1)
    return res


class ShallowEnsembleLoss:
    """w_E · MAE(Ē) + w_F · [MAE(F̄) + NLL_F] with the heads' mean and variance per force component, the
    mean stopped in the NLL (module docstring)."""

    #: the labels this loss trains on (no stress term)
    targets = ("energy", "forces")

    def __init__(self, energy_weight: float = 0.1, forces_weight: float = 1.0, min_variance: float = 1e-4):
        self.energy_weight, self.forces_weight = float(energy_weight), float(forces_weight)
        self.min_variance = float(min_variance)

    def __call__(self, pred: dict, batch) -> tuple[torch.Tensor, dict]:
        fk = pred[F.FORCES_MEMBERS]  # (M, K, N, 3)
        mu = fk.mean(1)
        var = fk.var(1, correction=1) + self.min_variance
        nll = (0.5 * torch.log(2 * math.pi * var) + (batch.forces - mu.detach()).pow(2) / (2 * var)).mean((-1, -2))
        f_err = forces_mae(mu, batch.forces)
        e_err = energy_mae(pred[F.ENERGY], batch.energy)
        loss = self.energy_weight * e_err.to(nll.dtype) + self.forces_weight * (f_err + nll)
        return loss, {"energy_mae": e_err.detach(), "forces_mae": f_err.detach(), "forces_nll": nll.detach()}
