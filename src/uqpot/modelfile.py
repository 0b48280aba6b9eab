"""Model files: ``state_dict`` + hyper-parameters + uqpot version, nothing pickled.

Files are loaded with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers,
so a model file cannot execute code.  Each model class registers a *kind*; ``load`` rebuilds the class from
its hyper-parameters and loads the state dict strictly.  Files are written to a temporary name and renamed,
so a crash never leaves a truncated model behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from ._version import __version__
from .errors import ModelFileError

FORMAT = "uqpot-model"
FORMAT_VERSION = 1

#: kind -> (builder from hparams, (state_dict, hparams) -> model)
_REGISTRY: dict[str, Callable] = {}


def register(kind: str):
    """Class decorator / function: ``cls.from_hparams(hparams)`` builds the module of this kind."""

    def deco(cls):
        _REGISTRY[kind] = cls
        return cls

    return deco


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def save(model: torch.nn.Module, path, extra: dict | None = None) -> Path:
    """Writes ``model`` (which must have ``kind`` and ``hparams``) atomically."""
    return save_state(model.kind, model.hparams, model.state_dict(), path, extra, dtype=model.dtype)


def save_state(kind: str, hparams: dict, state_dict: dict, path, extra: dict | None = None,
               dtype: torch.dtype = torch.float32) -> Path:
    """Writes a model file from its parts (kind, hyper-parameters, state dict), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k, v in state_dict.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"refusing to save a model with non-finite values in '{k}'")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "uqpot_version": __version__,
        "kind": kind,
        "hparams": dict(hparams),
        "dtype": str(dtype).replace("torch.", ""),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "extra": dict(extra or {}),
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read(path) -> dict:
    """The raw, validated payload of a model file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "model file not found" if not path.exists() else "not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or containing non-tensor objects
        raise ModelFileError(path, f"not a readable uqpot model file ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(path, "not a uqpot model file (no 'format: uqpot-model' header)")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(path, f"written by uqpot {payload.get('uqpot_version')} in file format "
                                   f"{payload.get('format_version')}; this uqpot ({__version__}) reads up to "
                                   f"format {FORMAT_VERSION}: upgrade uqpot")
    if _version_tuple(str(payload.get("uqpot_version", "0")))[:2] > _version_tuple(__version__)[:2]:
        raise ModelFileError(path, f"written by a newer uqpot ({payload.get('uqpot_version')}) than this one "
                                   f"({__version__}): upgrade uqpot")
    for key in ("kind", "hparams", "state_dict"):
        if key not in payload:
            raise ModelFileError(path, f"model file lacks '{key}'")
    return payload


def load(path, device=None):
    """Rebuilds the model stored in ``path`` (any registered kind), in eval mode."""
    path = Path(path)
    payload = read(path)
    kind = payload["kind"]
    if kind not in _REGISTRY:
        raise ModelFileError(path, f"unknown model kind {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[kind]
    try:
        model = cls.from_hparams(payload["hparams"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(path, f"hyper-parameters do not describe a valid {kind}: {exc}") from None
    state = payload["state_dict"]
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(payload.get("dtype", "float32"))
    if dtype is None:
        raise ModelFileError(path, f"unknown dtype {payload.get('dtype')!r}")
    model.to(dtype)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise ModelFileError(path, "weights do not match the architecture in the file: "
                                   + " ".join(x.strip() for x in first[:3])[:400]) from None
    if device is not None:
        model.to(device)
    model.eval()
    return model
