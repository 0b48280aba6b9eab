"""Partially shared ensemble: K PaiNN members that share the embedding and the first ``shared`` interaction
blocks and split after them (TreeNets, Lee, Purushwalkam, Cogswell, Crandall & Batra 2015, "Why M heads are
better than one": ensembles whose members share the lower layers and branch at a chosen depth).

The split point spans the range between the two ensembles uqpot already has: ``shared = 0`` shares only
the atom embedding and the radial basis (every interaction block, filter and readout is the member's own;
the nearest to the deep ensemble, which shares nothing), ``shared = I`` (the number of interactions) shares
the whole representation and splits at the readout (the shallow ensemble's architecture, trained here as an
ensemble).  Shared: the embedding, the learnable Gaussians, the filters and the message/update blocks of
the first ``shared`` interactions; per member: the filters and blocks of the other interactions and the
atomwise readout.

Member k gives atomic energies e_k,i from its branch, E_k = Σ_i e_k,i + e_ref, F_k = −∂E_k/∂r.  Every
member reads its own view of the positions, as the deep ensemble's do, and the shared blocks run on the K
views at once (one weight, K inputs), so one backward pass gives all K force fields.  (The alternative,
the shared part once and K vector-Jacobian products through it, cost 15.6x a plain PaiNN's training step
for K = 5 with shared = 0, against 3.5x for this form, measured beside other work: K double-backward
graphs cost more than they save.)  Prediction and uncertainty as the deep ensemble's (Eq. 2-5): Ē, F̄ the
members' means, U_i = ⅓ Σ_a Var_k(F_k,ia) with the 1/(K−1) estimator, in (kcal/mol/Å)².

Training: every member is trained on its own SI Eq. 1 loss, L = (1/K) Σ_k [w_E · MAE(E_k) + w_F · MAE(F_k)]
(an ensemble's objective; the shared layers get the mean of the members' gradients), so each branch fits
the data as a member of a deep ensemble would and the members differ by their initialisation (member k's
branch from its own seed).  One model to the trainer (member axis 1): one learning rate, one schedule and
one best checkpoint for all members.

Cost: close to a K-member ensemble's at every split point.  The exact force of every member needs the
derivative of every member's energy through the shared blocks, which is K backward passes through them
however they are arranged; sharing saves parameters, their optimiser state and one grouped matmul per
shared layer (one weight for the K views), not the K-fold work.  ``benchmarks/uq_methods.py --methods
partial_ensemble:0,partial_ensemble:1,... --cost`` measures the cost/diversity curve over the split points.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from ..core import fields as F
from ..nn import response
from ..nn.painn import Message, Update, run_blocks
from ..nn.stacked import StackedLinear, StackedMLP, init_members
from ..train.losses import energy_mae, forces_mae
from .base import UQMethod, register_method
from .options import UQOptions
from .shallow import combine_heads

BRANCH_SEED_OFFSET = 5_000_011


class PartialEnsembleOptions(UQOptions):
    """``uq: {method: partial_ensemble, members: K, shared: k}``."""

    method: Literal["partial_ensemble"] = "partial_ensemble"
    members: int = Field(5, ge=2, description="members K (branches after the shared part)")
    shared: int = Field(1, ge=0, description="interaction blocks shared by every member (0: the embedding only)")
    potential_keys: ClassVar[frozenset] = frozenset()


def _views(ctx: dict, start: int, stop: int) -> dict:
    """The block context of position views ``start``..``stop``-1."""
    return {**ctx, "radial": ctx["radial"][start:stop], "unit": ctx["unit"][start:stop]}


class Branches(nn.Module):
    """K−1 members' own blocks after the split: the filters and message/update blocks of the interactions
    ``shared``..I−1 and the readout, stacked along a leading axis of size K−1 (member 0's are the
    potential's own)."""

    def __init__(self, n: int, hp: dict, shared: int):
        super().__init__()
        feats, blocks = int(hp["features"]), int(hp["interactions"]) - shared
        sn = hp.get("spectral_norm")
        self.n, self.blocks = n, blocks
        self.filter_net = StackedLinear(n, int(hp["rbf"]), blocks * 3 * feats) if blocks else None
        self.messages = nn.ModuleList(Message(n, feats, hp["activation"], sn) for _ in range(blocks))
        self.updates = nn.ModuleList(Update(n, feats, hp["activation"], spectral_bound=sn) for _ in range(blocks))
        self.readout = StackedMLP(n, feats, int(hp["readout_hidden"]), 1, hp["activation"])

    def forward(self, s, v, ctx: dict) -> torch.Tensor:
        """Shared features of the branches' position views s (K−1, ...), v (K−1, 3, ...) → their scalar
        features (K−1, ...)."""
        if self.blocks:
            weight = torch.cat([self.filter_net.weight, self.filter_net.bias], dim=1)
            s, v = run_blocks(self.messages, self.updates, s, v, ctx, weight)
        return s


@register_method("partial_ensemble")
class PartialEnsemble(UQMethod):
    stacks_replicates = False  # one network stacks its own branches on the member axis
    options = PartialEnsembleOptions
    uncertainty_description = "force variance over the members of a partially shared ensemble, (kcal/mol/Å)²"
    needs_forces_for_uncertainty = True

    def __init__(self, potential: dict, reduction: str = "mean", members: int = 5, shared: int = 1):
        super().__init__(potential, reduction)
        if self.potential.members != 1:
            raise ValueError("a partially shared ensemble is one network with branches (members = 1 in the "
                             "potential); its size is uq.members")
        if getattr(self.potential, "backbone", "painn") != "painn":
            raise ValueError("partial_ensemble splits PaiNN's interaction blocks; use model.kind: painn")
        hp = self.potential.hparams
        if not 0 <= int(shared) <= int(hp["interactions"]):
            raise ValueError(f"uq.shared must lie in 0..{hp['interactions']} (the model's interactions)")
        if int(members) < 2:
            raise ValueError("a partially shared ensemble needs at least 2 members")
        self.k_members, self.shared = int(members), int(shared)
        self.branches = Branches(self.k_members - 1, hp, self.shared)
        init_members(self.branches, [int(hp["seeds"][0]) + BRANCH_SEED_OFFSET + b for b in range(self.k_members - 1)])

    def method_hparams(self) -> dict:
        return {"members": self.k_members, "shared": self.shared}

    def make_loss(self, train_cfg):
        return PartialEnsembleLoss(train_cfg.energy_weight, train_cfg.forces_weight)

    def forward_members(self, batch, compute_forces: bool = True, create_graph: bool | None = None,
                        retain_graph: bool | None = None, compute_stress: bool = False) -> dict:
        """Outputs with the member axis of the trainer (size 1): mean energy (1, B) and forces (1, N, 3), and
        per member ``energy_members`` (1, K, B), ``atomic_energy_members`` (1, K, N), ``forces_members``
        (1, K, N, 3).

        Every member reads its own view of the positions (as the deep ensemble's members do), the shared
        blocks run on all K views at once, so one backward pass gives every member's forces."""
        if compute_stress:
            raise NotImplementedError("partial_ensemble gives no stress; the ensemble does")
        create_graph = self.training if create_graph is None else create_graph
        pot, K = self.potential, self.k_members
        rep = pot.representation
        with response.tracking(batch.positions, compute_forces):
            pos = response.leaf(batch.positions, compute_forces)
            pos_m = pos.unsqueeze(0).expand(K, -1, -1)
            numbers, vectors, graph, dense = pot.representation_inputs(batch, pos_m)
            ctx = rep.context(numbers, vectors, graph, dense)
            s, v = rep.blocks(*rep.initial(ctx, K), ctx, 0, self.shared)  # (K, ...): the shared part
            s0, _ = rep.blocks(s[:1], v[:1], _views(ctx, 0, 1), self.shared)  # member 0: the potential's own
            sb = self.branches(s[1:], v[1:], _views(ctx, 1, K))
            e0 = pot.readout(pot.atom_features(batch, s0))  # (1, N, 1)
            eb = self.branches.readout(pot.atom_features(batch, sb))  # (K-1, N, 1)
            e_atom = torch.cat([e0, eb], 0).squeeze(-1) * pot.energy_scale  # (K, N)
            e_res = e_atom.new_zeros(K, batch.num_structures).index_add(1, batch.batch, e_atom)
            ref = pot.reference_energy(batch)
            res = {F.FEATURES: pot.atom_features(batch, s0), F.ATOMIC_ENERGY_MEMBERS: e_atom.unsqueeze(0),
                   F.ATOMIC_ENERGY: e_atom.mean(0, keepdim=True),
                   F.ENERGY_MEMBERS: (e_res.to(torch.float64) + ref).unsqueeze(0),
                   F.ENERGY_RESIDUAL: e_res.mean(0, keepdim=True)}
            res[F.ENERGY] = res[F.ENERGY_MEMBERS].mean(1)
            if compute_forces:
                fk = response.forces(e_res, pos_m, create_graph, retain_graph)  # (K, N, 3)
                res[F.FORCES_MEMBERS], res[F.FORCES] = fk.unsqueeze(0), fk.mean(0, keepdim=True)
        return res

    def combine(self, out: dict, batch) -> dict:
        return combine_heads(out)


class PartialEnsembleLoss:
    """(1/K) Σ_k [w_E · MAE(E_k) + w_F · MAE(F_k)]: every member on its own SI Eq. 1 loss (module
    docstring); the reported MAEs are those of the members' mean."""

    #: the labels this loss trains on (no stress term)
    targets = ("energy", "forces")

    def __init__(self, energy_weight: float = 0.1, forces_weight: float = 1.0):
        self.energy_weight, self.forces_weight = float(energy_weight), float(forces_weight)

    def __call__(self, pred: dict, batch) -> tuple[torch.Tensor, dict]:
        fk = pred[F.FORCES_MEMBERS][0]  # (K, N, 3)
        ek = pred[F.ENERGY_MEMBERS][0]  # (K, B)
        f_k = forces_mae(fk, batch.forces)  # (K,)
        e_k = energy_mae(ek, batch.energy)
        loss = (self.energy_weight * e_k.to(f_k.dtype) + self.forces_weight * f_k).mean(0, keepdim=True)
        e_err = energy_mae(pred[F.ENERGY], batch.energy)
        f_err = forces_mae(pred[F.FORCES], batch.forces)
        return loss, {"energy_mae": e_err.detach(), "forces_mae": f_err.detach()}
