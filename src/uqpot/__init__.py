"""uqpot: uncertainty quantification and adversarial active learning for neural-network potentials.

Importing the package imports nothing heavy; ``uqpot.load`` and ``uqpot.save`` import the models on first
use (:mod:`uqpot.evaluation.models`).
"""

from ._version import __version__  # noqa: F401


def load(path, device=None):
    """Loads any uqpot model file (potential or UQ method) written by ``uqpot.save``."""
    from .evaluation.models import load as _load

    return _load(path, device=device)


def save(model, path, extra=None):
    """Writes a potential or UQ method to ``path`` (see :func:`uqpot.evaluation.models.save`)."""
    from .evaluation.models import save as _save

    return _save(model, path, extra)
