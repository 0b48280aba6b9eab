"""The interface every uncertainty method implements, and the uncertainty object it returns.

A UQ method wraps a :class:`~uqpot.nn.potential.Potential` (M stacked networks for an ensemble, one
otherwise) plus whatever it adds (variance heads, a mixture model).  It is trained by the same trainer as a
plain potential (``forward_members`` + ``make_loss``), may fit something after training (``fit_posthoc``),
and predicts energies, forces and an uncertainty U per atom and per structure.

Per-atom → per-structure reduction is explicit: ``reduction`` is ``mean`` (default), ``max`` or ``sum``
over the atoms of each structure.  ``uncertainty(batch)`` is differentiable with respect to
``batch.positions`` (adversarial attacks climb it).

Adding a method: subclass :class:`UQMethod`, decorate it with ``@register_method("name")``, and import the
module in :mod:`uqpot.uq` (one file and one registry line).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import fields as F
from .. import modelfile
from ..data.batch import AtomsBatch
from ..nn.potential import Potential
from ..train.losses import EnergyForceLoss

REDUCTIONS = ("mean", "max", "sum")

#: method name -> class
METHODS: dict[str, type["UQMethod"]] = {}


def register_method(name: str):
    def deco(cls):
        cls.method = name
        cls.kind = f"uq.{name}"
        METHODS[name] = cls
        modelfile.register(cls.kind)(cls)
        return cls

    return deco


def reduce_atoms(values: torch.Tensor, batch: AtomsBatch, reduction: str = "mean") -> torch.Tensor:
    """Per-atom values (..., N) → per-structure values (..., B); differentiable."""
    B = batch.num_structures
    shape = values.shape[:-1] + (B,)
    if reduction in ("mean", "sum"):
        out = values.new_zeros(shape).index_add(-1, batch.batch, values)
        if reduction == "mean":
            out = out / batch.n_atoms.to(values.dtype)
        return out
    if reduction == "max":
        idx = batch.batch.expand_as(values)
        return values.new_full(shape, float("-inf")).scatter_reduce(-1, idx, values, reduce="amax",
                                                                      include_self=False)
    raise ValueError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")


@dataclass
class Uncertainty:
    """U per atom (N,) and per structure (B,), with the reduction that links them."""

    per_atom: torch.Tensor
    per_structure: torch.Tensor
    reduction: str
    description: str


class UQMethod(nn.Module):
    method = "base"
    kind = "uq.base"
    #: what U is, in words (reports, plots)
    uncertainty_description = ""
    #: whether U can be negative (e.g. a negative log-likelihood)
    signed_uncertainty = False

    def __init__(self, potential: dict, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")
        self.potential = Potential(**potential)
        self.reduction = reduction

    # ----------------------------------------------------------------- construction and persistence
    @classmethod
    def from_hparams(cls, hparams: dict) -> "UQMethod":
        return cls(**hparams)

    def method_hparams(self) -> dict:
        return {}

    @property
    def hparams(self) -> dict:
        return {"potential": dict(self.potential.hparams), "reduction": self.reduction, **self.method_hparams()}

    # ----------------------------------------------------------------- delegation to the potential
    @property
    def members(self) -> int:
        return self.potential.members

    @property
    def cutoff(self) -> float:
        return self.potential.cutoff

    @property
    def dtype(self) -> torch.dtype:
        return self.potential.dtype

    @property
    def device(self) -> torch.device:
        return self.potential.device

    def elements(self) -> list[int]:
        return self.potential.elements()

    def fit_reference(self, dataset) -> None:
        self.potential.fit_reference(dataset)

    # ----------------------------------------------------------------- training
    def forward_members(self, batch: AtomsBatch, compute_forces: bool = True, create_graph: bool | None = None,
                        retain_graph: bool | None = None) -> dict:
        """Training outputs with a leading member axis (the potential's, plus any head outputs)."""
        return self.potential.forward_members(batch, compute_forces, create_graph, retain_graph)

    def make_loss(self, train_cfg):
        """The training objective (per member); SI Eq. 1 unless the method defines its own."""
        return EnergyForceLoss(train_cfg.energy_weight, train_cfg.forces_weight)

    def fit_posthoc(self, train, batch_size: int = 64) -> dict:
        """Anything fitted after training (e.g. the GMM); returns a JSON-able summary."""
        return {}

    # ----------------------------------------------------------------- prediction
    def combine(self, out: dict, batch: AtomsBatch) -> dict:
        """Member/head outputs → energy (B,), forces (N, 3), ``uncertainty_atom`` (N,) and extras."""
        raise NotImplementedError

    def forward(self, batch: AtomsBatch, compute_forces: bool = True, create_graph: bool | None = None,
                retain_graph: bool | None = None) -> dict:
        """Energy, forces, per-atom features ξ and the uncertainty per atom and per structure."""
        out = self.forward_members(batch, compute_forces, create_graph, retain_graph)
        res = self.combine(out, batch)
        res[F.UNCERTAINTY] = reduce_atoms(res[F.UNCERTAINTY_ATOM], batch, self.reduction)
        return res

    def uncertainty(self, batch: AtomsBatch) -> Uncertainty:
        """U of every atom and structure, differentiable w.r.t. ``batch.positions``."""
        out = self.forward(batch, compute_forces=self.needs_forces_for_uncertainty, create_graph=True)
        return Uncertainty(out[F.UNCERTAINTY_ATOM], out[F.UNCERTAINTY], self.reduction,
                           self.uncertainty_description)

    #: whether U depends on the forces (ensembles) — then U's gradient needs the force graph
    needs_forces_for_uncertainty = False
