"""Gaussian mixture model on the latent per-atom features (paper Eq. 10-11).

After the potential is trained (SI Eq. 1, M = 1; any trained potential: ``uqpot wrap MODEL --method gmm``),
a GMM with full covariances and k-means initialisation
(scikit-learn, seeded) is fitted to the features ξ (before the readout) of every training atom.  The number
of components is chosen by the Bayesian information criterion over a list of candidates, with the
silhouette score of the k-means-like hard assignment reported beside it (the SI's Figs. S4-S5), or fixed by
config.  The fitted weights, means and precision Cholesky factors are buffers of the model (saved with it),
and the negative log-likelihood

    U_i = NLL(ξ_i) = −log Σ_k π_k N(ξ_i | μ_k, Σ_k)     (Eq. 11)

is computed in torch, so U is differentiable w.r.t. positions.  U is in nats and can be negative.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import numpy as np
import torch
from pydantic import Field, field_validator

from ..core import fields as F
from ..data.batch import INFERENCE_MAX_ATOMS, iterate_batches
from .base import UQMethod, register_method
from .options import UQOptions

DEFAULT_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16)


class GMMOptions(UQOptions):
    """``uq: {method: gmm, components, candidates, reg_covar, max_fit_atoms}``."""

    method: Literal["gmm"] = "gmm"
    components: Union[Literal["bic"], int] = Field(
        "bic", description="'bic' (chosen among the candidates by the BIC) or a fixed number of components")
    candidates: list[int] = list(DEFAULT_CANDIDATES)
    reg_covar: float = Field(1e-6, gt=0.0)
    max_fit_atoms: int = Field(50_000, ge=10)

    @field_validator("components")
    @classmethod
    def _components(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 'bic' or >= 1")
        return v


@register_method("gmm")
class GMM(UQMethod):
    md_compiles = True
    colour = "#d62728"
    options = GMMOptions
    posthoc = True
    mixture_figures = True
    uncertainty_description = "negative log-likelihood of the latent features under the GMM, nats (Eq. 11)"
    signed_uncertainty = True

    def __init__(self, potential: dict, reduction: str = "mean", components="bic",
                 candidates=DEFAULT_CANDIDATES, seed: Optional[int] = None, reg_covar: float = 1e-6,
                 max_iter: int = 200, max_fit_atoms: int = 50_000, silhouette_atoms: int = 3000,
                 n_components: int = 0, fit_info: dict | None = None):
        super().__init__(potential, reduction)
        if components != "bic" and not (isinstance(components, int) and components >= 1):
            raise ValueError("gmm components: 'bic' or a number of components >= 1")
        self.components, self.candidates = components, [int(c) for c in candidates]
        # the k-means initialisation and the subsampling are seeded by the potential's seed unless given
        seed = self.potential.hparams["seeds"][0] if seed is None else seed
        self.seed, self.reg_covar, self.max_iter = int(seed), float(reg_covar), int(max_iter)
        self.max_fit_atoms, self.silhouette_atoms = int(max_fit_atoms), int(silhouette_atoms)
        self.fit_info = dict(fit_info or {})
        self._allocate(int(n_components), self.potential.hparams["features"])

    _GMM_BUFFERS = ("gmm_log_weights", "gmm_means", "gmm_prec_chol", "gmm_log_det")

    def _allocate(self, k: int, d: int) -> None:
        self.n_components = k
        dev = self.device
        kw = dict(dtype=torch.float64, device=dev)
        self.register_buffer("gmm_log_weights", torch.zeros(k, **kw))
        self.register_buffer("gmm_means", torch.zeros(k, d, **kw))
        self.register_buffer("gmm_prec_chol", torch.zeros(k, d, d, **kw))
        self.register_buffer("gmm_log_det", torch.zeros(k, **kw))

    # the mixture is kept and evaluated in float64 whatever dtype the network uses (128-dimensional
    # precisions lose ~1e-4 nats in float32)
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in self._GMM_BUFFERS:
            setattr(self, name, getattr(self, name).to(torch.float64))
        return self

    def method_hparams(self) -> dict:
        return {"components": self.components, "candidates": self.candidates, "seed": self.seed,
                "reg_covar": self.reg_covar, "max_iter": self.max_iter, "max_fit_atoms": self.max_fit_atoms,
                "silhouette_atoms": self.silhouette_atoms, "n_components": self.n_components,
                "fit_info": self.fit_info}

    # ----------------------------------------------------------------- fitting
    @torch.no_grad()
    def features_of(self, dataset, batch_size: int = 64) -> np.ndarray:
        self.eval()
        feats = []
        for _, b in iterate_batches(dataset, batch_size, self.cutoff, dtype=self.dtype, device=self.device,
                                    max_atoms=INFERENCE_MAX_ATOMS):
            out = self.potential.forward_members(b, compute_forces=False)
            feats.append(out[F.FEATURES][0].double().cpu().numpy())
        return np.concatenate(feats)

    def fit_posthoc(self, train, val=None, batch_size: int = 64) -> dict:
        """The mixture on the features of every training atom (``val`` is not used)."""
        from sklearn.metrics import silhouette_score
        from sklearn.mixture import GaussianMixture

        X = self.features_of(train, batch_size)
        rng = np.random.default_rng(self.seed)
        if len(X) > self.max_fit_atoms:
            X = X[rng.choice(len(X), self.max_fit_atoms, replace=False)]
        sil_idx = rng.choice(len(X), min(len(X), self.silhouette_atoms), replace=False)

        def fit(k):
            return GaussianMixture(k, covariance_type="full", init_params="kmeans", random_state=self.seed,
                                   reg_covar=self.reg_covar, max_iter=self.max_iter).fit(X)

        candidates = [self.components] if self.components != "bic" else [c for c in self.candidates if c <= len(X)]
        curve = []
        best = None
        for k in candidates:
            g = fit(k)
            bic = float(g.bic(X))
            labels = g.predict(X[sil_idx])
            # undefined (None) for a single cluster
            sil = float(silhouette_score(X[sil_idx], labels)) if 1 < len(set(labels)) < len(sil_idx) else None
            curve.append({"components": k, "bic": bic, "silhouette": sil, "converged": bool(g.converged_)})
            if best is None or bic < best[0]:
                best = (bic, k, g)
        _, k, g = best
        self._set(g)
        self.fit_info = {"selection": "bic" if self.components == "bic" else "fixed", "chosen": k,
                         "n_atoms": int(len(X)), "curve": curve}
        return self.fit_info

    def _set(self, g) -> None:
        k, d = g.means_.shape
        dev = self.device
        self._allocate(k, d)
        chol = torch.as_tensor(g.precisions_cholesky_, dtype=torch.float64)
        self.gmm_log_weights = torch.log(torch.as_tensor(g.weights_, dtype=torch.float64)).to(dev)
        self.gmm_means = torch.as_tensor(g.means_, dtype=torch.float64).to(dev)
        self.gmm_prec_chol = chol.to(dev)
        self.gmm_log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1).to(dev)

    # ----------------------------------------------------------------- prediction
    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """−log p(ξ) for features (N, D) (Eq. 11), computed in float64, returned in the features' dtype."""
        if self.n_components == 0:
            raise RuntimeError("the GMM is not fitted yet (fit_posthoc after training)")
        dtype, x = x.dtype, x.to(torch.float64)
        d = x.shape[-1]
        # y_k = (x − μ_k) P_k with Σ_k^{-1} = P_k P_kᵀ
        y = torch.einsum("nd,kde->nke", x, self.gmm_prec_chol) - torch.einsum(
            "kd,kde->ke", self.gmm_means, self.gmm_prec_chol)
        log_prob = -0.5 * (d * math.log(2 * math.pi) + y.pow(2).sum(-1)) + self.gmm_log_det
        return (-torch.logsumexp(log_prob + self.gmm_log_weights, dim=-1)).to(dtype)

    def combine(self, out: dict, batch) -> dict:
        res = {k: v.squeeze(0) for k, v in out.items()}
        res[F.UNCERTAINTY_ATOM] = self.nll(res[F.FEATURES])
        return res
