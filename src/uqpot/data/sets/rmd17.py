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

:func:`fetch_rmd17` (``uqpot data fetch rmd17``) streams the archive to ``DEST/rmd17.tar.bz2.part`` with
a progress bar, checks its size (``Content-Length``) and SHA-256, reads the whole bz2 stream (every block's
CRC) and extracts only the expected members, as regular files, into a temporary folder that is renamed to
``DEST/rmd17`` when everything checked out.  A corrupt archive or one that lacks a split file is refused
with a :class:`~uqpot.core.errors.DataError` naming the file, and leaves no extracted data behind (the
``.part`` file of a failed verification is deleted; the ``.part`` file of an interrupted transfer is kept
and the next run resumes it with an HTTP range request).  Without network, ``--archive FILE`` takes an
archive downloaded by hand.

:func:`load_rmd17` returns (train, val, test) :class:`~uqpot.data.structures.StructureDataset` objects of
one molecule and split.  Units are rMD17's own: kcal/mol, kcal/mol/Å, Å.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.errors import DataError
from ._common import FetchError

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

_MEMBER = re.compile(r"^(?:\./)?(?:[^/]+/)?(?P<rel>npz_data/rmd17_(?P<mol>[a-z_]+)\.npz"
                     r"|splits/index_(?:train|test)_0[1-9]\.csv)$")
_CHUNK = 1 << 20


def split_file_names(n_splits: int = N_SPLITS) -> list[str]:
    """``splits/index_train_01.csv``, ``splits/index_test_01.csv``, ... (paths inside the data folder)."""
    return [f"splits/index_{kind}_{k:02d}.csv" for k in range(1, n_splits + 1) for kind in ("train", "test")]


def canonical_molecule(name: str) -> str:
    key = str(name).strip().lower()
    return ALIASES.get(key, key)


def manual_instructions(url: str = RMD17_URL) -> str:
    return (f"download {RMD17_ARCHIVE} by hand from {url} (figshare DOI {RMD17_DOI}) and run "
            f"'uqpot data fetch rmd17 --archive PATH/{RMD17_ARCHIVE}'")


@dataclass
class FetchResult:
    root: Path  # DEST/rmd17: npz_data/, splits/, manifest.json
    archive: Path | None  # the verified archive (kept), or None when the data were already there
    downloaded: bool
    extracted: bool
    molecules: list[str]
    sha256: str | None
    written: list[Path] = field(default_factory=list)


# -- download -----------------------------------------------------------------------------------------
def _progress(enabled: bool, console=None):
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console or Console(stderr=True), disable=not enabled,
                    transient=False)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, part: Path, *, timeout: float = 60.0, progress: bool = True, console=None) -> tuple[str, int]:
    """Streams ``url`` into ``part`` (resuming a partial file by an HTTP range request); (SHA-256, bytes).

    Raises :class:`FetchError` (one clear line) when the server cannot be reached, answers with an HTTP
    error, or the transfer breaks off (the partial file is then kept for the next run to resume).
    """
    import http.client
    import socket
    import urllib.error
    import urllib.request

    from ..._version import __version__

    existing = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"uqpot/{__version__}"}
    if existing:
        headers["Range"] = f"bytes={existing}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as e:
        if e.code == 416 and existing:  # the range is past the end: start again from scratch
            part.unlink()
            return download(url, part, timeout=timeout, progress=progress, console=console)
        raise FetchError(f"cannot download {url}: HTTP {e.code} {e.reason}; {manual_instructions(url)}") from None
    except (urllib.error.URLError, OSError, socket.timeout, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise FetchError(f"cannot download {url} ({reason}); no network? {manual_instructions(url)}") from None
    h = hashlib.sha256()
    with resp:
        if resp.status == 206 and existing:
            mode = "ab"
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    h.update(chunk)
        else:
            mode, existing = "wb", 0
        length = resp.headers.get("Content-Length")
        total = existing + int(length) if length and length.isdigit() else None
        size = existing
        with _progress(progress, console) as bar, open(part, mode) as f:
            task = bar.add_task(f"downloading {RMD17_ARCHIVE}", total=total, completed=existing)
            try:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    bar.update(task, completed=size)
            except (OSError, socket.timeout, http.client.HTTPException) as e:
                raise FetchError(f"download of {url} broke off after {size} bytes ({e}); run the command "
                                 f"again to resume it, or {manual_instructions(url)}") from None
    if total is not None and size != total:
        raise FetchError(f"download of {url} broke off after {size} of {total} bytes; run the command again "
                         f"to resume it, or {manual_instructions(url)}")
    return h.hexdigest(), size


def _check_sha256(path: Path, actual: str, expected: str | None) -> None:
    if not expected:
        return
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise DataError(path, f"expected SHA-256 {expected!r} is not 8 to 64 hex digits")
    if not actual.startswith(expected):
        raise DataError(path, f"SHA-256 {actual} does not match the expected {expected}"
                              f"{'...' if len(expected) < 64 else ''}: the file is corrupt or not the rMD17 "
                              "archive (pass --sha256 none to skip this check for an archive you trust)")


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


def extract_archive(archive: Path, target: Path, molecules=()) -> dict:
    """Reads every block of ``archive`` (tar.bz2) and writes its rMD17 members under ``target``.

    Returns the manifest entries (molecules with frame/atom counts, member sizes).  Raises DataError naming
    the archive when it is not a readable tar.bz2 file or lacks a split file or a requested molecule.
    """
    import tarfile

    found: dict[str, int] = {}
    try:
        with tarfile.open(archive, mode="r|bz2") as tar:
            for member in tar:  # stream mode: every member (and bz2 block) is read, in order
                m = _MEMBER.match(member.name)
                if m is None:
                    continue
                rel = m["rel"]
                if not member.isfile():
                    raise DataError(archive, f"member {member.name} is not a regular file")
                if rel in found:
                    raise DataError(archive, f"member {rel} appears twice")
                dst = target / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                with open(dst, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                found[rel] = int(member.size)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        msg = str(e).strip() or type(e).__name__
        raise DataError(archive, f"not a readable tar.bz2 archive ({type(e).__name__}: {msg})") from None
    missing = [r for r in split_file_names() if r not in found]
    if missing:
        raise DataError(archive, f"missing member(s) {', '.join(missing)}: not the rMD17 layout "
                                 "(npz_data/rmd17_<molecule>.npz, splits/index_train_0N.csv, "
                                 "splits/index_test_0N.csv)")
    present = sorted(r[len("npz_data/rmd17_"):-len(".npz")] for r in found if r.startswith("npz_data/"))
    if not present:
        raise DataError(archive, "no npz_data/rmd17_<molecule>.npz member")
    absent = [m for m in molecules if canonical_molecule(m) not in present]
    if absent:
        raise DataError(archive, f"no data for molecule(s) {absent}; the archive has {present}")
    entries = {}
    for mol in present:
        rel = f"npz_data/rmd17_{mol}.npz"
        d = read_npz(target / rel, where=f"{archive}: {rel}")
        entries[mol] = {"frames": int(d["coords"].shape[0]), "atoms": int(d["coords"].shape[1])}
    for rel in split_file_names():
        n_max = min(e["frames"] for e in entries.values())
        _read_index_csv(target / rel, n_max, where=f"{archive}: {rel}")
    return {"molecules": entries, "members": found}


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


# -- fetch --------------------------------------------------------------------------------------------
def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def fetch_rmd17(dest="data", *, url: str = RMD17_URL, archive=None, sha256: str | None = RMD17_SHA256,
                molecules=(), splits=None, val_fraction: float = 0.2, seed: int = 0, progress: bool = True,
                timeout: float = 60.0, console=None) -> FetchResult:
    """Downloads (or takes ``archive``), verifies and extracts rMD17 into ``DEST/rmd17``.

    ``molecules``: also write, for each of them and each split in ``splits`` (default 1..5), the
    structures of :func:`load_rmd17` as ``DEST/rmd17/uqpot/<molecule>/split<k>/`` (see
    :func:`convert_rmd17`).  Already extracted data (``DEST/rmd17/manifest.json``) are not fetched again.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest / "rmd17"
    manifest_path = root / "manifest.json"
    molecules = [canonical_molecule(m) for m in molecules]
    result = FetchResult(root=root, archive=None, downloaded=False, extracted=False, molecules=[], sha256=None)
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        absent = [m for m in molecules if m not in manifest.get("molecules", {})]
        if absent:
            raise DataError(root, f"no data for molecule(s) {absent}; this folder has "
                                  f"{sorted(manifest.get('molecules', {}))}")
        result.sha256 = manifest.get("sha256")
    else:
        if root.exists():
            raise DataError(root, "exists but holds no manifest.json (not a finished fetch); remove it and "
                                  "run the command again")
        final = dest / RMD17_ARCHIVE
        part = dest / (RMD17_ARCHIVE + ".part")
        downloaded_here = False
        if archive is not None:
            path = Path(archive)
            if not path.is_file():
                raise DataError(path, "no such file (the rMD17 archive given with --archive)")
            digest, size = _file_sha256(path), path.stat().st_size
            source = str(path)
        elif final.is_file():  # a verified archive from an earlier fetch whose data folder was removed
            path, digest, size, source = final, _file_sha256(final), final.stat().st_size, str(final)
        else:
            digest, size = download(url, part, timeout=timeout, progress=progress, console=console)
            path, source, downloaded_here = part, url, True
        tmp = dest / f".rmd17.tmp-{os.getpid()}"
        _remove(tmp)
        try:
            _check_sha256(url if downloaded_here else path, digest, sha256)
            tmp.mkdir(parents=True)
            entries = extract_archive(path, tmp, molecules)
            manifest = {"dataset": "rMD17", "doi": RMD17_DOI, "source": source, "sha256": digest,
                        "archive_bytes": size, "molecules": entries["molecules"], "n_splits": N_SPLITS,
                        "units": {"energy": "kcal/mol", "forces": "kcal/mol/Å", "positions": "Å"},
                        "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        except BaseException:
            _remove(tmp)
            if downloaded_here:
                _remove(part)
            raise
        if downloaded_here:
            os.replace(part, final)
            path = final
        os.replace(tmp, root)
        result.archive, result.downloaded, result.extracted, result.sha256 = path, downloaded_here, True, digest
    result.molecules = sorted(json.loads(manifest_path.read_text())["molecules"])
    for mol in molecules:
        for k in (splits or range(1, N_SPLITS + 1)):
            result.written += convert_rmd17(root, mol, split=int(k), val_fraction=val_fraction, seed=seed)
    return result


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


__all__ = ["RMD17_URL", "RMD17_DOI", "RMD17_SHA256", "RMD17_MOLECULES", "FetchResult", "fetch_rmd17",
           "load_rmd17", "rmd17_split_indices", "convert_rmd17", "extract_archive", "read_npz", "download",
           "split_file_names", "manual_instructions"]


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
