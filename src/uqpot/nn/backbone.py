"""The backbone interface: what uqpot needs from an interatomic potential, and the registry of backbones.

Every consumer in uqpot (the trainer, the UQ methods, evaluation, the ASE calculator, the adversarial
attack, the batched MD engine, the loop) talks to a :class:`~uqpot.nn.potential.Potential`.  A backbone is
a subclass of it that supplies the network; the base class keeps what is common.  A backbone provides:

* ``_energy_outputs(batch, pos_m)``: from an :class:`~uqpot.data.batch.AtomsBatch` and member positions
  ``pos_m`` (M, N, 3), differentiable in them, the per-atom energies without references
  ``atomic_energy`` (M, N) in kcal/mol, their per-structure sums ``energy_residual`` (M, B) and per-atom
  features ξ ``features`` (M, N, F) (what GMM, MVE and evidential heads read; F = ``hparams["features"]``);
* ``last_layer_features(out)`` and ``last_layer_dim``: per-atom h̃ (N, d) in which the atomic energy is
  linear (LLPR's last layer);
* ``block_of(name)``: where parameter ``name`` sits, ``"embedding"``, an interaction's index or ``"readout"``
  (:meth:`~uqpot.nn.potential.Potential.parameter_blocks` orders them; fine-tuning freezes by block);
* ``fresh_readout(seeds)``: the readout block's weights of the network initialised afresh, member m from
  ``seeds[m]`` (``finetune.readout: reinit``); the base class rebuilds the network from ``hparams``, which
  serves every backbone whose constructor initialises its members from their seeds;
* ``cutoff`` (Å), ``elements()`` (the atomic numbers it knows), ``members`` M (networks evaluated in one
  call, each parameter with a leading member axis, as the trainer's per-member Adam expects), ``hparams``
  (plain values that rebuild it, ``backbone`` among them for every backbone but PaiNN: the model file
  stores them with the state dict, never a pickled object);
* units: kcal/mol and Å inside uqpot; a backbone whose network works in other units (MACE files: eV)
  converts in its energy scale.

Its capabilities are class attributes, declared by every registered class itself (checked at registration,
read by the trainer, the compile choice, LLPR and the run checks; never a test of the backbone's name):

* ``supports_dense``: whether it evaluates the dense pair layout of the data layer (else edge lists only;
  ``train.layout: dense`` is refused);
* ``compilable``: whether its training step and MD call compile (``train.compile``, :mod:`uqpot.train.autocompile`);
* ``forward_ad``: whether its energy outputs support forward-mode autograd under ``torch.func.vmap`` (LLPR's
  force variance then takes the forward-mode route on small molecules);
* ``title``: its name in messages; ``check_available()``: raises ImportError (with the install hint) when an
  optional dependency is missing; imported only then, so that registering it needs nothing optional.

Adding a backbone is one file: a :class:`~uqpot.nn.potential.Potential` subclass with those attributes,
and its options (a :class:`BackboneOptions` subclass with ``kind: Literal["<name>"]``, the ``model:``
section of a config, whose :meth:`BackboneOptions.potential_hparams` gives the constructor's arguments)
beside it, decorated with ``@register_backbone("<name>", options=...)``; a built-in backbone's module is
imported in :mod:`uqpot.nn`.  The config (``model: {kind: <name>, ...}``), the model files, training, the
UQ methods and MD then know it.  Built in: ``painn`` (uqpot's PaiNN, the paper's network; the default,
:class:`~uqpot.nn.potential.Potential` itself) and ``mace`` (:mod:`uqpot.nn.mace`, needs
``pip install 'uqpot[mace]'``).  A model file's hyper-parameters name their backbone (``hparams["backbone"]``;
files without it are PaiNN).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import SerializeAsAny, TypeAdapter, WrapValidator, create_model

from ..core.schema import Strict

#: the backbone of a ``model`` section without ``kind`` and of model files without ``hparams["backbone"]``
DEFAULT = "painn"
#: the capabilities every registered backbone class declares itself
CAPABILITIES = ("supports_dense", "compilable", "forward_ad", "title")


class BackboneOptions(Strict):
    """The ``model`` section of a config for one backbone: ``kind`` (its registered name) chooses it; every
    backbone has a ``cutoff`` (Å) among its options."""

    kind: str

    def potential_hparams(self, members: int, seeds: list[int], train=None) -> dict:
        """The hyper-parameters of a new potential (what :func:`build_potential` takes: the constructor's
        arguments, with ``backbone: <name>`` for every backbone but the default) for ``members`` stacked
        networks, member k seeded with ``seeds[k]``; ``train`` (the training set) for a backbone sized from
        its data."""
        raise NotImplementedError


#: backbone name -> its Potential subclass
BACKBONES: dict[str, type] = {}
#: backbone name -> its options model (the ``model`` section)
OPTIONS: dict[str, type[BackboneOptions]] = {}


def register_backbone(name: str, options: type[BackboneOptions]):
    """Class decorator: registers a backbone (a Potential subclass) under ``name`` with its options model;
    the class must declare its :data:`CAPABILITIES` itself (not inherit them)."""

    def deco(cls):
        if not (isinstance(options, type) and issubclass(options, BackboneOptions)):
            raise TypeError(f"backbone {name!r}: options must be a BackboneOptions subclass")
        if options.model_fields["kind"].default != name and options.model_fields["kind"].annotation != Literal[name]:
            raise ValueError(f"the options of backbone {name!r} must declare kind: Literal[{name!r}]")
        if "cutoff" not in options.model_fields:
            raise TypeError(f"the options of backbone {name!r} must have a cutoff")
        missing = [a for a in CAPABILITIES if a not in cls.__dict__]
        if missing:
            raise TypeError(f"backbone {name!r} must declare its capabilities: {', '.join(missing)}")
        cls.backbone = name
        BACKBONES[name] = cls
        OPTIONS[name] = options
        return cls

    return deco


#: the names of the assembled backbones (:func:`register_assembled`): built from trained model files, never from a
#: ``model`` section of a config, never trained as one network
ASSEMBLED: set[str] = set()


def register_assembled(name: str):
    """Class decorator: registers a backbone that is assembled from trained networks (e.g. a committee of
    different backbones, :mod:`uqpot.nn.committee`) rather than configured and trained: model files rebuild it
    (:func:`build_potential`), a config's ``model.kind`` does not know it.  It declares its
    :data:`CAPABILITIES` as every backbone does."""

    def deco(cls):
        missing = [a for a in CAPABILITIES if a not in cls.__dict__]
        if missing:
            raise TypeError(f"backbone {name!r} must declare its capabilities: {', '.join(missing)}")
        cls.backbone = name
        BACKBONES[name] = cls
        ASSEMBLED.add(name)
        return cls

    return deco


def backbone_class(name: str):
    """The :class:`~uqpot.nn.potential.Potential` subclass of backbone ``name``."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None


def build_potential(hparams: dict):
    """A potential from the hyper-parameters of a model file (or of a new run)."""
    hp = dict(hparams)
    name = hp.pop("backbone", DEFAULT)
    return backbone_class(name)(**hp)


def _validate_model(value, handler):
    if isinstance(value, BackboneOptions):
        return value
    kind = value.get("kind", DEFAULT) if isinstance(value, dict) else DEFAULT
    if kind in ASSEMBLED:
        raise ValueError(f"kind {kind!r} is assembled from trained model files (uqpot wrap A.pt B.pt ... --method "
                         f"ensemble), not trained from a config; give the kind of each network to train")
    if kind not in OPTIONS:  # the error names model.kind and the kinds there are
        create_model("_Kind", kind=(Literal[tuple(OPTIONS)], ...)).model_validate({"kind": kind})
    return OPTIONS[kind].model_validate(value)


def default_options() -> BackboneOptions:
    """The ``model`` section when none is given: the default backbone's defaults."""
    return OPTIONS[DEFAULT]()


#: the ``model`` section: the options of the backbone that ``kind`` names (PaiNN without ``kind``)
ModelSection = Annotated[SerializeAsAny[BackboneOptions], WrapValidator(_validate_model)]


def parse_model(data) -> BackboneOptions:
    """The typed ``model`` section (PaiNN unless ``kind`` names another backbone)."""
    return TypeAdapter(ModelSection).validate_python(data)
