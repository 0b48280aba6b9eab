"""Uncertainty quantification methods: one interface (:class:`UQMethod`), one file each.

Importing this package registers the built-in methods (their options, output fields and model-file kinds);
a method defined elsewhere registers itself when its module is imported (``@register_method``).
"""

from .base import (METHODS, PLAIN, REDUCTIONS, Uncertainty, UQMethod, method_class, reduce_atoms,  # noqa: F401
                   register_method)
from .descriptor_distance import DescriptorDistance  # noqa: F401
from .ensemble import Ensemble  # noqa: F401
from .evidential import Evidential  # noqa: F401
from .gmm import GMM  # noqa: F401
from .llpr import LLPR  # noqa: F401
from .mve import MVE  # noqa: F401
from .options import OPTIONS, UQOptions, parse_uq, uq_options  # noqa: F401
from .shallow import ShallowEnsemble  # noqa: F401
from .partial_ensemble import PartialEnsemble  # noqa: F401
from .plain import Plain  # noqa: F401


def build_method(uq_cfg: UQOptions, potential_hparams: dict) -> UQMethod:
    """A UQ method from the ``uq`` section of a config and the potential's hyper-parameters."""
    return method_class(uq_cfg.method).from_options(uq_cfg, potential_hparams)
