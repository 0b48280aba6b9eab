"""Converting a SevenNet checkpoint (one that ships inside sevenn, by name, or a ``.pth`` file written by
SevenNet's own training) into a uqpot model file, once: ``uqpot convert 7net-0 --out sevennet0.pt`` or
``uqpot convert checkpoint_best.pth --trusted --out mine.pt``.

SevenNet's checkpoints are pickles (a dict of its settings, with NumPy arrays among them, and the weights):
loading one runs whatever code the file holds.  As for MACE files (:mod:`uqpot.nn.mace_file`), a file is read
only when the user says they trust it (``--trusted``); without the flag it is refused before anything in it
is unpickled.  A checkpoint named as one that ships inside the installed sevenn is read without the flag:
it is part of the package whose code is already trusted by installing it.  Whether a file is a SevenNet
checkpoint is told from the names its pickle holds (:func:`is_sevennet_checkpoint`), read without running it.

The converted file holds the state dict and plain settings (:mod:`uqpot.nn.sevennet`; SevenNet's per-element
shift becomes uqpot's reference energies, eV become kcal/mol) and loads with ``weights_only=True`` like every
uqpot model.  The conversion is checked before the file is written: the converted potential and SevenNet's own
ASE calculator on the original network give the same energy and forces on a probe cluster of the model's
elements (relative 1e-5, float32).
"""

from __future__ import annotations

import hashlib
import os
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import torch

from . import modelfile
from ..core.errors import ConfigError, ModelFileError
from ..core.units import EV_TO_KCAL_PER_MOL
from .sevennet import SevenNetPotential, _key, checkpoint_path, import_sevenn, read_checkpoint

TRUST_FLAG = "--trusted"


def _pickle_strings(path: Path) -> set[str]:
    """The strings and global names in a PyTorch file's pickle, read opcode by opcode (nothing is run)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return set()
            data = archive.read(name)
        return {str(arg) for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return set()


def is_sevennet_checkpoint(path) -> bool:
    """Whether ``path`` is a PyTorch file whose pickle holds SevenNet's checkpoint keys (and no MACE class)."""
    path = Path(path)
    if not path.is_file() or modelfile.file_kind(path) != "torch":
        return False
    names = _pickle_strings(path)
    mace = any(n.startswith("mace.") for n in names)
    return not mace and {"model_state_dict", "config", "_type_map"} <= names


def packaged(name: str) -> str | None:
    """The file of a checkpoint that ships inside the installed sevenn with this name, else None."""
    try:
        import_sevenn()
        return checkpoint_path(str(name))
    except (ImportError, ValueError):
        return None


def is_sevennet_source(model) -> bool:
    """Whether ``uqpot convert MODEL`` is a SevenNet conversion: a SevenNet checkpoint file, or the name of one
    that ships inside sevenn (and no file of that name)."""
    path = Path(model)
    if path.exists():
        return is_sevennet_checkpoint(path)
    return packaged(str(model)) is not None


def refuse_untrusted(path) -> None:
    raise ModelFileError(path, "a SevenNet checkpoint holds pickled Python objects, and loading a pickle runs the "
                               "code it holds; uqpot loads it only if you trust its source: rerun with "
                               f"{TRUST_FLAG} (it is converted once into a uqpot model file, which holds no code)")


def _probe(elements: list[int]):
    """A small cluster of (up to four of) the model's elements, atoms 1.6 Å apart with a fixed jitter."""
    from ..data.structures import Structure

    common = [z for z in (1, 6, 7, 8, 14) if z in elements]
    zs = (common or list(elements))[:4]
    zs = (zs * 2)[: max(4, len(zs))]
    rng = np.random.default_rng(0)
    pos = np.array([[1.6 * k, 0.3 * (k % 2), 0.2 * (k % 3)] for k in range(len(zs))]) + rng.normal(0, 0.05, (len(zs), 3))
    return Structure(numbers=np.asarray(zs, dtype=np.int64), positions=pos, cell=np.zeros((3, 3)), pbc=np.zeros(3, bool))


def _check_same(net, pot) -> dict:
    """Energy and forces of SevenNet's calculator on the original network (eV, times the conversion) and of
    the converted potential on a probe cluster; refuses the conversion when they differ."""
    from ase import Atoms
    from sevenn.calculator import SevenNetCalculator

    from ..data.batch import collate

    probe = _probe(pot.elements_of_network())
    ours = pot(collate([probe], cutoff=pot.cutoff, dtype=pot.dtype), create_graph=False)
    atoms = Atoms(numbers=probe.numbers, positions=probe.positions)
    atoms.calc = SevenNetCalculator(net, file_type="model_instance", device="cpu")
    e_ref = atoms.get_potential_energy() * EV_TO_KCAL_PER_MOL
    f_ref = atoms.get_forces() * EV_TO_KCAL_PER_MOL
    de = abs(float(ours["energy"].detach()) - e_ref)
    df = float(np.abs(ours["forces"].detach().double().cpu().numpy() - f_ref).max())
    if de > 1e-5 * max(abs(e_ref), 1.0) or df > 1e-5 * max(float(np.abs(f_ref).max()), 1.0) * 10:
        raise ModelFileError("conversion", f"the converted potential differs from the SevenNet model (energy by "
                                           f"{de:.3g} kcal/mol, forces by {df:.3g} kcal/mol/Å); not written")
    return {"probe_energy_diff": de, "probe_forces_diff": df}


def convert(model, trusted: bool, out=None) -> tuple[Path, dict]:
    """Converts the SevenNet checkpoint ``model`` (a file, or the name of one that ships inside sevenn) into a
    uqpot model file (default: the file with suffix ``.uqpot.pt``, or ``<name>.uqpot.pt`` for a packaged
    one); a file needs ``trusted`` (see module).  Returns (the written file, a summary)."""
    name = str(model)
    path = Path(model)
    shipped = not path.exists() and packaged(name) is not None
    if shipped:
        path = Path(packaged(name))
        out = Path(out) if out is not None else Path(f"{name}.uqpot.pt")
    else:
        if not path.is_file():
            raise ModelFileError(path, "model file not found" if not path.exists() else "not a file")
        out = Path(out) if out is not None else path.with_suffix(".uqpot.pt")
        if out.exists() and (out.is_dir() or os.path.samefile(out, path)):
            what = "a directory" if out.is_dir() else "the file you are converting"
            raise ConfigError(None, f"--out: {out} is {what}; give the name of a new uqpot model file")
        if not trusted:
            refuse_untrusted(path)
    if out.is_dir():
        raise ConfigError(None, f"--out: {out} is a directory; give the name of a new uqpot model file")
    try:
        cfg, net = read_checkpoint(path)
    except ImportError as exc:
        raise ModelFileError(path, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file, or settings uqpot does not support
        raise ModelFileError(path, f"not a SevenNet checkpoint uqpot can read ({type(exc).__name__}: "
                                   f"{str(exc)[:200]})") from None
    pot = SevenNetPotential(cutoff=float(cfg["cutoff"]), sevennet=cfg, checkpoint=name if shipped else None,
                            members=1, seeds=[0])
    theirs = {f"net.{k}": v for k, v in net.state_dict().items()}
    ours = dict(pot._template[0].state_dict())
    if set(theirs) != set(ours):
        diff = sorted(set(theirs) ^ set(ours))[:4]
        raise ModelFileError(path, f"the checkpoint's weights do not match the SevenNet network uqpot rebuilt from "
                                   f"its settings (first differing names: {', '.join(diff)})")
    with torch.no_grad():
        for n, t in theirs.items():
            getattr(pot.stack, _key(n)).copy_(t.detach().to(ours[n].dtype).reshape(ours[n].shape).unsqueeze(0))
    pot.take_shift()
    pot.eval()
    check = _check_same(net, pot)
    from importlib.metadata import version

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    extra = {"converted_from": {"file": name if shipped else path.name, "sha256": digest,
                                "sevenn": version("sevenn"), "units": "eV -> kcal/mol", "check": check}}
    modelfile.save(pot, out, extra=extra)
    return out, {"elements": pot.elements_of_network(), "cutoff": pot.cutoff, **check}
