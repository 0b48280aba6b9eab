"""Imports every model class so that each registers its kind with :mod:`uqpot.modelfile`."""

from . import uq  # noqa: F401  (ensemble, mve, evidential, gmm, ...)
from .nn.potential import Potential  # noqa: F401
