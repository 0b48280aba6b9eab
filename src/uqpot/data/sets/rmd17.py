"""Revised MD17 (rMD17): download, verify, extract, and the official splits as uqpot structures.

The paper (section 2.2; SI section I) trains on rMD17 (Christensen & von Lilienfeld 2020, figshare DOI
10.6084/m9.figshare.12672038, CC BY 4.0): ten small molecules, PBE/def2-SVP energies and forces, five
official splits of 1000 training and 1000 test frames each.  Each training split is divided 800/200 into
training and validation frames; the test split (1000 frames) is used as is.

The archive ``rmd17.tar.bz2`` holds (under a top folder ``rmd17/``)::

    npz_data/rmd17_<molecule>.npz     nuclear_charges (n,), coords (N, n, 3) Å, energies (N,) kcal/mol,
                                      forces (N, n, 3) kcal/mol/Å   (+ old_indices, old_energies, ...)
    splits/index_train_0<k>.csv       one frame index per line, k = 1..5
    splits/index_test_0<k>.csv

Fetching the archive (download, verification, extraction) is :mod:`uqpot.data.sets.rmd17_fetch`'s job;
this module reads what it extracted.

:func:`load_rmd17` returns (train, val, test) :class:`~uqpot.data.structures.StructureDataset` objects of
one molecule and split.  Units are rMD17's own: kcal/mol, kcal/mol/Å, Å.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ...core.errors import DataError

#: the figshare download link of ``rmd17.tar.bz2`` (article 12672038, file 23950376)
RMD17_URL = "https://figshare.com/ndownloader/files/23950376"
RMD17_DOI = "10.6084/m9.figshare.12672038"
RMD17_ARCHIVE = "rmd17.tar.bz2"
#: leading hex digits of the archive's SHA-256, as recorded by an independent data-set registry (the
#: load-atoms project); a prefix is compared as a prefix.  ``sha256=None`` skips the check.
RMD17_SHA256 = "cddeea2ec2c4"
RMD17_MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene",
                   "paracetamol", "salicylic", "toluene", "uracil")
#: other names people use for the same molecules
ALIASES = {"salicylic_acid": "salicylic", "malondialdehyde": "malonaldehyde"}
N_SPLITS = 5
NPZ_KEYS = ("nuclear_charges", "coords", "energies", "forces")



def split_file_names(n_splits: int = N_SPLITS) -> list[str]:
    """``splits/index_train_01.csv``, ``splits/index_test_01.csv``, ... (paths inside the data folder)."""
    return [f"splits/index_{kind}_{k:02d}.csv" for k in range(1, n_splits + 1) for kind in ("train", "test")]


def canonical_molecule(name: str) -> str:
    key = str(name).strip().lower()
    return ALIASES.get(key, key)


# -- verification and extraction ----------------------------------------------------------------------
def read_npz(path: Path, where: str | None = None) -> dict[str, np.ndarray]:
    """The four rMD17 arrays of one molecule, validated (shapes, finite values); never unpickles."""
    label = where or str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(label, f"missing key(s) {missing} (has {sorted(z.files)})")
            data = {k: np.asarray(z[k]) for k in NPZ_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as e:  # not an npz, truncated, object arrays
        raise DataError(label, f"cannot read the npz file ({type(e).__name__}: {e})") from None
    z_, x, e_, f_ = (data[k] for k in NPZ_KEYS)
    if z_.ndim != 1 or not np.issubdtype(z_.dtype, np.integer) or len(z_) == 0:
        raise DataError(label, f"nuclear_charges: expected (n,) integers, got {z_.shape} {z_.dtype}",
                        field="nuclear_charges")
    n = len(z_)
    if x.ndim != 3 or x.shape[1:] != (n, 3):
        raise DataError(label, f"coords: expected (N, {n}, 3), got {x.shape}", field="coords")
    if e_.reshape(-1).shape != (x.shape[0],):
        raise DataError(label, f"energies: expected ({x.shape[0]},), got {e_.shape}", field="energies")
    if f_.shape != x.shape:
        raise DataError(label, f"forces: expected {x.shape}, got {f_.shape}", field="forces")
    for key in ("coords", "energies", "forces"):
        if not np.all(np.isfinite(data[key])):
            raise DataError(label, "non-finite values", field=key)
    data["energies"] = e_.reshape(-1).astype(np.float64)
    data["coords"] = x.astype(np.float64)
    data["forces"] = f_.astype(np.float64)
    data["nuclear_charges"] = z_.astype(np.int64)
    return data



def _read_index_csv(path: Path, n: int, where: str | None = None) -> np.ndarray:
    """Frame indices of an rMD17 split file (one per line; a non-numeric header line is skipped)."""
    label = where or str(path)
    if not path.is_file():
        raise DataError(label, "split file not found")
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(label, f"cannot read the split file ({e})") from None
    if lines and not re.fullmatch(r"[-+0-9., \t]+", lines[0]):
        lines = lines[1:]
    try:
        idx = np.array([int(float(t)) for ln in lines for t in re.split(r"[,\s]+", ln) if t], dtype=np.int64)
    except ValueError as e:
        raise DataError(label, f"not a list of integer indices ({e})") from None
    if len(idx) == 0:
        raise DataError(label, "split file has no indices")
    if idx.min() < 0 or idx.max() >= n:
        raise DataError(label, f"indices must lie in [0, {n - 1}], found {idx.min()}..{idx.max()}")
    if len(np.unique(idx)) != len(idx):
        raise DataError(label, "duplicate indices")
    return idx

# -- loading ------------------------------------------------------------------------------------------
def _data_root(root) -> Path:
    root = Path(root)
    if not (root / "npz_data").is_dir() and (root / "rmd17" / "npz_data").is_dir():
        root = root / "rmd17"
    return root


def _npz_path(root: Path, molecule: str) -> Path:
    mol = canonical_molecule(molecule)
    path = root / "npz_data" / f"rmd17_{mol}.npz"
    if not path.is_file():
        have = sorted(p.name[6:-4] for p in (root / "npz_data").glob("rmd17_*.npz")) if (root / "npz_data").is_dir() else []
        raise DataError(path, f"no such file (molecule {molecule!r}); molecules in {root}: {have or 'none'}"
                              " — fetch them with 'uqpot data fetch rmd17'")
    return path


def rmd17_split_indices(root, molecule: str, split: int = 1, val_fraction: float = 0.2, seed: int = 0,
                        n_frames: int | None = None) -> dict[str, np.ndarray]:
    """Frame indices {train, val, test} of an official split; ``val`` is a seeded random ``val_fraction``
    of the official training indices (the paper's 800/200), ``test`` the official test indices."""
    root = _data_root(root)
    if not 1 <= int(split) <= 9:
        raise DataError(root, f"split must be 1..{N_SPLITS}, got {split}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DataError(root, f"val_fraction must be in [0, 1), got {val_fraction}")
    if n_frames is None:
        with np.load(_npz_path(root, molecule), allow_pickle=False) as z:
            n_frames = int(z["energies"].reshape(-1).shape[0])
    train = _read_index_csv(root / "splits" / f"index_train_{int(split):02d}.csv", n_frames)
    test = _read_index_csv(root / "splits" / f"index_test_{int(split):02d}.csv", n_frames)
    common = np.intersect1d(train, test)
    if len(common):
        raise DataError(root / "splits", f"split {split}: train and test share {len(common)} frame(s), "
                                         f"e.g. {int(common[0])}")
    perm = np.random.default_rng(seed).permutation(len(train))
    n_val = int(round(float(val_fraction) * len(train)))
    return {"train": train[np.sort(perm[n_val:])], "val": train[np.sort(perm[:n_val])], "test": test}


def load_rmd17(root, molecule: str, split: int = 1, val_fraction: float = 0.2, seed: int = 0):
    """(train, val, test) StructureDatasets of ``molecule`` for official split ``split`` (1..5).

    ``root`` is the folder with ``npz_data/`` and ``splits/`` (or its parent).  Energies kcal/mol, forces
    kcal/mol/Å, positions Å; each structure's ``info["rmd17_index"]`` is its frame in the npz file.
    """
    from ..structures import Structure, StructureDataset  # imports torch (through the neighbour lists)

    root = _data_root(root)
    mol = canonical_molecule(molecule)
    path = _npz_path(root, mol)
    data = read_npz(path)
    idx = rmd17_split_indices(root, mol, split, val_fraction, seed, n_frames=len(data["energies"]))
    z = data["nuclear_charges"]
    zero_cell, no_pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)

    def dataset(indices, name):
        return StructureDataset([
            Structure(numbers=z.copy(), positions=data["coords"][i].copy(), cell=zero_cell.copy(),
                      pbc=no_pbc.copy(), energy=float(data["energies"][i]), forces=data["forces"][i].copy(),
                      source=str(path), frame=int(i),
                      info={"rmd17_index": int(i), "molecule": mol, "split": int(split), "subset": name})
            for i in indices])

    return dataset(idx["train"], "train"), dataset(idx["val"], "val"), dataset(idx["test"], "test")


def convert_rmd17(root, molecule: str, split: int = 1, out_dir=None, val_fraction: float = 0.2,
                  seed: int = 0) -> list[Path]:
    """Writes one split as uqpot files: ``data.extxyz`` (train, then val, then test frames; kcal/mol, Å),
    ``train.idx``/``val.idx``/``test.idx`` (line indices into it, for a config's ``split.train_file``...)
    and ``split.json`` (for ``uqpot evaluate --indices split.json:test``).  Returns the paths written."""
    from ..io import write_extxyz

    root = _data_root(root)
    mol = canonical_molecule(molecule)
    out = Path(out_dir) if out_dir is not None else root / "uqpot" / mol / f"split{int(split)}"
    out.mkdir(parents=True, exist_ok=True)
    train, val, test = load_rmd17(root, mol, split, val_fraction, seed)
    n_tr, n_va = len(train), len(val)
    local = {"train": np.arange(n_tr), "val": np.arange(n_tr, n_tr + n_va),
             "test": np.arange(n_tr + n_va, n_tr + n_va + len(test))}
    written = [out / "data.extxyz"]
    write_extxyz(train + val + test, written[0])
    for name, ids in local.items():
        p = out / f"{name}.idx"
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text("".join(f"{int(i)}\n" for i in ids))
        os.replace(tmp, p)
        written.append(p)
    from ..splits import save_split

    save_split(local, out / "split.json")
    written.append(out / "split.json")
    return written


__all__ = ["RMD17_URL", "RMD17_DOI", "RMD17_SHA256", "RMD17_MOLECULES", "load_rmd17", "rmd17_split_indices",
           "convert_rmd17", "read_npz", "split_file_names", "canonical_molecule"]


def _npz_frames(path: Path, options):
    """Frames of an rMD17 ``.npz`` file (keys nuclear_charges, coords, energies, forces; kcal/mol, Å) as
    ASE atoms with their labels, so they go through the same conversion and validation as any file."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    data = read_npz(path)
    for frame in range(len(data["energies"])):
        atoms = Atoms(numbers=data["nuclear_charges"], positions=data["coords"][frame])
        atoms.calc = SinglePointCalculator(atoms, energy=float(data["energies"][frame]),
                                           forces=data["forces"][frame])
        yield frame, atoms


def _register() -> None:
    from ..io import register_reader

    register_reader("rmd17-npz", lambda p: Path(p).suffix == ".npz", _npz_frames)


_register()
