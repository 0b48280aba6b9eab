"""Frames of a structure file, one ``(frame, atoms)`` at a time, and readable messages when a file cannot be
read.

Extended XYZ (the common case) is split into frames by its atom-count lines and each frame is parsed on its
own, so that one broken frame (truncated, a bad number, an unknown element) is reported with its number and
the frames after it are still read and checked: ``uqpot data check`` lists every problem of a file, not only
the first.  After a frame whose atom count is wrong the reader resynchronises on the next line that holds a
single integer (an atom line never does).  Other formats go through ``ase.io.iread``, which stops at the
first unreadable frame; the message then says that later frames were not checked.

A reader failure names the format that was tried and why (a ``.cif`` file holding extended XYZ otherwise
surfaces as ASE's bare ``AssertionError``), and what the content looks like instead.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from ..core import fields as F
from ..core.errors import DataError

#: formats read frame by frame (the rest through ase.io.iread)
XYZ_FORMATS = ("extxyz", "xyz")
XYZ_SUFFIXES = (".xyz", ".extxyz")


def is_xyz(path: Path, fmt: str | None) -> bool:
    return fmt in XYZ_FORMATS if fmt else path.suffix.lower() in XYZ_SUFFIXES


def sniff(path: Path) -> str | None:
    """What the start of a file looks like: 'binary', 'extxyz', 'indices' or None (unknown)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192)
    except OSError:
        return None
    if b"\0" in head:
        return "binary"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) >= 2 and lines[0].strip().isdigit() and ("Properties=" in lines[1] or "Lattice=" in lines[1]):
        return "extxyz"
    tokens = text.replace(",", " ").split()[:200]
    if tokens and all(t.lstrip("-").isdigit() for t in tokens[:-1]):
        return "indices"
    return None


def guessed_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    try:
        from ase.io.formats import filetype

        return filetype(str(path), read=False)
    except Exception:
        return path.suffix.lstrip(".") or "unknown"


def read_failure(path: Path, fmt: str | None, exc: Exception | None) -> str:
    """A reader exception (None: the reader found no frame) as one sentence: the format tried, the
    reader's own words (or that it gave none), and a hint from the file's content."""
    name = guessed_format(path, fmt)
    if exc is None:
        how = f"cannot read as {name}: no frame found"
    else:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "the reader failed without a message"
        how = f"cannot read as {name} ({type(exc).__name__}: {detail})"
    if not fmt:
        how += f"; the format was guessed from the file name '{path.name}'"
    kind = sniff(path)
    if kind == "extxyz" and name not in XYZ_FORMATS:
        how += ("; the content looks like extended XYZ: give data.format: extxyz (--format extxyz on the "
                "command line) or rename the file to .extxyz")
    elif kind == "indices":
        how += ("; the content looks like an index file (integers only), not structures: give it as "
                "split.train_file / val_file / test_file")
    elif kind == "binary" and name in XYZ_FORMATS:
        how += "; the file holds binary data, not text"
    return how


def iter_ase(path: Path, fmt: str | None, index: str):
    """Frames through ``ase.io.iread``; a reader failure raises DataError naming the frame where it
    happened (the frames after it cannot be reached)."""
    import ase.io

    frame = 0  # the frame being read when a reader error occurs
    try:
        for atoms in ase.io.iread(str(path), index=index, format=fmt):
            yield frame, atoms
            frame += 1
    except DataError:
        raise
    except KeyError as exc:  # ASE raises KeyError for unknown element symbols
        raise DataError(path, f"cannot read: unknown element symbol {exc}", frame=frame, field=F.NUMBERS) from None
    except PermissionError:
        raise DataError(path, "file is not readable (permission denied)") from None
    except Exception as exc:  # truncated or malformed file: ASE's own message, with the frame
        raise DataError(path, read_failure(path, fmt, exc) + "; frames after it were not checked",
                        frame=frame) from None


def _count(line: bytes) -> int | None:
    parts = line.split()
    if len(parts) == 1 and parts[0].isdigit():
        return int(parts[0])
    return None


def _chunks(path: Path):
    """Yields (frame, text) for every frame of an XYZ file, or (frame, DataError) for a frame that cannot
    be cut out of the file (bad count line, truncated end, binary content)."""
    with open(path, "rb") as fh:
        head = fh.read(8192)
        if b"\0" in head:
            yield 0, DataError(path, "cannot read: the file holds binary data, not extended XYZ text", frame=0)
            return
        fh.seek(0)
        lines = iter(fh)
        frame, line_no = 0, 0
        pending = None  # a count line found while resynchronising
        while True:
            line = pending if pending is not None else next(lines, None)
            pending = None
            if line is None:
                return
            line_no += 1
            if not line.strip():
                continue
            n = _count(line)
            if n is None:  # out of step: report, then skip to the next count line
                shown = line.decode("utf-8", "replace").strip()[:60]
                yield frame, DataError(path, f"cannot read: line {line_no}: expected the number of atoms of a "
                                             f"frame, found '{shown}'", frame=frame)
                frame += 1
                for line in lines:
                    line_no += 1
                    if _count(line) is not None:
                        pending, line_no = line, line_no - 1
                        break
                continue
            body = [line]
            for _ in range(n + 1):
                nxt = next(lines, None)
                if nxt is None:
                    break
                line_no += 1
                body.append(nxt)
            if len(body) < n + 2:
                yield frame, DataError(path, f"cannot read: truncated frame: {n} atoms declared, the file ends "
                                             f"after {max(len(body) - 2, 0)} atom line(s)", frame=frame)
                return
            try:
                yield frame, b"".join(body).decode("utf-8")
            except UnicodeDecodeError:
                yield frame, DataError(path, "cannot read: not UTF-8 text", frame=frame)
            frame += 1


#: ``stress=``/``virial=`` in an extended XYZ comment line, quoted or in braces
_TENSOR = re.compile(r'(?P<key>(?<![\w-])(?:stress|virial))=(?P<q>"|\{)(?P<values>[^"}]*)(?:"|\})')


def voigt_to_nine(chunk: str) -> str:
    """A frame's text with a 6-value (Voigt: xx yy zz yz xz xy) ``stress``/``virial`` on its comment line
    written as the 9 values of the symmetric 3×3 tensor, which is what ASE's extended XYZ reader takes (it
    refuses 6 values); other frames unchanged."""
    first, sep, rest = chunk.partition("\n")
    comment, sep2, atoms = rest.partition("\n")

    def nine(m):
        values = m.group("values").split()
        if len(values) != 6:
            return m.group(0)
        xx, yy, zz, yz, xz, xy = values
        close = '"' if m.group("q") == '"' else "}"
        return f'{m.group("key")}={m.group("q")}{" ".join((xx, xy, xz, xy, yy, yz, xz, yz, zz))}{close}'

    return first + sep + _TENSOR.sub(nine, comment) + sep2 + atoms


#: largest |σ − σᵀ| accepted, relative to the largest component (numbers printed with ~6 digits)
SYMMETRY_TOL = 1e-5


def asymmetry(matrix) -> str | None:
    """Why a 3×3 stress (or virial) is not symmetric, naming the two components (None if it is)."""
    import numpy as np

    m = np.asarray(matrix, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(m)):
        return None
    diff = np.abs(m - m.T)
    if diff.max() <= SYMMETRY_TOL * max(float(np.abs(m).max()), 1e-300):
        return None
    a, b = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return (f"not symmetric (component {'xyz'[a]}{'xyz'[b]} = {m[a, b]:.6g}, {'xyz'[b]}{'xyz'[a]} = {m[b, a]:.6g}); "
            "a stress tensor is symmetric: check the order of its 9 values")


def _tensor_problem(chunk: str, path: Path, frame: int) -> DataError | None:
    """A 9-value ``stress``/``virial`` that is not symmetric (ASE would symmetrise it silently)."""
    comment = chunk.partition("\n")[2].partition("\n")[0]
    for m in _TENSOR.finditer(comment):
        values = m.group("values").split()
        if len(values) != 9:
            continue
        try:
            why = asymmetry([float(v) for v in values])
        except ValueError:
            continue  # not numbers: ASE's reader says so
        if why:
            return DataError(path, f"{m.group('key')} is {why}", frame=frame, field=m.group("key"))
    return None


def iter_xyz(path: Path, fmt: str | None):
    """Frames of an (extended) XYZ file, each parsed on its own; a broken frame yields (frame, DataError)
    and reading goes on with the next one."""
    import ase.io

    for frame, chunk in _chunks(path):
        if isinstance(chunk, DataError):
            yield frame, chunk
            continue
        problem = _tensor_problem(chunk, path, frame)
        if problem is not None:
            yield frame, problem
            continue
        try:
            atoms = ase.io.read(io.StringIO(voigt_to_nine(chunk)), format="extxyz")
        except KeyError as exc:
            yield frame, DataError(path, f"cannot read: unknown element symbol {exc}", frame=frame, field=F.NUMBERS)
            continue
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            yield frame, DataError(path, f"cannot read ({type(exc).__name__}: {detail})", frame=frame)
            continue
        yield frame, atoms
