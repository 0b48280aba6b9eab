"""The ``biased_md`` sampler: uncertainty-driven dynamics (UDD; Kulichenko et al., "Uncertainty-driven
dynamics for active learning of interatomic potentials", Nat. Comput. Sci. 3, 230 (2023), their Eq. 2, the
form apax and ALEBREW also use): MD on the biased energy

    E_b(x) = E(x) + A · [exp(−σ²(x) / B²) − 1]

which lowers the energy where the model is uncertain, so that trajectories climb into uncertain regions at
temperatures where plain MD would not reach them.  Kulichenko et al. bias with the ensemble's energy
variance; here σ²(x) = max(a·U(x) + b, floor) is the **calibrated force variance** per component
((kcal/mol/Å)², :mod:`uqpot.sample.trust`), so the same strength A (kcal/mol) and width B (kcal/mol/Å)
act alike on every UQ method.  The bias is bounded (between −A and 0: it cannot pull a trajectory
without limit) and its force

    F_b = −∇E_b = F + (A / B²) · exp(−σ²/B²) · ∇σ² = F + (A·a / B²) · exp(−σ²/B²) · ∇U

follows the gradient of the uncertainty and fades once σ exceeds B (the bias saturates at −A).  ∇U is
taken by autograd through the UQ method's own U (second derivatives of the energy for the force-variance
methods); below the calibration's floor the bias is flat.  Frames are then picked exactly as by the ``md``
sampler (:mod:`uqpot.sample.md`), with U and the energy of the unbiased model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import fields as F
from .base import register_sampler
from .md import MDSampler, MDSamplerConfig, SampleResult, md_sample
from .trust import Calibration


class UncertaintyBias(nn.Module):
    """A UQ model with the UDD bias added to its energy and forces; ``uncertainty`` is the model's own U,
    ``bias_energy`` the bias per structure (kcal/mol).  ``strength`` A kcal/mol, ``width`` B kcal/mol/Å."""

    def __init__(self, model, strength: float, width: float, calibration: Calibration):
        super().__init__()
        if strength < 0 or width <= 0:
            raise ValueError("the bias needs strength >= 0 (kcal/mol) and width > 0 (kcal/mol/Å)")
        self.model = model
        self.strength, self.width, self.cal = float(strength), float(width), calibration
        self.cutoff = model.cutoff
        self.uncertainty_description = getattr(model, "uncertainty_description", "")

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def device(self):
        return self.model.device

    def bias_of_u(self, u: torch.Tensor) -> torch.Tensor:
        """A · [exp(−σ²(U)/B²) − 1] (kcal/mol)."""
        var = torch.clamp(self.cal.a * u.to(torch.float64) + self.cal.b, min=self.cal.floor)
        return self.strength * torch.expm1(-var / self.width ** 2)

    def unbias(self, energy: float, u: float) -> float:
        """The model's own energy from a biased one and its U."""
        return energy - float(self.bias_of_u(torch.tensor(float(u), dtype=torch.float64)))

    def forward(self, batch, compute_forces: bool = True, create_graph: bool | None = False,
                retain_graph: bool | None = None) -> dict:
        create_graph = bool(create_graph)
        pos = batch.positions.detach().requires_grad_(True)
        b = batch.with_positions(pos)
        with torch.enable_grad():
            out = self.model(b, compute_forces=True, create_graph=True)
            bias = self.bias_of_u(out[F.UNCERTAINTY])
            (grad,) = torch.autograd.grad(bias.sum(), pos, create_graph=create_graph)
        forces = out[F.FORCES] - grad.to(out[F.FORCES].dtype)
        energy = out[F.ENERGY].to(torch.float64) + bias
        res = {F.ENERGY: energy, F.FORCES: forces, F.UNCERTAINTY: out[F.UNCERTAINTY], "bias_energy": bias}
        if not create_graph:
            res = {k: v.detach() for k, v in res.items()}
        return res


def biased_md_sample(model, train, cfg: MDSamplerConfig, calibration: Calibration, reference, *, strength: float,
                     width: float, criteria=None) -> SampleResult:
    """:func:`~uqpot.sample.md.md_sample` driven by the biased model."""
    biased = UncertaintyBias(model, strength, width, calibration)
    res = md_sample(model, train, cfg, calibration, reference, criteria=criteria, dynamics_model=biased,
                    unbias=biased.unbias, sampler="biased_md")
    res.summary.update(bias_strength=strength, bias_width=width,
                       bias_form="A*(exp(-sigma^2/B^2)-1), sigma^2 = a*U+b (Kulichenko et al. 2023, Eq. 2)")
    return res


@register_sampler("biased_md")
class BiasedMDSampler(MDSampler):
    """The ``md`` sampler's frames from uncertainty-driven (biased) MD; the bias from ``sampling``'s
    ``bias_strength`` and ``bias_width``."""

    def run(self, model, train, cfg: MDSamplerConfig, cal: Calibration, ref, ctx) -> SampleResult:
        return biased_md_sample(model, train, cfg, cal, ref, strength=ctx.settings.bias_strength,
                                width=ctx.settings.bias_width, criteria=ctx.criteria)
