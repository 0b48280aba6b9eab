"""Imports every model class so that each registers its kind with :mod:`uqpot.modelfile`."""

from .nn.potential import Potential  # noqa: F401
