"""Uncertainty quantification methods: one interface (:class:`UQMethod`), one registry line each."""

from .base import METHODS, REDUCTIONS, Uncertainty, UQMethod, reduce_atoms, register_method  # noqa: F401
from .ensemble import Ensemble  # noqa: F401
from .evidential import Evidential  # noqa: F401
from .gmm import GMM  # noqa: F401
from .llpr import LLPR  # noqa: F401
from .mve import MVE  # noqa: F401
from .shallow import ShallowEnsemble  # noqa: F401


def build_method(uq_cfg, potential_hparams: dict) -> UQMethod:
    """A UQ method from the ``uq`` section of a config and the potential's hyper-parameters."""
    name = uq_cfg.method
    if name not in METHODS:
        raise ValueError(f"unknown UQ method {name!r}; known: {', '.join(sorted(METHODS))}")
    opts = uq_cfg.method_options()
    if name == "gmm":
        opts["seed"] = int(potential_hparams["seeds"][0])
    return METHODS[name](potential=potential_hparams, reduction=uq_cfg.reduction, **opts)
