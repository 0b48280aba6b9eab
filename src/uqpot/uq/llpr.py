"""Last-layer prediction rigidity (LLPR; Bigi, Chong, Ceriotti, Grasselli 2024): a post-hoc uncertainty
from the last layer of one network trained with the plain loss (SI Eq. 1).

Last-layer features.  The readout is e_i = s·(wᵀh_i + b) with h_i = act(W₁ξ_i + b₁) ∈ R^H (the hidden
activations of the 128 → 64 → 1 readout, s the potential's force scale).  With the bias folded in,

    h̃_i = s·[h_i, 1] ∈ R^d (d = H + 1),   E(x) = e_ref(x) + w̃ᵀ f(x),   f(x) = Σ_{i∈x} h̃_i,

so a structure's energy is linear in the last-layer weights w̃ = [w, b] with the per-structure features f
(the sum over atoms of the per-atom last-layer features), and its forces F_ia = −w̃ᵀ J_ia with
J_ia = ∂f/∂r_ia ∈ R^d.

Posterior.  A Gaussian likelihood on the training targets and a Gaussian prior on w̃ give the posterior
w̃ ~ N(ŵ, α²Σ) with

    Σ = (G + ς²I)⁻¹,   G = FᵀF = Σ_n f_n f_nᵀ                              (gram = "energy"),
                       G = FᵀF + Σ_n Σ_ia J_n,ia J_n,iaᵀ                    (gram = "energy_forces"),

over the training structures n; "energy_forces" adds the force rows of the training set (the Gauss-Newton
matrix of a squared energy + force loss in the last-layer weights — the potential was trained on forces,
and the force rows constrain the directions the energies of similar molecules leave free).  Predicted
variances of a new structure x*:

    σ²_E(x*)    = α² f*ᵀ Σ f*                    (returned as ``energy_variance``)
    σ²_F,ia(x*) = α² J*_iaᵀ Σ J*_ia,             U_i = ⅓ Σ_a σ²_F,ia          (output = "forces", default)
    U_i         = α² h̃_iᵀ Σ h̃_i                 (output = "atomic_energy": no derivatives, cost ≈ one PaiNN)

U(x) = reduction over atoms (mean: comparable with the ensemble's σ²_F of Eq. 5, in (kcal/mol/Å)²).

Force uncertainty route.  With G = VΛVᵀ, Σ = DDᵀ for the directions D = V(Λ + ς²)^{-1/2}; the projections
g_k(x) = αD_kᵀ f(x) are K scalar outputs of the network and σ²_F,ia = Σ_k (∂g_k/∂r_ia)², i.e. the exact
variance of the forces of the last-layer posterior (what a last-layer ensemble drawn from N(ŵ, α²Σ)
estimates with sampling noise).  The K derivatives are K vector-Jacobian products through the backbone,
one per direction for the whole batch (:func:`uqpot.nn.response.position_grads`); with ``create_graph=True``
U is differentiable w.r.t. the positions (adversarial attacks).  Without a kept graph, small molecules take
forward mode instead (``jacobian = "auto"``, the default; ``"reverse"`` / ``"forward"`` force a route; same
values to float tolerance): the whole Jacobian ∂g/∂r from 3·n_max Jacobian-vector products, one per atom slot
and component, each moving that slot in every structure of the batch at once
(:func:`uqpot.nn.response.structure_jacobian`).  A tangent costs about three reverse passes here
(:data:`FORWARD_PASS_COST`), so auto takes it when 3·n_max·3 < K: on ammonia (n_max = 4, K = d = 65) U costs
14x one PaiNN's energy and forces instead of 28x (2.0x less); on ethanol (n_max = 9) reverse mode stays
(forward would be 0.81x as fast) (``benchmarks/llpr_routes.py``, one CPU thread, batches of 58 and 100).  ``samples = K > 0`` replaces the d exact
directions by K posterior samples, D = V(Λ + ς²)^{-1/2} Z/√K with Z ~ N(0, I) (seeded, fixed): U is then
the variance of the forces of a K-member last-layer ensemble drawn from N(ŵ, α²Σ) around the mean
prediction (unbiased, noisy; K VJPs instead of d).  (Truncating to the K eigen-directions that carry the
most validation variance ranks worse than K random samples: the variance is spread over all directions.)

Fit of α and ς (``fit_posthoc``).  G and its eigendecomposition from the training set; then ς and α
minimise the Gaussian NLL of the *validation* force residuals r_ia = F̂_ia − F_ia (``fit_target =
"forces"``, default — U ranks and calibrates force errors) or energy residuals (``"energy"``):

    NLL(α, ς) = mean_ia [½ log(2π α² g_ia(ς)) + r_ia² / (2α² g_ia(ς))],  g_ia(ς) = Σ_k (v_kᵀJ_ia)² / (λ_k + ς²)

For fixed ς the minimiser is α²(ς) = mean_ia r_ia² / g_ia(ς) (closed form); log ς² is then found on a grid
from 1e-16·λ_max to 1e4·λ_max and refined by a bounded 1-D search (``fit_info["sigma2_at_grid_end"]`` flags
an optimum at the grid's end: at the low end the prior is negligible, Σ ≈ G⁻¹).  Without a validation set
the training set is used (flagged in ``fit_info``).  Eigenvalues, eigenvectors, Σ, the directions and α², ς²
are float64 buffers saved with the model.

Measured on rMD17 ethanol (a PaiNN trained on 640 frames, G from 400, α and ς from 80, test on 80 others):
Spearman(U, ε) 0.74 / ROC-AUC(20th pct.) 0.84 with gram "energy_forces" (there ς → 0: G is well
conditioned, λ_min ≈ 1.6e4), 0.69 / 0.80 with "energy"; U from the per-structure energy variance 0.50,
from the atomic-energy variance (output "atomic_energy") 0.23; K = 8 posterior samples 0.70 / 0.80–0.84.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..core import fields as F
from ..data.batch import INFERENCE_MAX_ATOMS, iterate_batches
from ..nn import response
from ..nn.response import position_grads
from .base import UQMethod, reduce_atoms, register_method
from .options import UQOptions

GRAMS = ("energy", "energy_forces")
FIT_TARGETS = ("forces", "energy")
OUTPUTS = ("forces", "atomic_energy")
_TINY = 1e-300
SAMPLE_SEED_OFFSET = 4_000_037
#: cost of one vmapped forward-mode tangent over one batched reverse pass (VJP) through PaiNN, measured on
#: CPU (benchmarks/llpr_routes.py: 2.7x on ammonia, 3.0x on ethanol, batches of 58 and 100 structures)
FORWARD_PASS_COST = 3.0


class LLPROptions(UQOptions):
    """``uq: {method: llpr, gram, fit_target, samples, output}``."""

    method: Literal["llpr"] = "llpr"
    gram: Literal["energy", "energy_forces"] = Field(
        "energy_forces", description="training rows of the last-layer Gram matrix (energies, or energies and "
                                     "force components)")
    fit_target: Literal["forces", "energy"] = Field("forces", description="validation NLL minimised over α and ς")
    samples: int = Field(0, ge=0, description="0 = exact force variance (one VJP per last-layer feature); K >= 2 = "
                                              "variance over K posterior samples (K VJPs)")
    output: Literal["forces", "atomic_energy"] = Field(
        "forces", description="U from the force variance or the atomic-energy variance (no derivatives)")


@register_method("llpr")
class LLPR(UQMethod):
    colour = "#9467bd"
    options = LLPROptions
    posthoc = True
    posthoc_uses_validation = True
    gives_stress = True
    uncertainty_description = ("LLPR force variance α²·J ᵀ(FᵀF + ς²I)⁻¹J of the last-layer posterior, mean over "
                               "components, (kcal/mol/Å)²")

    def __init__(self, potential: dict, reduction: str = "mean", gram: str = "energy_forces",
                 fit_target: str = "forces", samples: int = 0, output: str = "forces", fit_info: dict | None = None):
        super().__init__(potential, reduction)
        if self.members != 1:
            raise ValueError("LLPR works on one network (members = 1)")
        for name, value, allowed in (("gram", gram, GRAMS), ("fit_target", fit_target, FIT_TARGETS),
                                     ("output", output, OUTPUTS)):
            if value not in allowed:
                raise ValueError(f"llpr {name} {value!r}; use one of {', '.join(allowed)}")
        d = self.potential.last_layer_dim
        if int(samples) < 0 or int(samples) == 1:
            raise ValueError(f"llpr samples must be 0 (exact variance) or >= 2, got {samples}")
        self.gram, self.fit_target, self.output = gram, fit_target, output
        self.samples, self.dim = int(samples), d
        self.fit_info = dict(fit_info or {})
        self.jacobian = "auto"  # route of the force variance (same values): "auto", "reverse" or "forward"
        if output == "atomic_energy":
            self.uncertainty_description = ("LLPR variance of the atomic energy α²·h̃ᵀ(FᵀF + ς²I)⁻¹h̃ (local "
                                            "prediction rigidity), (kcal/mol)²")
        K = self.samples or d
        kw = dict(dtype=torch.float64, device=self.device)
        self.register_buffer("llpr_eigvals", torch.zeros(d, **kw))
        self.register_buffer("llpr_eigvecs", torch.zeros(d, d, **kw))
        self.register_buffer("llpr_alpha2", torch.zeros((), **kw))
        self.register_buffer("llpr_sigma2", torch.zeros((), **kw))
        self.register_buffer("llpr_inverse", torch.zeros(d, d, **kw))  # Σ = (G + ς²I)⁻¹
        self.register_buffer("llpr_directions", torch.zeros(d, K, **kw))  # α·D, DDᵀ = Σ (exact) or samples

    _BUFFERS = ("llpr_eigvals", "llpr_eigvecs", "llpr_alpha2", "llpr_sigma2", "llpr_inverse", "llpr_directions")

    def _apply(self, fn, recurse=True):  # the posterior stays float64 whatever dtype the network uses
        super()._apply(fn, recurse)
        for name in self._BUFFERS:
            setattr(self, name, getattr(self, name).to(torch.float64))
        return self

    @property
    def needs_forces_for_uncertainty(self) -> bool:
        return self.output == "forces"

    def method_hparams(self) -> dict:
        return {"gram": self.gram, "fit_target": self.fit_target, "samples": self.samples, "output": self.output,
                "fit_info": self.fit_info}

    @property
    def fitted(self) -> bool:
        return "alpha2" in self.fit_info

    # ----------------------------------------------------------------- features
    def last_layer_features(self, out: dict) -> torch.Tensor:
        """h̃_i (N, d) from the potential's outputs ``out`` (no member axis): the inputs of its last linear
        layer (PaiNN: s·[act(W₁ξ_i + b₁), 1]; other backbones: :meth:`Potential.last_layer_features`)."""
        return self.potential.last_layer_features(out)

    def _graph(self, batch, compute_forces: bool, create_graph: bool, compute_stress: bool = False):
        """Potential outputs (member axis squeezed), per-atom h̃ (N, d), per-structure f (B, d) and the
        positions leaf, with the forward graph kept for derivatives w.r.t. the positions (and, with
        ``compute_stress``, w.r.t. the strain: ``out[F.STRAIN]`` (1, B, 3, 3))."""
        pos = response.leaf(batch.positions)
        batch = batch.with_positions(pos)
        with response.tracking(pos, True):
            out = self.potential.forward_members(batch, compute_forces, create_graph=create_graph, retain_graph=True,
                                                 **({"compute_stress": True} if compute_stress else {}))
            strain = out.pop(F.STRAIN, None)
            out = {k: v.squeeze(0) for k, v in out.items()}
            if strain is not None:
                out[F.STRAIN] = strain
            ht = self.last_layer_features(out)
            f = ht.new_zeros(batch.num_structures, ht.shape[-1]).index_add(0, batch.batch, ht)
        return out, ht, f, pos

    def _structure_features(self, batch, positions) -> torch.Tensor:
        """f (B, d) as a function of the positions alone (no forces): the forward-mode route's function."""
        out = self.potential.forward_members(batch.with_positions(positions), compute_forces=False)
        ht = self.last_layer_features({k: v.squeeze(0) for k, v in out.items()})
        return ht.new_zeros(batch.num_structures, ht.shape[-1]).index_add(0, batch.batch, ht)

    def forward_mode(self, batch, create_graph: bool) -> bool:
        """Whether the force variance of ``batch`` takes the forward-mode route (see the module docstring):
        ``jacobian`` "forward" or "reverse" as set, "auto" = forward when no graph is kept, the backbone
        supports forward-mode autograd and 3·n_max tangents cost less than K reverse passes, counting a
        tangent as :data:`FORWARD_PASS_COST` reverse passes (3·n_max·c < K)."""
        if self.jacobian == "reverse" or create_graph:
            return False
        if self.jacobian == "forward":
            return True
        if not getattr(self.potential, "forward_ad", False) or torch.compiler.is_compiling():
            return False
        n_max = int(batch.n_atoms.max()) if batch.num_structures else 0
        return 3 * n_max * FORWARD_PASS_COST < self.llpr_directions.shape[1]

    # ----------------------------------------------------------------- prediction
    def forward(self, batch, compute_forces: bool = True, create_graph: bool | None = None,
                retain_graph: bool | None = None, compute_stress: bool = False) -> dict:
        """Energy, forces, features, ``energy_variance`` σ²_E and U per atom and structure (see module); with
        ``compute_stress`` the stress and its variance σ²_σ,ab = α²·(∂f/∂ε_ab)ᵀ(FᵀF + ς²I)⁻¹(∂f/∂ε_ab)/V², the
        force variance's form with the strain in place of the positions."""
        if not self.fitted:
            raise RuntimeError("the LLPR is not fitted yet (fit_posthoc after training)")
        create_graph = self.training if create_graph is None else create_graph
        out, ht, f, pos = self._graph(batch, compute_forces, create_graph, compute_stress)
        strain = out.pop(F.STRAIN, None)
        if strain is not None:
            with torch.enable_grad():
                g = f @ self.llpr_directions.to(f.dtype)  # (B, K), α included
                de = position_grads(g.T, strain, create_graph=create_graph)[:, 0]  # (K, B, 3, 3)
            vol = torch.linalg.det(batch.cell.to(de.dtype)).abs().view(-1, 1, 1)
            out[F.STRESS_VARIANCE] = de.pow(2).sum(0) / vol.pow(2)
        with torch.enable_grad() if create_graph else torch.no_grad():
            sigma = self.llpr_inverse.to(f.dtype)
            out[F.ENERGY_VARIANCE] = self.llpr_alpha2 * ((f.to(torch.float64) @ self.llpr_inverse)
                                                         * f.to(torch.float64)).sum(-1)
            if self.output == "atomic_energy":
                out[F.UNCERTAINTY_ATOM] = self.llpr_alpha2.to(f.dtype) * ((ht @ sigma) * ht).sum(-1)
        if self.output == "forces":
            D = self.llpr_directions.to(f.dtype)
            if self.forward_mode(batch, create_graph):
                J = response.structure_jacobian(lambda p: self._structure_features(batch, p) @ D, pos, batch.batch)
                var = J.pow(2).sum(-1)  # (N, 3): Σ_k (∂g_k/∂r_ia)²
            else:
                with torch.enable_grad():
                    g = f @ D  # (B, K), α included
                    grads = position_grads(g.T, pos, create_graph=create_graph)  # (K, N, 3)
                var = grads.pow(2).sum(0)  # σ²_F per component (N, 3)
            out[F.FORCES_VARIANCE] = var
            out[F.UNCERTAINTY_ATOM] = var.mean(-1)
        if not create_graph:
            out = {k: v.detach() for k, v in out.items()}
        out[F.UNCERTAINTY] = reduce_atoms(out[F.UNCERTAINTY_ATOM], batch, self.reduction)
        return out

    # ----------------------------------------------------------------- fitting
    def _pass(self, dataset, batch_size: int, need_jacobian: bool, basis: torch.Tensor | None = None):
        """Per batch: f (B, d), J (d, N, 3) when asked, force and energy residuals; with ``basis`` V the
        squared projections (Vᵀf)² and (VᵀJ)² instead of f and J."""
        self.eval()
        for _, b in iterate_batches(dataset, batch_size, self.cutoff, dtype=self.dtype, device=self.device,
                                    max_atoms=INFERENCE_MAX_ATOMS):
            out, _, f, pos = self._graph(b, compute_forces=True, create_graph=False)
            J = position_grads(f.T, pos).detach().double() if need_jacobian else None
            f = f.detach().double()
            item = {"f": f, "J": J, "e_res": (out[F.ENERGY].detach() - b.energy).double(),
                    "f_res": (out[F.FORCES].detach() - b.forces).double()}
            if basis is not None:
                item["Pe"] = (f @ basis).pow(2)  # (B, d)
                if J is not None:
                    item["Yf"] = (basis.T @ J.reshape(J.shape[0], -1)).T  # (3N, d): VᵀJ_ia
            yield item

    def fit_posthoc(self, train, val=None, batch_size: int = 64) -> dict:
        """G from ``train``; α, ς from ``val`` (or ``train`` when no validation set is given)."""
        from scipy import optimize

        d = self.dim
        G = torch.zeros(d, d, dtype=torch.float64, device=self.device)
        n_train = 0
        for it in self._pass(train, batch_size, need_jacobian=self.gram == "energy_forces"):
            G += it["f"].T @ it["f"]
            if it["J"] is not None:
                Jm = it["J"].reshape(d, -1)
                G += Jm @ Jm.T
            n_train += it["f"].shape[0]
        lam, V = torch.linalg.eigh(G)
        lam = lam.clamp(min=0.0)

        fit_set = val if val is not None and len(val) else train
        need_j = self.fit_target == "forces" or self.output == "forces"
        Pe, Pf, r2e, r2f = [], [], [], []
        for it in self._pass(fit_set, batch_size, need_jacobian=need_j, basis=V):
            Pe.append(it["Pe"])
            r2e.append(it["e_res"].pow(2))
            if need_j:
                Pf.append(it["Yf"])
                r2f.append(it["f_res"].reshape(-1).pow(2))
        lam_np = lam.cpu().numpy()
        Pe, r2e = torch.cat(Pe).cpu().numpy(), torch.cat(r2e).cpu().numpy()
        Yf = torch.cat(Pf).cpu().numpy() if need_j else None  # VᵀJ_ia per validation component
        Pf = Yf ** 2 if need_j else None
        r2f = torch.cat(r2f).cpu().numpy() if need_j else None
        P, r2 = (Pf, r2f) if self.fit_target == "forces" else (Pe, r2e)

        lam_max = max(float(lam_np.max()), 1e-12)
        lo, hi = math.log(lam_max) + math.log(1e-16), math.log(lam_max) + math.log(1e4)
        grid = np.linspace(lo, hi, 201)
        nll_grid = np.array([_nll(P, r2, lam_np, math.exp(t))[0] for t in grid])
        k = int(np.argmin(nll_grid))
        res = optimize.minimize_scalar(lambda t: _nll(P, r2, lam_np, math.exp(t))[0], method="bounded",
                                       bounds=(grid[max(k - 1, 0)] - 1e-9, grid[min(k + 1, len(grid) - 1)] + 1e-9),
                                       options={"xatol": 1e-6})
        t = float(res.x) if res.fun <= nll_grid[k] else float(grid[k])
        sigma2 = math.exp(t)
        nll, alpha2 = _nll(P, r2, lam_np, sigma2)

        # directions of the force variance: Σ = V S² Vᵀ with S = (Λ + ς²)^{-1/2}: D = V S (exact), or
        # D = V S Z/√K with Z ~ N(0, I) of shape (d, K) (K posterior samples w_k − ŵ = αDz_k)
        self.set_posterior(lam, V, alpha2, sigma2, directions=self._directions(lam, V, sigma2))
        info = {"gram": self.gram, "fit_target": self.fit_target, "fitted_on": "validation" if fit_set is val else "train",
                "n_train_structures": n_train, "n_fit_structures": len(fit_set), "alpha2": alpha2,
                "sigma2": sigma2, "sigma2_over_max_eigenvalue": sigma2 / lam_max,
                "eigenvalue_range": [float(lam_np.min()), float(lam_np.max())], "nll": nll,
                "nll_at_sigma2_grid_ends": [float(nll_grid[0]), float(nll_grid[-1])],
                "sigma2_at_grid_end": bool(k in (0, len(grid) - 1)), "samples": self.samples}
        # both NLLs at the chosen constants (exact variances), for reference
        info["nll_energy"] = _nll_fixed(Pe, r2e, lam_np, sigma2, alpha2)
        if need_j:
            info["nll_forces"] = _nll_fixed(Pf, r2f, lam_np, sigma2, alpha2)
        self.fit_info = info
        return info

    def _directions(self, lam, V, sigma2: float) -> torch.Tensor:
        """V(Λ + ς²)^{-1/2} (exact), or times Z/√K with Z ~ N(0, I) (d, K) seeded from the potential's seed."""
        lam = torch.as_tensor(lam, dtype=torch.float64).cpu().clamp(min=0.0)
        D = torch.as_tensor(V, dtype=torch.float64).cpu() / (lam + sigma2).sqrt()
        if self.samples:
            gen = torch.Generator().manual_seed(int(self.potential.hparams["seeds"][0]) + SAMPLE_SEED_OFFSET)
            D = D @ torch.randn(self.dim, self.samples, generator=gen, dtype=torch.float64) / math.sqrt(self.samples)
        return D

    def with_samples(self, samples: int) -> "LLPR":
        """The same fitted LLPR with U from ``samples`` posterior samples (0: exact); no data needed (the
        sampled variance is an unbiased estimate of the exact one, so α and ς carry over)."""
        if not self.fitted:
            raise RuntimeError("the LLPR is not fitted yet (fit_posthoc after training)")
        new = LLPR.from_hparams({**self.hparams, "samples": int(samples)}).to(device=self.device, dtype=self.dtype)
        new.load_state_dict({k: v for k, v in self.state_dict().items() if k != "llpr_directions"}, strict=False)
        new.fit_info = {**self.fit_info, "samples": int(samples)}
        a2, s2 = self.fit_info["alpha2"], self.fit_info["sigma2"]
        new.set_posterior(self.llpr_eigvals, self.llpr_eigvecs, a2, s2,
                          directions=new._directions(self.llpr_eigvals, self.llpr_eigvecs, s2))
        return new.train(self.training)

    def with_output(self, output: str) -> "LLPR":
        """The same fitted LLPR (the same posterior, α and ς) with U of another ``output``: ``"atomic_energy"``
        gives the local prediction rigidity of the network the force variance was fitted on, at the cost of
        one forward pass (no derivatives)."""
        if not self.fitted:
            raise RuntimeError("the LLPR is not fitted yet (fit_posthoc after training)")
        new = LLPR.from_hparams({**self.hparams, "output": output}).to(device=self.device, dtype=self.dtype)
        new.load_state_dict(self.state_dict(), strict=True)
        new.jacobian = self.jacobian
        return new.train(self.training)

    @torch.no_grad()
    def set_posterior(self, eigvals, eigvecs, alpha2: float, sigma2: float, directions=None) -> None:
        """Sets the buffers from G's eigendecomposition and the constants α², ς².  ``directions`` D (d, K)
        give the force variance Σ_k (∂(αD_kᵀf)/∂r)² (default the exact V(Λ + ς²)^{-1/2}, DDᵀ = Σ); they are
        stored multiplied by α."""
        lam = torch.as_tensor(eigvals, dtype=torch.float64, device=self.device).clamp(min=0.0)
        V = torch.as_tensor(eigvecs, dtype=torch.float64, device=self.device)
        K = self.llpr_directions.shape[1]
        inv = 1.0 / (lam + sigma2)
        D = V * inv.sqrt() if directions is None else torch.as_tensor(directions, dtype=torch.float64,
                                                                       device=self.device)
        if tuple(D.shape) != (self.dim, K):
            raise ValueError(f"directions of shape {tuple(D.shape)}, expected {(self.dim, K)}")
        self.llpr_eigvals.copy_(lam)
        self.llpr_eigvecs.copy_(V)
        self.llpr_alpha2.fill_(float(alpha2))
        self.llpr_sigma2.fill_(float(sigma2))
        self.llpr_inverse.copy_((V * inv) @ V.T)
        self.llpr_directions.copy_(math.sqrt(alpha2) * D)
        self.fit_info = {**self.fit_info, "alpha2": float(alpha2), "sigma2": float(sigma2)}


def _nll_from_g(r2: np.ndarray, var: np.ndarray) -> float:
    var = np.maximum(var, _TINY)
    return float(np.mean(0.5 * np.log(2 * np.pi * var) + r2 / (2 * var)))


def _nll(P: np.ndarray, r2: np.ndarray, lam: np.ndarray, sigma2: float) -> tuple[float, float]:
    """(NLL, α²) at ς² with α² at its closed-form optimum mean(r²/g)."""
    g = np.maximum(P @ (1.0 / (lam + sigma2)), _TINY)
    alpha2 = float(np.mean(r2 / g))
    nll = 0.5 * (math.log(2 * math.pi) + math.log(max(alpha2, _TINY)) + float(np.mean(np.log(g))) + 1.0)
    return nll, alpha2


def _nll_fixed(P, r2, lam, sigma2, alpha2) -> float:
    return _nll_from_g(r2, alpha2 * (P @ (1.0 / (lam + sigma2))))
