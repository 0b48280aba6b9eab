"""The interface every uncertainty method implements, its registry, and the uncertainty object it returns.

A UQ method wraps a :class:`~uqpot.nn.potential.Potential` (M stacked networks for an ensemble, one
otherwise) plus whatever it adds (variance heads, a mixture model, a last-layer posterior).  Two kinds:

* *trained with* its network (ensemble, MVE, evidential, shallow ensemble): the trainer trains the method
  itself (``forward_members`` + ``make_loss``), then runs its further ``stages`` (e.g. a fine-tuning);
* *post-hoc* (``posthoc = True``: GMM, LLPR): the network is a plain potential trained with SI Eq. 1, and the
  method wraps any such trained potential (:meth:`UQMethod.wrap`, ``uqpot wrap MODEL --method NAME``).

Both may fit something after training, with one signature: ``fit_posthoc(train, val, batch_size)``.  Every
method predicts energies, forces and an uncertainty U per atom and per structure.

Per-atom → per-structure reduction is explicit: ``reduction`` is ``mean`` (default), ``max`` or ``sum``
over the atoms of each structure.  ``uncertainty(batch)`` is differentiable with respect to
``batch.positions`` (adversarial attacks climb it).

Adding a method is one file: a subclass of :class:`UQMethod` with its typed options (a
:class:`~uqpot.uq.options.UQOptions` subclass with ``method: Literal["name"]``, set as ``options``), the
output keys it produces registered in :mod:`uqpot.core.fields`, decorated with ``@register_method("name")``; a
built-in method's module is imported in :mod:`uqpot.uq`.  The config (``uq: {method: name, ...}``), the
model files, the CLI and the studies then know it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import fields as F
from ..nn import modelfile
from ..data.batch import AtomsBatch
from ..nn.backbone import build_potential
from ..nn.potential import Potential
from ..train.losses import EnergyForceLoss
from .options import REDUCTIONS, UQOptions, register_options

#: method name -> class: the methods that give an uncertainty
METHODS: dict[str, type["UQMethod"]] = {}
#: method name -> class: the plain methods (``plain = True``: ``none``, a potential without uncertainty)
PLAIN: dict[str, type["UQMethod"]] = {}


def register_method(name: str):
    """Class decorator: registers a method, its options (``cls.options``) and its model-file kind (a
    ``plain`` method has none: its model file is the potential's)."""

    def deco(cls):
        options = cls.__dict__.get("options")
        if options is None or not issubclass(options, UQOptions):
            raise TypeError(f"UQ method {name!r} must declare its options: options = <a UQOptions subclass>")
        register_options(name, options)
        cls.method = name
        if cls.plain:
            PLAIN[name] = cls
            return cls
        cls.kind = f"uq.{name}"
        METHODS[name] = cls
        modelfile.register(cls.kind)(cls)
        return cls

    return deco


def method_class(name: str) -> type["UQMethod"]:
    """The class of the registered method ``name`` (``none`` included)."""
    cls = METHODS.get(name) or PLAIN.get(name)
    if cls is None:
        raise ValueError(f"unknown UQ method {name!r}; known: {', '.join(sorted(METHODS))}")
    return cls


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
    #: the method's typed options (a UQOptions subclass with ``method: Literal[name]``)
    options: type[UQOptions] | None = None
    #: what U is, in words (reports, plots)
    uncertainty_description = ""
    #: whether U can be negative (e.g. a negative log-likelihood)
    signed_uncertainty = False
    #: post-hoc: the network is a plain potential (SI Eq. 1, M = 1) that :meth:`wrap` takes as it is
    posthoc = False
    #: plain: no uncertainty at all (``none``): the trained potential is the model, nothing wraps it, no
    #: calibration; never instantiated
    plain = False
    #: whether ``fit_posthoc`` fits on the validation set (e.g. LLPR's α, ς)
    posthoc_uses_validation = False
    #: the key of the attack settings (``uqpot.sample.adversarial.AttackSettings``) that gives this
    #: method's number of attack iterations
    attack_iterations = "iterations"
    #: whether U depends on the forces (ensembles): then U's gradient needs the force graph
    needs_forces_for_uncertainty = False
    #: whether the training step compiles (``train.compile``; tested: tests/test_layout.py,
    #: tests/test_member_order.py) and whether the compiled MD call is tested equal to the eager one
    #: (:mod:`uqpot.train.autocompile`), on a backbone that compiles
    compiles = False
    md_compiles = False
    #: the method's colour in figures (None: matplotlib's choice)
    colour: str | None = None
    #: whether reports draw its mixture figures: the component selection (``posthoc["curve"]`` of its run
    #: summary: BIC and silhouette) and the training set's latent PCA coloured by component (its ``gmm_*``
    #: buffers), Figs. S4-S5
    mixture_figures = False
    #: whether a loop runs its steps first among the methods of a generation (the longest: an ensemble's MD
    #: costs M model calls), so that parallel workers finish together
    runs_first = False
    #: whether the replicates of a study (its seeds) can train as members of one stack
    #: (:mod:`uqpot.fit.replicates`): every trainable parameter carries the member axis, one slice per network
    stacks_replicates = True

    def __init__(self, potential: dict, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")
        self.potential = build_potential(potential)
        self.reduction = reduction

    # ----------------------------------------------------------------- construction and persistence
    @classmethod
    def trains_plain_potential(cls) -> bool:
        """Whether the network is trained as a plain potential (``none`` and the post-hoc methods, which then
        wrap it): such runs with the same model, training settings, data and seed train the same network."""
        return cls.plain or cls.posthoc

    @classmethod
    def trains_stress(cls) -> bool:
        """Whether the method can train on a stress label (its training network gives a stress): plain
        potentials and the post-hoc methods around them, and the methods with ``gives_stress``."""
        return cls.trains_plain_potential() or cls.gives_stress

    @classmethod
    def members_for(cls, options: UQOptions) -> int:
        """How many stacked networks the method trains (an ensemble's ``members``; 1 otherwise)."""
        return 1

    @classmethod
    def from_options(cls, options: UQOptions, potential_hparams: dict) -> "UQMethod":
        """The method from its typed options around a new potential with ``potential_hparams``."""
        return cls(potential=potential_hparams, reduction=options.reduction, **options.method_options())

    @classmethod
    def wrap(cls, potential: Potential, options: UQOptions | None = None) -> "UQMethod":
        """This (post-hoc) method around a trained potential: the potential's weights and buffers, its dtype
        and device; the post-hoc part is still to be fitted (:meth:`fit_posthoc`)."""
        if not cls.posthoc:
            raise ValueError(f"{cls.method} is trained with its network; only post-hoc methods wrap a trained "
                             "potential")
        if not isinstance(potential, Potential):
            raise ValueError(f"{cls.method} wraps a plain potential, not a {getattr(potential, 'kind', type(potential))}")
        options = options or cls.options()
        model = cls.from_options(options, dict(potential.hparams)).to(device=potential.device, dtype=potential.dtype)
        model.potential.load_state_dict(potential.state_dict(), strict=True)
        return model.train(potential.training)

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
    #: whether the method gives the stress (and its variance) of periodic structures
    gives_stress = False

    def forward_members(self, batch: AtomsBatch, compute_forces: bool = True, create_graph: bool | None = None,
                        retain_graph: bool | None = None, compute_stress: bool = False) -> dict:
        """Training outputs with a leading member axis (the potential's, plus any head outputs)."""
        return self.potential.forward_members(batch, compute_forces, create_graph, retain_graph,
                                              compute_stress=compute_stress)

    def make_loss(self, train_cfg):
        """The training objective (per member); SI Eq. 1 unless the method defines its own."""
        return EnergyForceLoss(train_cfg.energy_weight, train_cfg.forces_weight,
                               (train_cfg.stress_weight or 0.0) if self.gives_stress else 0.0)

    def stages(self, train_cfg) -> list:
        """Training stages after the main training (:class:`uqpot.train.stages.Stage`), e.g. a fine-tuning
        on another loss; run by :func:`uqpot.train.stages.run_stage` before :meth:`fit_posthoc`."""
        return []

    def fit_posthoc(self, train, val=None, batch_size: int = 64) -> dict:
        """Anything fitted after training (the GMM, LLPR's posterior) on the training set ``train`` (and the
        validation set ``val`` where ``posthoc_uses_validation``); returns a JSON-able summary."""
        return {}

    # ----------------------------------------------------------------- prediction
    def combine(self, out: dict, batch: AtomsBatch) -> dict:
        """Member/head outputs → energy (B,), forces (N, 3), ``uncertainty_atom`` (N,) and extras."""
        raise NotImplementedError

    def forward(self, batch: AtomsBatch, compute_forces: bool = True, create_graph: bool | None = None,
                retain_graph: bool | None = None, compute_stress: bool = False) -> dict:
        """Energy, forces, per-atom features ξ and the uncertainty per atom and per structure (and the stress
        where the method gives it: ``gives_stress``)."""
        if compute_stress and not self.gives_stress:
            raise NotImplementedError(f"{self.method} gives no stress (nor a stress uncertainty); the ensemble does")
        out = (self.forward_members(batch, compute_forces, create_graph, retain_graph, compute_stress=True)
               if compute_stress else self.forward_members(batch, compute_forces, create_graph, retain_graph))
        res = self.combine(out, batch)
        res[F.UNCERTAINTY] = reduce_atoms(res[F.UNCERTAINTY_ATOM], batch, self.reduction)
        return res

    def uncertainty(self, batch: AtomsBatch) -> Uncertainty:
        """U of every atom and structure, differentiable w.r.t. ``batch.positions``."""
        out = self.forward(batch, compute_forces=self.needs_forces_for_uncertainty, create_graph=True)
        return Uncertainty(out[F.UNCERTAINTY_ATOM], out[F.UNCERTAINTY], self.reduction,
                           self.uncertainty_description)
