"""Fetching rMD17 (``uqpot data fetch rmd17``): download, verify and extract the published archive.

:func:`fetch_rmd17` (``uqpot data fetch rmd17``) streams the archive to ``DEST/rmd17.tar.bz2.part`` with
a progress bar, checks its size (``Content-Length``) and SHA-256, reads the whole bz2 stream (every block's
CRC) and extracts only the expected members, as regular files, into a temporary folder that is renamed to
``DEST/rmd17`` when everything checked out.  A corrupt archive or one that lacks a split file is refused
with a :class:`~uqpot.core.errors.DataError` naming the file, and leaves no extracted data behind (the
``.part`` file of a failed verification is deleted; the ``.part`` file of an interrupted transfer is kept
and the next run resumes it with an HTTP range request).  Without network, ``--archive FILE`` takes an
archive downloaded by hand.

The archive's layout, the molecules and the readers of the extracted files: :mod:`uqpot.data.sets.rmd17`.
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

from ...core.errors import DataError
from ._common import FetchError
from .rmd17 import (N_SPLITS, RMD17_ARCHIVE, RMD17_DOI, RMD17_SHA256, RMD17_URL, _read_index_csv, canonical_molecule,
                    convert_rmd17, read_npz, split_file_names)

_MEMBER = re.compile(r"^(?:\./)?(?:[^/]+/)?(?P<rel>npz_data/rmd17_(?P<mol>[a-z_]+)\.npz"
                     r"|splits/index_(?:train|test)_0[1-9]\.csv)$")
_CHUNK = 1 << 20


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


__all__ = ["FetchResult", "fetch_rmd17", "extract_archive", "download", "manual_instructions"]
