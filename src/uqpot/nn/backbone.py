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
* ``cutoff`` (Å), ``elements()`` (the atomic numbers it knows), ``members`` M (networks evaluated in one
  call, each parameter with a leading member axis, as the trainer's per-member Adam expects), ``hparams``
  (plain values that rebuild it: the model file stores them with the state dict, never a pickled object),
  ``supports_dense`` (whether it evaluates the dense pair layout; otherwise the data layer gives it edge
  lists); ``forward_ad`` (whether its energy outputs support forward-mode autograd under ``torch.func.vmap``:
  LLPR's force variance then takes the forward-mode route on small molecules);
* units: kcal/mol and Å inside uqpot; a backbone whose network works in other units (MACE files: eV)
  converts in its energy scale.

The base class then gives forces F = −∂E/∂r (:mod:`uqpot.nn.response`), the float64 reference energies
e_ref(Z) fitted on the training set, ``forward`` / ``forward_members``.  Backbones: ``painn`` (uqpot's PaiNN,
the paper's network; :class:`~uqpot.nn.potential.Potential` itself) and ``mace`` (:mod:`uqpot.nn.mace`,
needs ``pip install 'uqpot[mace]'``).  A model file's hyper-parameters name their backbone
(``hparams["backbone"]``; files without it are PaiNN).
"""

from __future__ import annotations

import importlib

#: backbone name -> "module:class" (imported on first use, so that optional dependencies stay optional)
BACKBONES: dict[str, str] = {
    "painn": "uqpot.nn.potential:Potential",
    "mace": "uqpot.nn.mace:MACEPotential",
}


def backbone_class(name: str):
    """The :class:`~uqpot.nn.potential.Potential` subclass of backbone ``name``."""
    try:
        target = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_potential(hparams: dict):
    """A potential from the hyper-parameters of a model file (or of a new run)."""
    hp = dict(hparams)
    name = hp.pop("backbone", "painn")
    return backbone_class(name)(**hp)
