"""``uq: {method: none}``: a plain potential trained with SI Eq. 1, without an uncertainty.

Registered as a method so that the run pipeline treats it as any other: its class says what it is
(``plain``: the trained :class:`~uqpot.nn.potential.Potential` is the model, written as a ``potential``
model file; nothing wraps it and nothing is calibrated; one network).  It is in
:data:`uqpot.uq.base.PLAIN`, not in :data:`uqpot.uq.base.METHODS` (the methods that give an uncertainty).
"""

from __future__ import annotations

from .base import UQMethod, register_method
from .options import NoneOptions


@register_method("none")
class Plain(UQMethod):
    """The plain potential (``none``): never instantiated (the model is the potential itself)."""

    options = NoneOptions
    plain = True
    colour = "#7f7f7f"
