"""Train/validation/test splits: random with a seed, or read from index files; always saved with a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")


def _count(size, n: int, name: str) -> int:
    """A split size: an int count, or a float fraction of ``n`` in [0, 1)."""
    if size is None:
        return -1
    if isinstance(size, float) and size < 1.0:
        if size < 0:
            raise ConfigError(None, f"split.{name}: must be >= 0, got {size}")
        return int(round(size * n))
    if float(size) != int(size) or size < 0:
        raise ConfigError(None, f"split.{name}: expected a count >= 0 or a fraction < 1, got {size}")
    return int(size)


def random_split(n: int, train, val, test=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random disjoint indices.  Sizes are counts (int) or fractions of ``n`` (float < 1); ``test=None``
    takes every remaining structure."""
    n_train, n_val, n_test = _count(train, n, "train"), _count(val, n, "val"), _count(test, n, "test")
    if n_test < 0:
        n_test = n - n_train - n_val
    if n_train + n_val + n_test > n or min(n_train, n_val, n_test) < 0:
        raise ConfigError(None, f"split asks for {n_train} train + {n_val} val + {max(n_test, 0)} test "
                                f"structures but the data set has {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train:n_train + n_val]),
        "test": np.sort(perm[n_train + n_val:n_train + n_val + n_test]),
    }


STRUCTURE_SUFFIXES = (".xyz", ".extxyz", ".db", ".traj", ".npz", ".cif", ".pdb", ".xml", ".pth", ".tar", ".h5")


def read_index_file(path, n: int, key: str = "split.train_file") -> np.ndarray:
    """Integer indices into the structure file, one per line (or comma/space separated; .npy accepted);
    validated against ``n``.  A structure file given here (the usual mix-up, since many data sets ship one
    file per split) is named as such, with the key that takes it."""
    from .readers import sniff

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "index file not found" if not path.exists() else "is a directory, not an index file")
    looks = sniff(path)
    if path.suffix != ".npy" and (path.suffix.lower() in STRUCTURE_SUFFIXES or looks in ("extxyz", "binary")):
        if looks != "indices":
            if key.startswith("split."):
                other = key.replace("split.", "data.").replace("_file", "_path")
                instead = (f"give structure files per split as data.train_path / val_path / test_path (here "
                           f"{other}) instead of data.path with index files")
            else:
                instead = "give a structure file as the DATA argument instead"
            raise DataError(path, f"{key} expects an index file (integer indices into the structure file, one per "
                                  f"line), and this looks like a structure file; {instead}")
    try:
        if path.suffix == ".npy":
            idx = np.load(path, allow_pickle=False)
        else:
            idx = np.array([_index(t) for t in path.read_text().replace(",", " ").split()], dtype=np.int64)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read indices ({key}): {exc}") from None
    idx = np.asarray(idx, dtype=np.int64).ravel()
    if len(idx) == 0:
        raise DataError(path, f"index file is empty ({key}): no structure selected")
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise DataError(path, f"indices must lie in [0, {n - 1}], found {idx.min()}..{idx.max()}")
    if len(np.unique(idx)) != len(idx):
        raise DataError(path, "duplicate indices")
    return idx


def _index(token: str) -> int:
    """One index; ``3`` and ``3.0`` (``np.savetxt`` writes floats) are accepted, ``3.5`` and ``x`` are not."""
    try:
        return int(token)
    except ValueError:
        pass
    try:
        value = float(token)
    except ValueError:
        raise ValueError(f"'{token[:40]}' is not an integer index") from None
    if not value.is_integer():
        raise ValueError(f"'{token[:40]}' is not an integer index")
    return int(value)


def check_disjoint(split: dict[str, np.ndarray]) -> None:
    for a_i, a in enumerate(SPLIT_NAMES):
        for b in SPLIT_NAMES[a_i + 1:]:
            common = np.intersect1d(split.get(a, []), split.get(b, []))
            if len(common):
                raise ConfigError(None, f"splits '{a}' and '{b}' share {len(common)} structure(s), "
                                        f"e.g. index {int(common[0])}")


def save_split(split: dict[str, np.ndarray], path) -> None:
    from ..core.provenance import write_text

    write_text(path, json.dumps({k: [int(i) for i in v] for k, v in split.items()}, indent=0))


def load_split(path) -> dict[str, np.ndarray]:
    data = json.loads(Path(path).read_text())
    return {k: np.asarray(v, dtype=np.int64) for k, v in data.items()}
