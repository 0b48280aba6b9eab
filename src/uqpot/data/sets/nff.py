"""The legacy NFF data format (``.pth.tar``) of the published archives, read without executing code.

The paper's data (the ammonia set of Schwalbe-Koda, Tan & Gómez-Bombarelli 2021, reused in Tan et al.
2023, section 2.2) is distributed as files written by ``torch.save`` from the Neural Force Field (NFF)
package: either a plain dict of properties or a pickled ``nff.data.dataset.Dataset`` whose ``props``
holds them.  The properties used here:

* ``nxyz``: per geometry an (n, 4) array of atomic number and x, y, z in Å (a list of arrays, an (N, n, 4)
  array, or an (sum n, 4) array split by ``num_atoms``);
* ``energy`` (kcal/mol; NFF's ``units`` attribute must be ``kcal/mol``) and ``energy_grad`` (dE/dx in
  kcal/mol/Å; uqpot's forces are ``-energy_grad``);
* optionally ``lattice``/``cell`` (3x3, Å: a periodic structure), ``geom_id`` and other per-geometry
  scalars, which go to each structure's ``info``.

Loading the files safely (an allow-list unpickler that never executes code) is
:mod:`uqpot.data.sets.nff_unpickle`'s job; :func:`load_nff` is importable from here too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.errors import DataError
from .nff_unpickle import ALLOWED, NFFDatasetRecord, SafeUnpickler, load_nff  # noqa: F401


# -- NFF properties -> structures -----------------------------------------------------------------------
def _as_list(value, n: int | None, key: str, path) -> list:
    if isinstance(value, np.ndarray) and value.dtype != object:
        if n is not None and value.ndim >= 1 and len(value) != n:
            raise DataError(path, f"has {len(value)} entries, expected {n}", field=key)
        return list(value)
    if isinstance(value, (list, tuple)):
        if n is not None and len(value) != n:
            raise DataError(path, f"has {len(value)} entries, expected {n}", field=key)
        return list(value)
    raise DataError(path, f"unexpected type {type(value).__name__}", field=key)


def _split_nxyz(nxyz, props, path) -> list[np.ndarray]:
    if isinstance(nxyz, (list, tuple)):
        return [np.asarray(x, dtype=np.float64) for x in nxyz]
    arr = np.asarray(nxyz, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[2] == 4:
        return list(arr)
    if arr.ndim == 2 and arr.shape[1] == 4:
        counts = props.get("num_atoms")
        if counts is None:
            return [arr]
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        if counts.sum() != len(arr):
            raise DataError(path, f"num_atoms sums to {counts.sum()}, nxyz has {len(arr)} rows", field="nxyz")
        return np.split(arr, np.cumsum(counts)[:-1])
    raise DataError(path, f"nxyz has shape {arr.shape}; expected (n, 4) per geometry", field="nxyz")


def read_nff(path, energy_key: str = "energy", grad_key: str | None = None):
    """Structures of an NFF ``.pth.tar`` file (energies kcal/mol, forces = −energy_grad in kcal/mol/Å, Å).

    Returns a :class:`~uqpot.data.structures.StructureDataset`; each structure's ``source`` is the file and
    ``frame`` its index; per-geometry scalars (``geom_id``, ...) are copied to ``info``.
    """
    from ..structures import Structure, StructureDataset

    path = Path(path)
    obj = load_nff(path)
    units = "kcal/mol"
    if isinstance(obj, NFFDatasetRecord):
        props = getattr(obj, "props", None)
        units = getattr(obj, "units", units)
    else:
        props = obj
    if not isinstance(props, dict):
        raise DataError(path, f"expected a dict of properties (or an NFF Dataset), found {type(props).__name__}")
    if str(units) != "kcal/mol":
        raise DataError(path, f"NFF units {units!r}; only 'kcal/mol' files are read (energies kcal/mol, "
                              "gradients kcal/mol/Å)")
    if "nxyz" not in props:
        raise DataError(path, f"no 'nxyz' property (has {sorted(map(str, props))})", field="nxyz")
    nxyz = _split_nxyz(props["nxyz"], props, path)
    n = len(nxyz)
    grad_key = grad_key or f"{energy_key}_grad"
    energies = _as_list(props[energy_key], n, energy_key, path) if energy_key in props else None
    grads = _as_list(props[grad_key], n, grad_key, path) if grad_key in props else None
    cells = None
    for key in ("lattice", "cell"):
        if key in props:
            cells = _as_list(props[key], n, key, path)
            break
    skip = {"nxyz", energy_key, grad_key, "lattice", "cell", "num_atoms", "nbr_list", "offsets"}
    extras = {}
    for key, value in props.items():
        if key in skip:
            continue
        try:
            values = _as_list(value, n, key, path)
        except DataError:
            continue
        if all(np.ndim(v) == 0 for v in values):
            extras[str(key)] = values
    out = []
    for i, x in enumerate(nxyz):
        if x.ndim != 2 or x.shape[1] != 4:
            raise DataError(path, f"nxyz has shape {x.shape}; expected (n, 4)", frame=i, field="nxyz")
        z = np.rint(x[:, 0]).astype(np.int64)
        if not np.allclose(x[:, 0], z):
            raise DataError(path, "atomic numbers in nxyz[:, 0] are not integers", frame=i, field="nxyz")
        energy = None
        if energies is not None:
            e = np.asarray(energies[i], dtype=np.float64).reshape(-1)
            if e.shape != (1,):
                raise DataError(path, f"energy has shape {e.shape}, expected a single number", frame=i,
                                field=energy_key)
            energy = float(e[0])
        forces = None
        if grads is not None:
            g = np.asarray(grads[i], dtype=np.float64)
            if g.shape != (len(z), 3):
                raise DataError(path, f"shape {g.shape}, expected ({len(z)}, 3)", frame=i, field=grad_key)
            forces = -g
        if cells is not None:
            cell = np.asarray(cells[i], dtype=np.float64).reshape(3, 3)
            pbc = np.ones(3, dtype=bool)
        else:
            cell, pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
        info = {}
        for key, values in extras.items():
            v = values[i]
            v = v.item() if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0) else v
            if isinstance(v, (int, float, str, bool)):
                info[key] = v
        out.append(Structure(numbers=z, positions=x[:, 1:4].copy(), cell=cell, pbc=pbc, energy=energy,
                             forces=forces, source=str(path), frame=i, info=info))
    return StructureDataset(out)


__all__ = ["read_nff", "load_nff", "SafeUnpickler", "NFFDatasetRecord", "ALLOWED"]


#: file names read as NFF/torch files (the published NFF archives), by the allow-list unpickler
NFF_SUFFIXES = (".pth.tar", ".pth", ".pt")


def _nff_frames(path, options):
    """Frames of an NFF ``.pth.tar`` file (nxyz, energy, energy_grad; kcal/mol, Å) as ASE atoms with their
    labels, read without executing code."""
    for s in read_nff(path):
        yield s.frame, s.to_atoms()


def _register() -> None:
    from ..io import register_reader

    register_reader("nff", lambda p: Path(p).name.endswith(NFF_SUFFIXES), _nff_frames)


_register()
