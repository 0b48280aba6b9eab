"""uqpot: uncertainty quantification and adversarial active learning for neural-network potentials."""

__version__ = "0.1.0"


def load(path, device=None):
    """Loads any uqpot model file (potential or UQ method) written by ``uqpot.save``."""
    from . import modelfile, models  # noqa: F401  (models registers every model kind)

    return modelfile.load(path, device=device)


def save(model, path, extra=None):
    from . import modelfile

    return modelfile.save(model, path, extra)
