"""What a run records beside its results: versions, hardware, seed; and atomic file writes."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def versions() -> dict:
    import ase
    import numpy
    import torch

    from ._version import __version__

    out = {"uqpot": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": numpy.__version__, "ase": ase.__version__, "platform": platform.platform(),
           "cpu_threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for mod in ("vesin", "sklearn", "pyscf", "dask"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def write_json(path, data) -> None:
    """Writes JSON to a temporary name and renames it: readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_default))
    os.replace(tmp, path)


def _default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
