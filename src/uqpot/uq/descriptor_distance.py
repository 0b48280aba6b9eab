"""Distance to the training set in a fixed descriptor space: a post-hoc uncertainty that no network's features
can fold back onto the training basin.

Why.  A single network maps geometries far outside its training basin to latent features not far from the
training set's, so every method that reads one network's features (the GMM of Eq. 10-11, LLPR, the MVE and
evidential heads) stays confident there.  The remedy of spectral normalisation (SNGP/DUE: Liu et al. 2020,
van Amersfoort et al. 2021) constrains the learned map; this method removes it: the distance is measured in a
fixed, smooth descriptor of the atom's neighbourhood, so a geometry far from every training geometry is far
in that space whatever the network learned.  Distances to the training data in a descriptor space are the
oldest single-model OOD signal of the ML-potential literature (Janet, Duan, Yang, Nandy & Kulik 2019, Chem.
Sci. 10, 7913: distances in feature and latent space as error estimates; Musil, Willatt, Langovoy & Ceriotti
2019, JCTC 15, 906, whose GPR variances are distances to the training set in a kernel's feature space).

Descriptor.  For atom i, the element-resolved radial density of its neighbours on a Gaussian grid (the
G² functions of Behler & Parrinello 2007 with shared widths):

    G_i,(e,k) = Σ_{j ∈ N(i), Z_j = e} exp(−((r_ij − μ_k)/w)²) · f_c(r_ij),   f_c(r) = ½(cos(πr/r_c) + 1),

μ_k = k·r_c/(n_radial − 1) (k = 0 … n_radial − 1), w the grid spacing, r_c the potential's cutoff, e over the
potential's elements; D = n_elements · n_radial dimensions.  Every coordinate is scaled by its standard
deviation over the training atoms (a floor of a tenth of the median non-zero one keeps coordinates that
never vary in training finite, and large, when they vary in a test structure).

Uncertainty.  U_i = (1/k) Σ_{m ≤ k} ‖ĝ_i − ĝ_m‖² over the k nearest training atoms m of atom i's element
(``neighbors = k``; ĝ the scaled descriptor); U(x) = the reduction over atoms (mean by default).  U is
dimensionless, ≥ 0 and differentiable with respect to the positions (the squared distances are expanded,
‖a‖² − 2a·b + ‖b‖², so the gradient exists where a distance is zero); adversarial attacks climb it.  The
reference atoms (at most ``max_fit_atoms``, a seeded subsample) and the scales are float64 buffers saved
with the model.

Cost.  The descriptor is one pass over the edges with no derivative of the network, and the distances one
matrix product against the reference atoms: inference costs one PaiNN's energy and forces plus
N·n_ref·D multiply-adds; training is the plain network's (SI Eq. 1) plus one pass over the training set.

What it cannot do.  U knows nothing of the network: in the training domain, where errors come from the fit
rather than from distance, it ranks errors only as far as they grow with the distance to the nearest
training atom.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field

from ..core import fields as F
from ..data.batch import AtomsBatch, INFERENCE_MAX_ATOMS, iterate_batches
from ..nn.layers import CosineCutoff
from .base import UQMethod, register_method
from .options import UQOptions


class DescriptorDistanceOptions(UQOptions):
    """``uq: {method: descriptor_distance, n_radial, neighbors, max_fit_atoms}``."""

    method: Literal["descriptor_distance"] = "descriptor_distance"
    n_radial: int = Field(16, ge=2, description="Gaussians of the radial grid per element")
    neighbors: int = Field(1, ge=1, description="U is the mean squared distance to this many nearest training atoms")
    max_fit_atoms: int = Field(20_000, ge=10, description="reference atoms kept (a seeded subsample beyond it)")


@register_method("descriptor_distance")
class DescriptorDistance(UQMethod):
    colour = "#17becf"
    options = DescriptorDistanceOptions
    posthoc = True
    uncertainty_description = ("squared distance of the atom's scaled radial descriptor to its nearest training "
                               "atoms of the same element (dimensionless)")

    _BUFFERS = ("dd_reference", "dd_reference_numbers", "dd_scale")

    def __init__(self, potential: dict, reduction: str = "mean", n_radial: int = 16, neighbors: int = 1,
                 max_fit_atoms: int = 20_000, seed: Optional[int] = None, n_reference: int = 0,
                 element_list: Optional[list[int]] = None, fit_info: dict | None = None):
        super().__init__(potential, reduction)
        self.n_radial, self.neighbors, self.max_fit_atoms = int(n_radial), int(neighbors), int(max_fit_atoms)
        self.seed = int(self.potential.hparams["seeds"][0] if seed is None else seed)
        self.fit_info = dict(fit_info or {})
        # the descriptor's element axis: the potential's elements when the reference set was fitted
        self.element_list = [int(z) for z in (element_list or [])]
        self._allocate(int(n_reference))

    def _allocate(self, n: int) -> None:
        self.n_reference = n
        d = len(self.element_list) * self.n_radial
        kw = dict(dtype=torch.float64, device=self.device)
        self.register_buffer("dd_reference", torch.zeros(n, d, **kw))
        self.register_buffer("dd_reference_numbers", torch.zeros(n, dtype=torch.int64, device=self.device))
        self.register_buffer("dd_scale", torch.ones(d, **kw))

    def _apply(self, fn, recurse=True):  # the reference set stays float64 whatever dtype the network uses
        super()._apply(fn, recurse)
        for name in ("dd_reference", "dd_scale"):
            setattr(self, name, getattr(self, name).to(torch.float64))
        return self

    def method_hparams(self) -> dict:
        return {"n_radial": self.n_radial, "neighbors": self.neighbors, "max_fit_atoms": self.max_fit_atoms,
                "seed": self.seed, "n_reference": self.n_reference, "element_list": self.element_list,
                "fit_info": self.fit_info}

    # ----------------------------------------------------------------- the descriptor
    def descriptors(self, batch: AtomsBatch) -> torch.Tensor:
        """G (N, n_elements · n_radial) of every atom of ``batch``, float64, differentiable w.r.t. positions."""
        pos = batch.positions.to(torch.float64)
        i, j = batch.edge_index
        r = (pos.index_select(0, j) - pos.index_select(0, i) + batch.edge_offsets().to(torch.float64)).norm(dim=-1)
        rc = float(self.cutoff)
        mu = torch.linspace(0.0, rc, self.n_radial, dtype=torch.float64, device=pos.device)
        width = rc / (self.n_radial - 1)
        fc = CosineCutoff(rc)(r)
        g = torch.exp(-((r.unsqueeze(-1) - mu) / width) ** 2) * fc.unsqueeze(-1)  # (E, n_radial)
        table = torch.full((int(max(self.element_list)) + 1,), -1, dtype=torch.int64, device=pos.device)
        table[torch.tensor(self.element_list, device=pos.device)] = torch.arange(len(self.element_list),
                                                                                 device=pos.device)
        e = table[batch.numbers.index_select(0, j)]
        slot = i * len(self.element_list) + e  # (atom i, neighbour's element) rows of the output
        out = pos.new_zeros(pos.shape[0] * len(self.element_list), self.n_radial).index_add(0, slot, g)
        return out.reshape(pos.shape[0], -1)

    # ----------------------------------------------------------------- fitting
    @torch.no_grad()
    def fit_posthoc(self, train, val=None, batch_size: int = 64) -> dict:
        """The reference atoms and the scales from the training set (``val`` is not used)."""
        self.element_list = [int(z) for z in self.elements()]
        if not self.element_list:
            raise RuntimeError("descriptor_distance: the potential knows no elements yet (fit_reference first)")
        gs, zs = [], []
        for _, b in iterate_batches(train, batch_size, self.cutoff, dtype=self.dtype, device=self.device,
                                    max_atoms=INFERENCE_MAX_ATOMS):
            gs.append(self.descriptors(b).cpu().numpy())
            zs.append(b.numbers.cpu().numpy())
        G, Z = np.concatenate(gs), np.concatenate(zs)
        std = G.std(0)
        positive = std[std > 0]
        floor = 0.1 * float(np.median(positive)) if positive.size else 1.0
        scale = np.maximum(std, floor)
        if len(G) > self.max_fit_atoms:
            keep = np.sort(np.random.default_rng(self.seed).choice(len(G), self.max_fit_atoms, replace=False))
            G, Z = G[keep], Z[keep]
        self._allocate(len(G))
        self.dd_reference = torch.as_tensor(G / scale, dtype=torch.float64, device=self.device)
        self.dd_reference_numbers = torch.as_tensor(Z, dtype=torch.int64, device=self.device)
        self.dd_scale = torch.as_tensor(scale, dtype=torch.float64, device=self.device)
        self.fit_info = {"n_reference": int(len(G)), "scale_floor": floor,
                         "per_element": {str(int(z)): int((Z == z).sum()) for z in np.unique(Z)}}
        return self.fit_info

    # ----------------------------------------------------------------- prediction
    def distances(self, batch: AtomsBatch) -> torch.Tensor:
        """U_i (N,): the mean squared scaled distance to the ``neighbors`` nearest reference atoms of the element."""
        if self.n_reference == 0:
            raise RuntimeError("descriptor_distance is not fitted yet (fit_posthoc after training)")
        x = self.descriptors(batch) / self.dd_scale
        u = x.new_full((x.shape[0],), float("inf"))
        for z in torch.unique(batch.numbers).tolist():
            atoms = torch.nonzero(batch.numbers == z).squeeze(-1)
            ref = self.dd_reference[self.dd_reference_numbers == z]
            if len(ref) == 0:  # an element no training atom had: infinitely far from the training set
                continue
            xa = x.index_select(0, atoms)
            d2 = ((xa * xa).sum(-1, keepdim=True) - 2.0 * xa @ ref.T + (ref * ref).sum(-1)).clamp_min(0.0)
            k = min(self.neighbors, len(ref))
            u = u.index_put((atoms,), torch.topk(d2, k, dim=-1, largest=False).values.mean(-1))
        return u

    def combine(self, out: dict, batch: AtomsBatch) -> dict:
        res = {k: v.squeeze(0) for k, v in out.items()}
        res[F.UNCERTAINTY_ATOM] = self.distances(batch).to(batch.positions.dtype)
        return res
