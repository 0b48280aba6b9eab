"""PaiNN representation (Schütt, Unke, Gastegger 2021), with the hyper-parameters of the paper's SI:
3 interaction blocks, 128 features, 20 learnable Gaussians, 5 Å cosine cutoff, shifted softplus.

Each interaction is a message block followed by an update block:

message:  (Δs_i, Δv_i) = Σ_j  φ(s_j) ∘ W(r_ij)  split into  (Δs, Δv_v, Δv_s);
          Δv_i = Σ_j Δv_v ∘ v_j + Δv_s ∘ r̂_ij
update:   a = MLP([s_i, ||V v_i||]) split into (a_vv, a_sv, a_ss);
          Δv_i = a_vv ∘ U v_i,  Δs_i = a_sv ∘ <U v_i, V v_i> + a_ss

The model receives pair vectors r_ij computed from positions (so forces follow by autograd); neighbour
lists come from the data layer.  The forward pass has no host synchronisation and no Python loop over
atoms or edges.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import CosineCutoff, GaussianRBF, activation


class Message(nn.Module):
    def __init__(self, n_features: int, act: str):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(n_features, n_features), activation(act),
                                 nn.Linear(n_features, 3 * n_features))
        self.n_features = n_features

    def forward(self, s, v, filters, unit, edge_i, edge_j):
        F = self.n_features
        x = self.phi(s).index_select(0, edge_j) * filters  # (E, 3F)
        ds, dvv, dvs = torch.split(x, F, dim=-1)
        dv = dvv.unsqueeze(1) * v.index_select(0, edge_j) + dvs.unsqueeze(1) * unit.unsqueeze(-1)  # (E, 3, F)
        s = s.index_add(0, edge_i, ds)
        v = v.index_add(0, edge_i, dv)
        return s, v


class Update(nn.Module):
    def __init__(self, n_features: int, act: str, eps: float = 1e-8):
        super().__init__()
        self.uv = nn.Linear(n_features, 2 * n_features, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_features, n_features), activation(act),
                                 nn.Linear(n_features, 3 * n_features))
        self.n_features = n_features
        self.eps = eps

    def forward(self, s, v):
        F = self.n_features
        u, w = torch.split(self.uv(v), F, dim=-1)  # (N, 3, F) each
        w_norm = torch.sqrt(w.pow(2).sum(dim=1) + self.eps)
        a = self.mlp(torch.cat([s, w_norm], dim=-1))
        avv, asv, ass = torch.split(a, F, dim=-1)
        v = v + avv.unsqueeze(1) * u
        s = s + asv * (u * w).sum(dim=1) + ass
        return s, v


class PaiNN(nn.Module):
    def __init__(
        self,
        n_features: int = 128,
        n_interactions: int = 3,
        n_rbf: int = 20,
        cutoff: float = 5.0,
        activation: str = "ssp",
        trainable_rbf: bool = True,
        max_z: int = 118,
    ):
        super().__init__()
        self.n_features = n_features
        self.n_interactions = n_interactions
        self.cutoff = float(cutoff)
        self.embedding = nn.Embedding(max_z + 1, n_features)
        self.rbf = GaussianRBF(n_rbf, cutoff, trainable=trainable_rbf)
        self.fcut = CosineCutoff(cutoff)
        # one linear layer makes the filters of every interaction at once
        self.filter_net = nn.Linear(n_rbf, n_interactions * 3 * n_features)
        self.messages = nn.ModuleList(Message(n_features, activation) for _ in range(n_interactions))
        self.updates = nn.ModuleList(Update(n_features, activation) for _ in range(n_interactions))

    def forward(self, numbers: torch.Tensor, vectors: torch.Tensor, edge_index: torch.Tensor):
        """Per-atom scalar features s (N, F) and vector features v (N, 3, F).

        ``vectors`` are the pair vectors r_ij = r_j - r_i (+ image offset) of the edges (i, j)."""
        edge_i, edge_j = edge_index[0], edge_index[1]
        r = torch.sqrt(vectors.pow(2).sum(-1))
        unit = vectors / r.unsqueeze(-1)
        filters = self.filter_net(self.rbf(r)) * self.fcut(r).unsqueeze(-1)
        filters = torch.split(filters, 3 * self.n_features, dim=-1)
        s = self.embedding(numbers)
        v = s.new_zeros((s.shape[0], 3, self.n_features))
        for k in range(self.n_interactions):
            s, v = self.messages[k](s, v, filters[k], unit, edge_i, edge_j)
            s, v = self.updates[k](s, v)
        return s, v
