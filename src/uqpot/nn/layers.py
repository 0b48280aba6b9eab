"""Small building blocks: activations, radial basis, cutoff."""

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


class GaussianRBF(nn.Module):
    """exp(-(r - mu_k)^2 / (2 w_k^2)), k = 1..n, centres evenly spaced on [0, cutoff], widths equal to the
    spacing; centres and widths are learnable when ``trainable`` (the SI's "20 learnable Gaussians")."""

    def __init__(self, n_rbf: int, cutoff: float, trainable: bool = True):
        super().__init__()
        centers = torch.linspace(0.0, cutoff, n_rbf, dtype=torch.float64)
        widths = torch.full((n_rbf,), float(centers[1] - centers[0]), dtype=torch.float64)
        if trainable:
            self.centers = nn.Parameter(centers.float())
            self.widths = nn.Parameter(widths.float())
        else:
            self.register_buffer("centers", centers.float())
            self.register_buffer("widths", widths.float())

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        coeff = -0.5 / self.widths.pow(2)
        return torch.exp(coeff * (r.unsqueeze(-1) - self.centers).pow(2))


class CosineCutoff(nn.Module):
    """f(r) = 0.5 (cos(pi r / rc) + 1) for r < rc, else 0 (smooth value and slope at rc)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        f = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        return f * (r < self.cutoff).to(r.dtype)
