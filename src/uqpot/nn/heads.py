"""Readout heads on the per-atom features ξ."""

from __future__ import annotations

import torch
from torch import nn

from .layers import activation


class AtomwiseMLP(nn.Module):
    """Two dense layers, n_features → hidden (activation) → n_out, applied to every atom.

    With the SI's sizes (128 → 64 → 1) this is the energy readout of PaiNN."""

    def __init__(self, n_features: int = 128, hidden: int = 64, n_out: int = 1, act: str = "ssp"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), activation(act), nn.Linear(hidden, n_out))
        self.n_out = n_out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.net(features)
        return out.squeeze(-1) if self.n_out == 1 else out
