"""Model files: ``state_dict`` + hyper-parameters + uqpot version, nothing pickled.

Files are loaded with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers,
so a model file cannot execute code (a file that holds other objects is refused as not a uqpot model file;
PyTorch's advice to load it with ``weights_only=False`` is not passed on, since that would run its code).
Hyper-parameters are checked before the model is built and the weights after they are read: a file with a
negative size or NaN weights is refused with the key that is wrong, not evaluated.  Each model class registers a *kind*; ``load`` rebuilds the class from
its hyper-parameters and loads the state dict strictly.  Files are written to a temporary name and renamed,
so a crash never leaves a truncated model behind.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch

from .._version import __version__
from ..core.errors import ModelFileError
from ..core.provenance import torch_save

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
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch_save(payload, path)  # a full disk is an OSError naming the file, not PyTorch's RuntimeError
    except BaseException:
        if created:  # no empty folder is left behind by a write that failed
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        raise
    return path


#: hyper-parameters that count something (sizes, members): integers >= 1
_COUNTS = ("features", "interactions", "rbf", "readout_hidden", "members", "heads", "head_hidden")


def file_kind(path) -> str:
    """What a file looks like from its first bytes: 'torch' (a zip archive: PyTorch's file format), 'pickle',
    'extxyz' (structures), 'text' or 'binary' (anything else), so that a message can say what the file is
    instead of guessing from a loader's failure."""
    from ..data.readers import sniff

    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return "binary"
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    kind = sniff(Path(path))
    if kind == "extxyz":
        return "extxyz"
    if kind != "binary" and head:
        return "text"
    return "binary"


#: what a file of each :func:`file_kind` is, when it is not what was asked for
NOT_A_MODEL = {
    "extxyz": "an extended XYZ structure file, not a model file",
    "text": "a text file, not a model file",
    "binary": "neither a PyTorch file nor a pickle (a damaged file, or not a model file)",
}


def describe_load_error(exc: Exception, path=None) -> str:
    """``torch.load``'s failure in words a user can act on, from what the file is (:func:`file_kind`);
    never PyTorch's advice to load the file with ``weights_only=False``, which would execute whatever the
    file contains."""
    import pickle

    kind = file_kind(path) if path is not None else None
    if kind in NOT_A_MODEL:
        return f"it is {NOT_A_MODEL[kind]}"
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text or "Weights only load failed" in text:
        return ("it holds pickled Python objects, which uqpot never loads since they could run code; uqpot model "
                "files hold only tensors and plain values (a MACE model file: convert it once with `uqpot convert "
                "FILE --trusted` if you trust its source)")
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    damaged = "a damaged PyTorch file: " if kind == "torch" else ""
    return f"{damaged}{type(exc).__name__}{': ' + first if first else ''}"


def describe_payload(payload) -> str:
    """What a PyTorch file that loaded holds, when it is not a uqpot model file."""
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return ("a PyTorch file holding a bare state dict (weights without their architecture): uqpot model files "
                "carry the kind and hyper-parameters beside the weights (written by uqpot train, wrap or convert)")
    return f"a PyTorch file holding a {type(payload).__name__}, not a uqpot model file (no 'format: uqpot-model' header)"


def _check_hparams(path, kind: str, hparams: dict, prefix: str = "hparams") -> None:
    import math

    if not isinstance(hparams, dict):
        raise ModelFileError(path, f"{prefix}: the hyper-parameters of {kind} are not a mapping")
    for key in _COUNTS:
        v = hparams.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ModelFileError(path, f"{prefix}.{key}: {v!r} is not a valid {kind} hyper-parameter (an integer >= 1)")
    cutoff = hparams.get("cutoff")
    if cutoff is not None and (not isinstance(cutoff, (int, float)) or not math.isfinite(cutoff) or cutoff <= 0):
        raise ModelFileError(path, f"{prefix}.cutoff: {cutoff!r} is not a valid cutoff (a finite distance > 0 Å)")
    if isinstance(hparams.get("potential"), dict):  # a UQ method around a potential
        _check_hparams(path, kind, hparams["potential"], f"{prefix}.potential")


def _check_finite(path, state: dict) -> None:
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            n = int((~torch.isfinite(v)).sum())
            raise ModelFileError(path, f"state_dict.{k}: {n} non-finite weight(s) (NaN/inf): this model cannot give "
                                       "finite predictions; retrain it, or use the model file of an earlier epoch")


def _real(v) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _check_extra(path, extra) -> None:
    """The ``extra`` section: a mapping; its stored calibration (σ² = a·U + b with its floor, the conformal
    quantiles) made of numbers that can be used, so that a broken value is refused here, naming the key,
    instead of crashing whatever reads it later."""
    import math

    if not isinstance(extra, dict):
        raise ModelFileError(path, f"extra: expected a mapping of stored results, got a {type(extra).__name__}")
    for key in ("posthoc", "training", "wrapped"):
        if key in extra and not isinstance(extra[key], dict):
            raise ModelFileError(path, f"extra.{key}: expected a mapping, got a {type(extra[key]).__name__}")
    cal = extra.get("calibration")
    if cal is None:
        return
    if not isinstance(cal, dict):
        raise ModelFileError(path, f"extra.calibration: expected a mapping (a, b, floor, ...), got a "
                                   f"{type(cal).__name__}")
    for key in ("a", "b", "floor"):
        v = cal.get(key)
        if not (_real(v) and math.isfinite(v)):
            raise ModelFileError(path, f"extra.calibration.{key}: {v!r} is not a finite number; the stored calibration "
                                       "is broken: re-fit it with `uqpot wrap MODEL --method calibrate --val VAL`")
    if cal["floor"] < 0:
        raise ModelFileError(path, f"extra.calibration.floor: {cal['floor']!r} is negative (a variance floor is >= 0)")
    conformal = cal.get("conformal")
    if conformal is None:
        return
    if not isinstance(conformal, dict):
        raise ModelFileError(path, f"extra.calibration.conformal: expected a mapping, got a {type(conformal).__name__}")
    for key in ("quantiles", "quantiles_structure"):
        qs = conformal.get(key, {})
        if not isinstance(qs, dict):
            raise ModelFileError(path, f"extra.calibration.conformal.{key}: expected a mapping, got {qs!r}")
        for level, q in qs.items():
            if not (_real(q) and q > 0):  # +inf: too few structures for that level
                raise ModelFileError(path, f"extra.calibration.conformal.{key}.{level}: {q!r} is not a quantile (a "
                                           "number > 0)")


def read(path, check_extra: bool = True) -> dict:
    """The raw, validated payload of a model file (``check_extra=False``: its ``extra`` section unchecked,
    for a command that replaces what it stores, such as ``uqpot wrap --method calibrate``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "model file not found" if not path.exists() else "not a file")
    try:
        import warnings

        with warnings.catch_warnings():  # e.g. on the pickle protocol of a foreign file: the error below says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or containing non-tensor objects
        raise ModelFileError(path, f"not a readable uqpot model file ({describe_load_error(exc, path)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(path, f"not a uqpot model file: it is {describe_payload(payload)}")
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
    if check_extra:
        _check_extra(path, payload.get("extra", {}))
    return payload


def load(path, device=None, check_extra: bool = True):
    """Rebuilds the model stored in ``path`` (any registered kind), in eval mode."""
    path = Path(path)
    payload = read(path, check_extra)
    kind = payload["kind"]
    if kind not in _REGISTRY:
        raise ModelFileError(path, f"unknown model kind {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[kind]
    _check_hparams(path, kind, payload["hparams"])
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise ModelFileError(path, "state_dict is not a mapping of names to tensors")
    _check_finite(path, state)
    try:
        model = cls.from_hparams(payload["hparams"])
    except Exception as exc:  # noqa: BLE001 - any failure to build from the file's numbers is the file's fault
        raise ModelFileError(path, f"hyper-parameters do not describe a valid {kind}: {type(exc).__name__}: "
                                   f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from None
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
