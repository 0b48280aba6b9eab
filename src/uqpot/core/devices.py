"""Device names (``train.device``, ``--device``): checked when the config is read, and against this machine
before anything is written.

Two steps, because they fail for different reasons: a name PyTorch does not know (``bananas``) is a config
error wherever the run would go; ``cuda`` on a machine without a GPU, or ``cuda:7`` on one with two, is a
property of this machine, found before the run directory is made, so that the same config runs unchanged
where the device exists.  The device is not part of a run's identity: a run started on a GPU resumes on
the CPU and the other way round.
"""

from __future__ import annotations

import re

from .errors import ConfigError

_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    """``name`` if it is a device name uqpot accepts (auto, cpu, cuda, cuda:N, mps); ValueError if not."""
    name = str(name).strip()
    if not _NAME.match(name):
        raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")
    return name


def resolve_device(name: str | None, key: str = "train.device"):
    """The ``torch.device`` for ``name`` on this machine (``auto``: the first GPU if there is one); a
    :class:`ConfigError` naming ``key`` when it is unknown or not available here."""
    import torch

    name = "auto" if name is None else str(name).strip()
    try:
        check_device_name(name)
    except ValueError as exc:
        raise ConfigError(None, f"{key}: {exc}") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(None, f"{key}: {name!r} asked for, but this machine has no CUDA device usable by "
                                    f"this PyTorch ({torch.__version__}); use 'cpu', or 'auto' (a GPU where there "
                                    "is one)")
        index = int(name.split(":")[1]) if ":" in name else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(None, f"{key}: {name!r} asked for, but this machine has {count} CUDA device(s) "
                                    f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(None, f"{key}: 'mps' asked for, but this machine has no Apple GPU; use 'cpu' or 'auto'")
    return torch.device(name)
