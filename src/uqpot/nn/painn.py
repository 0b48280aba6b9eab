"""PaiNN representation (Schütt, Unke, Gastegger 2021), with the hyper-parameters of the paper's SI:
3 interaction blocks, 128 features, 20 learnable Gaussians, 5 Å cosine cutoff, shifted softplus.

Each interaction is a message block followed by an update block:

message:  (Δs_i, Δv_i) = Σ_j  φ(s_j) ∘ W(r_ij)  split into  (Δs, Δv_v, Δv_s);
          Δv_i = Σ_j Δv_v ∘ v_j + Δv_s ∘ r̂_ij
update:   a = MLP([s_i, ||V v_i||]) split into (a_vv, a_sv, a_ss);
          Δv_i = a_vv ∘ U v_i,  Δs_i = a_sv ∘ <U v_i, V v_i> + a_ss

``spectral_norm`` c (default off): the linear maps of every message and update block are spectrally
normalised to a norm of at most c (Miyato et al. 2018; SNGP, Liu et al. 2020; DUE, van Amersfoort et al.
2021): with c < 1 each residual update s ← s + f(s) has a Lipschitz constant below one in the features it
transforms, so the representation cannot collapse distant inputs onto nearby features (the diagnosis of
single-model UQ out of domain), and a GMM or LLPR on those features sees the distance.

Every parameter has a leading member axis (see :mod:`uqpot.nn.stacked`): M networks of an ensemble run in
one call.  Shapes: scalar features s (M, N, F), vector features v (M, 3, N, F) (the Cartesian axis ahead of
the atoms keeps every broadcast over it a contiguous one).  Pair vectors come from positions in the model
(so forces follow by autograd); neighbour lists come from the data layer.  No host synchronisation and no
Python loop over atoms or edges.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, model_serializer
from torch import nn

from .backbone import BackboneOptions
from .layers import CosineCutoff
from .stacked import StackedEmbedding, StackedLinear, StackedMLP


class StackedGaussianRBF(nn.Module):
    """exp(-(r - mu_k)^2 / (2 w_k^2)), k = 1..n: centres evenly spaced on [0, cutoff], widths equal to the
    spacing; learnable per member when ``trainable`` (the SI's "20 learnable Gaussians")."""

    def __init__(self, members: int, n_rbf: int, cutoff: float, trainable: bool = True):
        super().__init__()
        centers = torch.linspace(0.0, cutoff, n_rbf).repeat(members, 1)
        widths = torch.full((members, n_rbf), cutoff / (n_rbf - 1))
        if trainable:
            self.centers, self.widths = nn.Parameter(centers), nn.Parameter(widths)
        else:
            self.register_buffer("centers", centers)
            self.register_buffer("widths", widths)

    def forward(self, r: torch.Tensor) -> torch.Tensor:  # r (M, E) -> (M, E, K)
        coeff = (-0.5 / self.widths.pow(2)).unsqueeze(1)
        return torch.exp(coeff * (r.unsqueeze(-1) - self.centers.unsqueeze(1)).pow(2))


class Message(nn.Module):
    def __init__(self, members: int, n_features: int, act: str, spectral_bound: float | None = None):
        super().__init__()
        self.phi = StackedMLP(members, n_features, n_features, 3 * n_features, act, spectral_bound)
        self.n_features = n_features

    def forward(self, s, v, radial, filter_weight, unit_t, edge_i, edge_j):
        """``radial`` (M, E, K+1) is [rbf(r), 1]·fcut(r); ``filter_weight`` (M, K+1, 3F) the filter layer of
        this block with its bias as the last row, so each filter W(r_ij) is one matmul and no (E, 3F)
        tensor is split or copied."""
        F = self.n_features
        phi = self.phi(s)  # (M, N, 3F)
        x = [phi[..., k * F:(k + 1) * F].index_select(1, edge_j) * torch.bmm(radial, filter_weight[..., k * F:(k + 1) * F])
             for k in range(3)]  # Δs, Δv_v, Δv_s: (M, E, F) each, contiguous
        dv = x[1].unsqueeze(1) * v.index_select(2, edge_j) + x[2].unsqueeze(1) * unit_t  # (M, 3, E, F)
        return s.index_add(1, edge_i, x[0]), v.index_add(2, edge_i, dv)

    def forward_dense(self, s, v, filters, unit):
        """The same message on the padded all-pairs grid: s (M, B, n, F), v (M, 3, B, n, F), ``filters``
        W(r_ij) (M, B, n, n, 3F) (zero for masked pairs), ``unit`` (M, 3, B, n, n, 1).  The neighbour j is
        the fourth axis: gathers become broadcasts and the scatter a sum over j."""
        F = self.n_features
        phi = self.phi(s).unsqueeze(2)  # (M, B, 1, n_j, 3F)
        x = [phi[..., k * F:(k + 1) * F] * filters[..., k * F:(k + 1) * F] for k in range(3)]  # (M, B, i, j, F)
        dv = (x[1].unsqueeze(1) * v.unsqueeze(3) + x[2].unsqueeze(1) * unit).sum(4)  # (M, 3, B, n, F)
        return s + x[0].sum(3), v + dv


class Update(nn.Module):
    def __init__(self, members: int, n_features: int, act: str, eps: float = 1e-8,
                 spectral_bound: float | None = None):
        super().__init__()
        self.uv = StackedLinear(members, n_features, 2 * n_features, bias=False, spectral_bound=spectral_bound)
        self.mlp = StackedMLP(members, 2 * n_features, n_features, 3 * n_features, act, spectral_bound)
        self.n_features = n_features
        self.eps = eps

    def forward(self, s, v):
        F = self.n_features
        u, w = torch.split(self.uv(v), F, dim=-1)  # (M, 3, N, F) each
        w_norm = torch.sqrt(w.pow(2).sum(dim=1) + self.eps)
        a = self.mlp(torch.cat([s, w_norm], dim=-1))
        avv, asv, ass = torch.split(a, F, dim=-1)
        return s + asv * (u * w).sum(dim=1) + ass, v + avv.unsqueeze(1) * u


class PaiNN(nn.Module):
    def __init__(self, n_features: int = 128, n_interactions: int = 3, n_rbf: int = 20, cutoff: float = 5.0,
                 activation: str = "ssp", trainable_rbf: bool = True, max_z: int = 118, members: int = 1,
                 spectral_norm: float | None = None):
        super().__init__()
        self.members = members
        self.n_features = n_features
        self.n_interactions = n_interactions
        self.cutoff = float(cutoff)
        self.embedding = StackedEmbedding(members, max_z + 1, n_features)
        self.rbf = StackedGaussianRBF(members, n_rbf, cutoff, trainable=trainable_rbf)
        self.fcut = CosineCutoff(cutoff)
        # one layer makes the filters of every interaction at once
        self.filter_net = StackedLinear(members, n_rbf, n_interactions * 3 * n_features)
        # spectral_norm c: every linear map of the message and update blocks (the residual branches that act on
        # the features) spectrally normalised to at most c (distance-aware features, SNGP/DUE-style)
        self.messages = nn.ModuleList(Message(members, n_features, activation, spectral_norm)
                                      for _ in range(n_interactions))
        self.updates = nn.ModuleList(Update(members, n_features, activation, spectral_bound=spectral_norm)
                                     for _ in range(n_interactions))

    def _radial(self, r: torch.Tensor, cut: torch.Tensor):
        """[rbf(r), 1]·cut (M, P, K+1) for distances r (M, P), and the filter layer (M, K+1, I*3F) with its
        bias folded in as the weight row of the constant basis function."""
        rbf = self.rbf(r)
        radial = torch.cat([rbf, torch.ones_like(rbf[..., :1])], dim=-1) * cut.unsqueeze(-1)
        return radial, torch.cat([self.filter_net.weight, self.filter_net.bias], dim=1)

    def context(self, numbers: torch.Tensor, vectors: torch.Tensor, graph: torch.Tensor, dense: bool = False) -> dict:
        """What every interaction block reads, and the initial features: on the edge list (``graph`` the
        edge index (2, E), ``vectors`` (M, E, 3) with r_ij = r_j - r_i (+ image offset)) or on the dense
        layout (``graph`` the pair mask (B, n, n), ``numbers`` (B, n) with 0 for padding, ``vectors``
        (M, B, n, n, 3)).  Masked pairs and pairs beyond the cutoff get zero filters, so both layouts give
        the same features within the cutoff."""
        M = vectors.shape[0]
        if dense:
            mask = graph.unsqueeze(0)
            r2 = vectors.pow(2).sum(-1)
            # distance 1 on masked pairs (i = i, padding): finite values and derivatives, multiplied by zero
            r = torch.sqrt(torch.where(mask, r2, torch.ones_like(r2)))  # (M, B, n, n)
            unit = (vectors / r.unsqueeze(-1)).movedim(-1, 1).unsqueeze(-1)  # (M, 3, B, n, n, 1)
            radial, weight = self._radial(r.reshape(M, -1), (self.fcut(r) * mask).reshape(M, -1))
            s = self.embedding(numbers.reshape(-1)).reshape(-1, *numbers.shape, self.n_features)
            return {"dense": True, "radial": radial, "weight": weight, "unit": unit, "pairs": tuple(r.shape[1:]),
                    "s": s, "v_shape": (3,) + tuple(numbers.shape) + (self.n_features,)}
        r = torch.sqrt(vectors.pow(2).sum(-1))  # (M, E)
        # (M, 3, E, 1), contiguous so that products with it keep the (M, 3, E, F) memory layout
        unit_t = (vectors / r.unsqueeze(-1)).transpose(1, 2).contiguous().unsqueeze(-1)
        radial, weight = self._radial(r, self.fcut(r))
        s = self.embedding(numbers)
        return {"dense": False, "radial": radial, "weight": weight, "unit": unit_t, "edges": graph,
                "s": s, "v_shape": (3, s.shape[1], self.n_features)}

    def initial(self, ctx: dict, members: int | None = None):
        """The features before the first block: s from the embedding, v = 0 (for ``members`` position views
        when given: one embedding broadcast to all)."""
        s = ctx["s"]
        if members is not None and s.shape[0] != members:
            s = s.expand(members, *s.shape[1:])
        return s, s.new_zeros((s.shape[0],) + ctx["v_shape"])

    def blocks(self, s, v, ctx: dict, start: int = 0, stop: int | None = None):
        """Interaction blocks ``start``..``stop``-1 on (s, v)."""
        stop = self.n_interactions if stop is None else stop
        return run_blocks(self.messages[start:stop], self.updates[start:stop], s, v, ctx,
                          ctx["weight"][..., start * 3 * self.n_features:stop * 3 * self.n_features])

    def forward(self, numbers: torch.Tensor, vectors: torch.Tensor, edge_index: torch.Tensor):
        """Scalar features s (M, N, F) and vector features v (M, 3, N, F).

        ``vectors`` (M, E, 3) are the pair vectors r_ij = r_j - r_i (+ image offset) of the edges (i, j)."""
        ctx = self.context(numbers, vectors, edge_index)
        return self.blocks(*self.initial(ctx), ctx)

    def forward_dense(self, numbers: torch.Tensor, vectors: torch.Tensor, pair_mask: torch.Tensor):
        """The same network on the dense layout of the data layer (molecules): every pair (i, j) of a
        structure on a padded grid.  ``numbers`` (B, n) (0 for padding), ``vectors`` (M, B, n, n, 3) with
        r_ij = r_j - r_i, ``pair_mask`` (B, n, n).  Masked pairs and pairs beyond the cutoff get zero filters,
        so the result equals :meth:`forward` on the edge list within the cutoff.  Returns s (M, B, n, F) and
        v (M, 3, B, n, F)."""
        ctx = self.context(numbers, vectors, pair_mask, dense=True)
        return self.blocks(*self.initial(ctx), ctx)


def run_blocks(messages, updates, s, v, ctx: dict, weight: torch.Tensor):
    """Message and update blocks in turn; ``weight`` (M, K+1, n_blocks·3F) their filter layers (block k's in
    columns k·3F..(k+1)·3F).  The context's radial basis and unit vectors, and one network's filters, are
    broadcast to the M of ``s`` (a partially shared ensemble runs its shared blocks on M position views)."""
    M = s.shape[0]
    radial, unit = ctx["radial"], ctx["unit"]
    if radial.shape[0] != M:
        radial, unit = radial.expand(M, -1, -1), unit.expand(M, *unit.shape[1:])
    if weight.shape[0] != M:  # one set of blocks on M position views (a partially shared ensemble's trunk)
        weight = weight.expand(M, -1, -1)
    for k, (msg, upd) in enumerate(zip(messages, updates)):
        n = 3 * msg.n_features
        w = weight[..., k * n:(k + 1) * n]
        if ctx["dense"]:
            filters = torch.bmm(radial, w).reshape(M, *ctx["pairs"], n)  # (M, B, n, n, 3F)
            s, v = msg.forward_dense(s, v, filters, unit)
        else:
            s, v = msg(s, v, radial, w, unit, ctx["edges"][0], ctx["edges"][1])
        s, v = upd(s, v)
    return s, v


class PaiNNOptions(BackboneOptions):
    """``model.kind: painn`` (the default): PaiNN with the SI's hyper-parameters by default."""

    #: not written into resolved configs (a PaiNN config reads as it did before MACE existed, so earlier runs
    #: keep their identity)
    kind: Literal["painn"] = Field("painn", exclude=True)
    features: int = Field(128, ge=1)
    interactions: int = Field(3, ge=1)
    rbf: int = Field(20, ge=2)
    cutoff: float = Field(5.0, gt=0.0)
    activation: Literal["ssp", "silu"] = "ssp"
    readout_hidden: int = Field(64, ge=1)
    trainable_rbf: bool = True
    spectral_norm: Optional[float] = Field(
        None, gt=0.0, description="bound on the spectral norm of every message/update linear map (SNGP-style "
                                  "distance-aware features; e.g. 0.95); unset: plain PaiNN")

    @model_serializer(mode="wrap")
    def _without_unset_options(self, handler):
        """Options added after runs were made are written only when set, so earlier runs keep their
        identity (their resolved configs read as before)."""
        out = handler(self)
        if isinstance(out, dict) and out.get("spectral_norm") is None:
            out.pop("spectral_norm", None)
        return out

    def potential_hparams(self, members: int, seeds: list[int], train=None) -> dict:
        hp = dict(features=self.features, interactions=self.interactions, rbf=self.rbf, cutoff=self.cutoff,
                  activation=self.activation, readout_hidden=self.readout_hidden, trainable_rbf=self.trainable_rbf,
                  members=members, seeds=list(seeds))
        if self.spectral_norm is not None:
            hp["spectral_norm"] = self.spectral_norm
        return hp
