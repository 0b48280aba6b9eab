"""Small building blocks: activations and the cutoff function."""

from __future__ import annotations

import math

import torch
from torch import nn


class ShiftedSoftplus(nn.Module):
    """ssp(x) = softplus(x) - ln 2 (SchNet/PaiNN's activation; ssp(0) = 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x) - math.log(2.0)


def activation(name: str) -> nn.Module:
    if name == "ssp":
        return ShiftedSoftplus()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}; use 'ssp' or 'silu'")


class CosineCutoff(nn.Module):
    """f(r) = 0.5 (cos(pi r / rc) + 1) for r < rc, else 0 (smooth value and slope at rc)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        f = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        return f * (r < self.cutoff).to(r.dtype)
