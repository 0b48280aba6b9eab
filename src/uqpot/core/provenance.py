"""What a run records beside its results: versions, hardware, seed; and atomic file writes.

Every file uqpot writes goes through :func:`atomic_write`: the content goes to a temporary name in the same
folder (``.NAME.tmpPID``, hidden, with the writer's process id) and is renamed over the target, so readers
never see a partial file.  If the write fails (disk full, permission, Ctrl-C) the temporary file is removed
at once; one left by a killed process (SIGKILL cannot be caught) is removed by :func:`remove_stale_temps`
the next time a run starts in that folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import sys
from pathlib import Path


def versions() -> dict:
    import ase
    import numpy
    import torch

    from .._version import __version__

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


#: temporary names written by :func:`atomic_write`: ``.NAME.tmpPID`` (and ``NAME.tmpPID`` of older versions)
TEMP_PATTERN = re.compile(r"^\.?(?P<name>.+)\.tmp(?P<pid>\d+)(?P<suffix>\.[A-Za-z0-9]+)?$")


def temp_path(path, suffix: str = "") -> Path:
    """The temporary name of ``path`` for this process (``suffix`` for writers that insist on one, such as
    ``np.savez``, which appends ``.npz``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_write(path, suffix: str = ""):
    """``with atomic_write(p) as tmp: write(tmp)``: ``tmp`` is renamed to ``p`` when the block succeeds and
    removed when it raises (so a failed write leaves neither a partial ``p`` nor a temporary file)."""
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # a full disk seen through a file object has no file name, a failed open names the temporary file:
        # the error names the file the user asked for, never ``.NAME.tmpPID``
        if isinstance(exc, OSError) and (not exc.filename or str(exc.filename) == str(tmp)):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def remove_stale_temps(folder, recursive: bool = False) -> list[Path]:
    """Removes temporary files of interrupted writes in ``folder`` (and below it, if ``recursive``) whose
    writer is no longer running (call it while holding the folder's run lock)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.rglob("*") if recursive else folder.iterdir():
        m = TEMP_PATTERN.match(p.name)
        if m is None or not p.is_file():
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def finite_json(data):
    """``data`` with every non-finite float (NaN, ±inf) replaced by None: JSON has no NaN (Python's
    ``json`` would write a bare ``NaN``, which other readers reject), and a missing value is ``null``."""
    import numpy as np

    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    if isinstance(data, np.ndarray):
        return finite_json(data.tolist())
    if isinstance(data, (float, np.floating)):
        return float(data) if math.isfinite(float(data)) else None
    return data


def write_json(path, data) -> None:
    """Writes JSON atomically; non-finite numbers become ``null`` (see :func:`finite_json`)."""
    text = json.dumps(finite_json(data), indent=2, default=_default, allow_nan=False)
    write_text(path, text)


def _default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_bytes(path, data) -> None:
    """Writes ``data`` (bytes or a buffer) atomically."""
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def torch_save(obj, path) -> None:
    """``torch.save(obj)`` into ``path``, atomically and through memory: PyTorch's own writer reports a short
    write (a full disk, a quota, a file-size limit) as a RuntimeError that names neither the file nor the
    cause; writing its bytes here gives the OSError (ENOSPC, EDQUOT, EFBIG) that the command line reports as
    a user error naming the file (:mod:`uqpot.cli.errors`)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getbuffer())


def write_text(path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
