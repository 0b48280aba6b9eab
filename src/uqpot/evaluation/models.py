"""Every model kind registered with :mod:`uqpot.nn.modelfile`, and ``load``/``save`` for any of them.

Importing this module imports :mod:`uqpot.uq` (every UQ method) and :mod:`uqpot.nn.potential`, so that
each class has registered its kind before a file is read.  Modules of uqpot load model files through
:func:`load` here (the package's ``uqpot.load`` is the same function), never through the package root.
"""

from ..nn import modelfile
from .. import uq  # noqa: F401  (ensemble, mve, evidential, gmm, ...)
from ..nn.potential import Potential  # noqa: F401


def load(path, device=None, check_extra: bool = True):
    """Loads any uqpot model file (potential or UQ method) written by :func:`save`, in eval mode
    (``check_extra=False``: without checking the stored results that a caller is about to replace)."""
    return modelfile.load(path, device=device, check_extra=check_extra)


def save(model, path, extra=None):
    """Writes ``model`` (a potential or a UQ method) with ``extra`` JSON-able metadata, atomically."""
    return modelfile.save(model, path, extra)
