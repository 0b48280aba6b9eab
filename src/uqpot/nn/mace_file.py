"""Converting a user's MACE model file (as written by MACE's own training script, or a foundation model
downloaded by the user) into a uqpot model file, once.

MACE writes its models as pickled ``torch.nn.Module`` objects: loading one runs whatever code the file
holds.  uqpot loads such a file only when the user says it trusts it (``uqpot convert FILE --trusted``);
without the flag the file is refused before anything in it is unpickled.  The converted file holds the
state dict and plain hyper-parameters (:mod:`uqpot.nn.mace`) and loads with ``weights_only=True`` like
every uqpot model.

Units: MACE works in eV and Å.  uqpot's energy scale of the converted potential is 1 eV in kcal/mol
(:data:`uqpot.core.units.EV_TO_KCAL_PER_MOL`), and MACE's isolated-atom energies E0 (eV) become uqpot's float64
reference energies e_ref(Z) (kcal/mol); MACE's own scale and shift stay inside the network.  The conversion
is checked before the file is written: the converted potential and the original give the same energy and
forces on a probe cluster of the model's elements (relative 1e-5 in the model's dtype).

What MACE writes (mace-torch 0.3.16, checked by ``tests/test_mace_real.py``, which runs ``mace_run_train``):

* The model class.  ``mace_run_train --model MACE`` and ``--model ScaleShiftMACE`` both write a
  ``ScaleShiftMACE`` (``MACE``: a plain first interaction and shift 0 for every head; ``ScaleShiftMACE``: a
  residual first interaction by default and the shift its ``--scaling`` computes); fine-tuning a foundation
  model writes one too.  A plain ``MACE`` module (built by hand, or by older scripts) has no scale-shift: it
  is converted as a ``ScaleShiftMACE`` with scale 1 and shift 0 for every head, whose energy 1·x + 0 is the
  plain one.  Other classes (``MACELES``, ``PolarMACE``: long-range terms with inputs uqpot does not give;
  ``AtomicDipolesMACE``, ``AtomicDielectricMACE``, ``EnergyDipolesMACE``: other outputs and readouts) are
  refused by name (the check is on the exact class: ``MACELES`` and ``PolarMACE`` subclass
  ``ScaleShiftMACE``).
* ``<name>.model`` is the pickled module that uqpot converts; ``<name>_compiled.model`` beside it is a
  TorchScript archive (no Python classes to read the architecture from): it is refused with a pointer to the
  ``.model`` file before anything in it is loaded; MACE's checkpoints (``checkpoints/*.pt``) hold a dict of
  weights without the architecture and are refused too.
* The isolated-atom energies E0 (eV; buffer ``atomic_energies_fn.atomic_energies``): shape
  (heads, elements) as the script and ``mace_select_head`` write them, one row per head even for a single
  head; (elements,) in files built by hand with a 1-D array (MACE's ``AtomicEnergiesBlock`` reads both as
  ``atleast_2d(E0).T``).  uqpot takes the row of the chosen head (the only row of a 1-D or one-row array) into
  its float64 e_ref(Z), and the network's own E0 are zero.  (uqpot used to build its template with a 1-D E0
  for one head and copy the file's (1, elements) array into it: the "[1, 3] doesn't match the broadcast
  shape [1, 1, 3]" error users met with such files.)
* Scale and shift (eV; buffers ``scale_shift.scale`` / ``.shift``): each a scalar (shape ``()``) for every
  head or one value per head (shape ``(heads,)``), in the combinations the script writes (for one head: the
  scale ``(1,)``, the shift ``()`` for ``--model ScaleShiftMACE`` and ``(1,)`` for ``--model MACE``;
  ``mace_select_head`` writes both as scalars).  MACE reads ``atleast_1d(x)[head]``, so ``()`` and ``(1,)``
  are the same; uqpot rebuilds the shapes the file has.
* Several heads (``--heads`` with a training file per head; multi-head fine-tuning, whose heads are
  ``pt_head`` and ``Default``): the whole network is converted, and the head chosen with ``--head`` is the one
  it evaluates (its E0 row, scale, shift and readout outputs).
* dtype: float32 or float64 as trained (``--default_dtype``); the converted potential keeps it, its reference
  energies are float64.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import modelfile
from ..core.errors import ConfigError, ModelFileError
from ..core.units import EV_TO_KCAL_PER_MOL
from .mace import _ENV, _MACE_KEYS, MACEPotential, _key, import_mace

TRUST_FLAG = "--trusted"


def refuse_untrusted(path) -> None:
    """The error for a pickled file the user has not said they trust (nothing in it is unpickled)."""
    raise ModelFileError(path, "the file holds pickled Python objects (as a MACE model file does), and loading a "
                               "pickle runs the code it holds; uqpot loads it only if you trust its source: rerun "
                               f"with {TRUST_FLAG} (it is converted once into a uqpot model file, which holds no code)")


def _check_is_mace_file(path: Path) -> None:
    """Refuses, before anything in it is unpickled, a file that cannot be a MACE model: not a PyTorch file
    or pickle (a structure file, text, other bytes), or one that loads without unpickling any object (a uqpot
    model file, a bare state dict: MACE saves whole pickled modules)."""
    kind = modelfile.file_kind(path)
    if kind in modelfile.NOT_A_MODEL:
        raise ModelFileError(path, f"not a MACE model file: it is {modelfile.NOT_A_MODEL[kind]}")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)  # runs nothing
    except Exception:  # noqa: BLE001 - pickled objects (a MACE model, or another pickle) or a damaged file
        return
    if isinstance(payload, dict) and payload.get("format") == modelfile.FORMAT:
        raise ModelFileError(path, "already a uqpot model file: use it as it is")
    raise ModelFileError(path, f"not a MACE model file: it is {modelfile.describe_payload(payload)}; MACE saves "
                               "whole models (pickled modules): convert the .model file MACE writes at the end of "
                               "its training")


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with a ``code/`` folder), read without loading it."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.split("/", 1)[-1].startswith("code/") or n.endswith("/constants.pkl") for n in names)


def _load_trusted(path: Path):
    try:
        modules = import_mace()
    except ImportError as exc:
        raise ModelFileError(path, str(exc)) from None
    if _is_torchscript(path):
        raise ModelFileError(path, "a TorchScript file (as MACE's <name>_compiled.model): it holds no MACE classes "
                                   "to read the architecture from; convert the <name>.model file MACE writes beside it")
    prior = os.environ.get(_ENV)
    try:
        import warnings

        with warnings.catch_warnings():  # a foreign pickle's warnings: the error below says what is wrong
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False)  # the user said the file is trusted
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise ModelFileError(path, f"not a readable MACE model file ({type(exc).__name__}: {str(exc)[:200]})") from None
    finally:
        if prior is None:
            os.environ.pop(_ENV, None)
    return modules, obj


#: MACE model classes the converter reads (by exact class name: MACELES and PolarMACE subclass ScaleShiftMACE)
CONVERTIBLE = ("ScaleShiftMACE", "MACE")


class _AsScaleShift:
    """A plain ``MACE`` module seen as a ``ScaleShiftMACE`` with scale 1 and shift 0 for every head (the
    energy 1·x + 0 is MACE's own), for MACE's ``extract_config_mace_model``, which reads attributes only."""

    def __init__(self, model):
        self._model = model
        n = len(getattr(model, "heads", ["Default"]))
        self.scale_shift = SimpleNamespace(scale=torch.ones(n, dtype=torch.float64),
                                           shift=torch.zeros(n, dtype=torch.float64))

    def __getattr__(self, name):
        return getattr(self._model, name)


_AsScaleShift.__name__ = "ScaleShiftMACE"


def _plain_config(path, model, modules) -> dict:
    """MACE's constructor arguments of ``model`` as plain values (names for classes, strings for irreps)."""
    from mace.tools.scripts_utils import extract_config_mace_model

    name = type(model).__name__
    if name not in CONVERTIBLE:
        raise ModelFileError(path, f"MACE model class {name} is not supported by uqpot's converter (it converts "
                                   "ScaleShiftMACE, what mace_run_train writes for --model MACE and ScaleShiftMACE, "
                                   "and MACE)")
    try:
        raw = extract_config_mace_model(_AsScaleShift(model) if name == "MACE" else model)
    except (AttributeError, TypeError, ValueError, IndexError) as exc:  # e.g. radial bases it cannot read
        raise ModelFileError(path, f"MACE's extract_config_mace_model cannot read this model's architecture "
                                   f"({type(exc).__name__}: {str(exc)[:160]})") from None
    if "error" in raw:
        raise ModelFileError(path, f"{raw['error']} (uqpot converts ScaleShiftMACE and MACE models)")
    for key in ("embedding_specs", "cueq_config"):
        if raw.get(key) is not None:
            raise ModelFileError(path, f"MACE option {key} is not supported by uqpot's converter")

    def name_of(fn, table):
        for k, v in table.items():
            if v is fn:
                return k
        raise ModelFileError(path, f"MACE component {fn!r} is not one uqpot knows")

    def plain(v):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        if isinstance(v, np.ndarray):
            return v.tolist() if v.ndim else float(v)
        return v

    cfg = {}
    for key in _MACE_KEYS:
        if key not in raw:
            continue
        v = raw[key]
        if key in ("interaction_cls", "interaction_cls_first"):
            v = name_of(v, modules.interaction_classes)
        elif key == "readout_cls":
            v = name_of(v, modules.readout_classes)
        elif key == "gate":
            v = name_of(v, modules.gate_dict)
        elif key in ("hidden_irreps", "MLP_irreps", "edge_irreps"):
            v = None if v is None else str(v)
        elif key == "distance_transform":
            v = "None" if v is None else str(v)
        elif key == "atomic_numbers":
            v = [int(z) for z in plain(v)]
        else:
            v = plain(v)
        cfg[key] = v
    return cfg


def _reference_energies(path, e0: torch.Tensor, n_elements: int, n_heads: int, head: int) -> torch.Tensor:
    """MACE's isolated-atom energies E0 (eV, float64) of head index ``head``: one row per head of a
    (heads, elements) buffer, or the only row of a (elements,) or (1, elements) one (see module)."""
    e0 = e0.detach().to(torch.float64)
    if e0.dim() == 1:
        e0 = e0.unsqueeze(0)
    if e0.dim() != 2 or e0.shape[1] != n_elements or e0.shape[0] not in (1, n_heads):
        raise ModelFileError(path, f"MACE's atomic energies have shape {tuple(e0.shape)}; expected ({n_heads}, "
                                   f"{n_elements}) for {n_heads} head(s) and {n_elements} elements")
    if e0.shape[0] == 1 and n_heads > 1:
        raise ModelFileError(path, f"MACE's atomic energies have one row for {n_heads} heads: MACE itself "
                                   "evaluates only the first head of such a model")
    return e0[head]


def _probe(elements: list[int], dtype) -> "object":
    """A small cluster with every element of the model, atoms 1.6 Å apart with a fixed jitter."""
    from ..data.structures import Structure

    zs = (list(elements) * 2)[: max(4, len(elements))]
    rng = np.random.default_rng(0)
    pos = np.array([[1.6 * k, 0.3 * (k % 2), 0.2 * (k % 3)] for k in range(len(zs))]) + rng.normal(0, 0.05, (len(zs), 3))
    return Structure(numbers=np.asarray(zs, dtype=np.int64), positions=pos, cell=np.zeros((3, 3)), pbc=np.zeros(3, bool))


def convert(path, trusted: bool, out=None, head: str | None = None) -> tuple[Path, dict]:
    """Converts the MACE file ``path`` into a uqpot model file (default: ``path`` with suffix ``.uqpot.pt``);
    ``trusted`` must be true (see module).  Returns (the written file, a summary)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "model file not found" if not path.exists() else "not a file")
    out = Path(out) if out is not None else path.with_suffix(".uqpot.pt")
    if out.exists() and (out.is_dir() or out.resolve() == path.resolve() or os.path.samefile(out, path)):
        what = "a directory" if out.is_dir() else "the file you are converting"
        raise ConfigError(None, f"--out: {out} is {what}; give the name of a new uqpot model file")
    _check_is_mace_file(path)
    if not trusted:
        refuse_untrusted(path)
    modules, obj = _load_trusted(path)
    if not isinstance(obj, torch.nn.Module):
        raise ModelFileError(path, f"holds a {type(obj).__name__}, not a MACE model (MACE's checkpoints hold weights "
                                   "without the architecture: convert the .model file that MACE writes at the end)")
    obj = obj.eval()
    cfg = _plain_config(path, obj, modules)
    heads = [str(x) for x in cfg.get("heads", ["Default"])]
    if head is None and len(heads) > 1:
        raise ModelFileError(path, f"the model has heads {heads}: choose one with --head")
    if head is not None and head not in heads:
        raise ModelFileError(path, f"--head {head!r}: the model's heads are {heads}")
    h = heads.index(head) if head is not None else 0
    dtype = next(obj.parameters()).dtype
    theirs = dict(obj.state_dict())
    zs = [int(z) for z in cfg["atomic_numbers"]]
    e0 = _reference_energies(path, theirs["atomic_energies_fn.atomic_energies"], len(zs), len(heads), h)
    pot = MACEPotential(mace=cfg, cutoff=float(cfg["r_max"]), members=1, seeds=[0], head=h).to(dtype)
    ours = dict(pot._template[0].state_dict())
    # a plain MACE has no scale-shift: the rebuilt one's scale 1 and shift 0 stay (see module)
    own = {"scale_shift.scale", "scale_shift.shift"} if type(obj).__name__ == "MACE" else set()
    if set(theirs) != set(ours) - own:
        diff = sorted(set(theirs) ^ (set(ours) - own))[:4]
        raise ModelFileError(path, f"the model's weights do not match the MACE architecture uqpot rebuilt from it "
                                   f"(first differing names: {', '.join(diff)})")
    with torch.no_grad():
        for n, t in theirs.items():
            t = t.detach()
            if n == "atomic_energies_fn.atomic_energies":
                t = torch.zeros(ours[n].shape, dtype=ours[n].dtype)  # uqpot holds E0 as its references
            elif tuple(t.shape) != tuple(ours[n].shape):
                if t.numel() == ours[n].numel() == 1 and n.startswith("scale_shift."):
                    t = t.reshape(ours[n].shape)  # () and (1,): MACE reads atleast_1d(x)[head]
                else:
                    raise ModelFileError(path, f"the model's weight {n} has shape {tuple(t.shape)}, the MACE "
                                               f"architecture uqpot rebuilt from it {tuple(ours[n].shape)}")
            getattr(pot.stack, _key(n)).copy_(t.to(ours[n].dtype).unsqueeze(0))
        pot.atomref[zs] = e0 * EV_TO_KCAL_PER_MOL
        pot.energy_scale.fill_(EV_TO_KCAL_PER_MOL)
    pot.eval()
    check = _check_same(obj, pot, zs, dtype, h)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    from importlib.metadata import version

    extra = {"converted_from": {"file": path.name, "sha256": digest, "mace_torch": version("mace-torch"),
                                "head": heads[h], "units": "eV -> kcal/mol", "check": check}}
    modelfile.save(pot, out, extra=extra)
    return out, {"elements": zs, "cutoff": float(cfg["r_max"]), "dtype": str(dtype).replace("torch.", ""),
                 "head": heads[h], **check}


def _check_same(original, pot, zs, dtype, head: int) -> dict:
    """Energy and forces of the original (eV, eV/Å, times the conversion) and of the converted potential on
    a probe cluster; refuses the conversion when they differ."""
    from ..data.batch import collate

    batch = collate([_probe(zs, dtype)], cutoff=pot.cutoff, dtype=dtype)
    ours = pot(batch)
    data = pot._graph_inputs(batch)
    data["positions"] = batch.positions.detach().clone()
    theirs = original(data, compute_force=True, training=False)
    e_ref = float(theirs["energy"][0].detach()) * EV_TO_KCAL_PER_MOL
    f_ref = theirs["forces"].detach().to(torch.float64) * EV_TO_KCAL_PER_MOL
    de = abs(float(ours["energy"][0].detach()) - e_ref)
    df = float((ours["forces"].detach().to(torch.float64) - f_ref).abs().max())
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    scale_e = max(abs(e_ref), 1.0)
    scale_f = max(float(f_ref.abs().max()), 1.0)
    if de > tol * scale_e * 10 or df > tol * scale_f * 10:
        raise ModelFileError("conversion", f"the converted potential differs from the MACE model (energy by {de:.3g} "
                                           f"kcal/mol, forces by {df:.3g} kcal/mol/Å); not written")
    return {"probe_energy_diff": de, "probe_forces_diff": df}
