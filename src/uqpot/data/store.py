"""An SQLite store of labelled structures (an ASE database), keyed by a content hash.

Every row is one structure labelled (or attempted) at one level of theory:

* the geometry (numbers, positions, cell, pbc) as an ASE row;
* energy and forces, in **kcal/mol and kcal/mol/Å** (uqpot's internal units, not ASE's eV); the database
  metadata says so (``store.metadata["units"]``) and a store whose metadata declares other units is
  refused;
* key-value pairs: ``method`` (the level of theory, e.g. ``"pyscf:bp86-d3bj/def2-svp"``), ``uqhash``
  (the content hash, see :func:`structure_hash`), ``status`` (``"ok"`` or ``"failed"``), ``error`` (for
  failures: the message, at most 4000 characters) and the caller's provenance (e.g. ``generation``,
  ``uq_method``, ``source``);
* data: ``info`` (the structure's own scalar info).

Writes go through ASE's SQLite backend, which commits each write in its own transaction: a process
killed at any moment (SIGKILL included) leaves every committed label intact and no partial row (SQLite
rolls the interrupted transaction back; ASE's lock file, which a killed writer would leave behind, is not
used).
A structure whose labelling failed is stored with ``status="failed"`` so it is not retried blindly;
storing a successful label later replaces the failure row in one transaction.  A stored label is never
overwritten.  Several processes may read and write one store (SQLite locks it); the oracle writes from
one driver process, and two writers racing on the same new structure could at worst leave a duplicate
row, which lookups tolerate (the oldest successful row wins).

The content hash is the SHA-256 of the atomic numbers, the positions and cell rounded to
:data:`HASH_DECIMALS` decimals of Å (as integers, so ``-0.0`` and ``0.0`` agree), pbc and the method
string.  Geometries that differ by less than the rounding are the same structure; geometries that
straddle a rounding boundary are (rarely) different ones, which costs at most one extra label.

Kept whole (about 420 lines): one class, the store, whose lookups, writes, locking and metadata checks
share the database connection and the content hash; the module holds nothing else but its record type.
"""

from __future__ import annotations

import hashlib
import json
import numbers as _numbers
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UqpotError
from .structures import Structure

#: positions and cell are rounded to this many decimals (Å) before hashing: 1e-8 Å
HASH_DECIMALS = 8

#: units of the values stored in the database (written to its metadata)
STORE_UNITS = {"energy": "kcal/mol", "forces": "kcal/mol/Å", "positions": "Å", "cell": "Å"}
#: the stress of periodic labels (where the oracle gives one), ASE's Voigt order in the database
STRESS_UNIT = "kcal/mol/Å³"


def _voigt_to_matrix(v) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = np.asarray(v, dtype=np.float64).reshape(6)
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
STORE_FORMAT = "uqpot-store"
#: seconds a check waits for a store that another process holds locked before it says so
LOCK_WAIT_S = 5.0
STORE_VERSION = 1

STATUS_OK = "ok"
STATUS_FAILED = "failed"

#: key-value pairs that the store itself writes; provenance may not use them
_OWN_KEYS = ("method", "uqhash", "status", "error")
_ERROR_CHARS = 4000


class StoreError(UqpotError):
    pass


@dataclass
class StoreRecord:
    """One row of the store."""

    id: int
    method: str
    hash: str
    status: str  # "ok" | "failed"
    structure: Structure  # energy/forces set when status == "ok"
    error: str | None
    provenance: dict

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def _as_structure(obj) -> Structure:
    if isinstance(obj, Structure):
        return obj
    try:
        return Structure.from_atoms(obj)
    except AttributeError:
        raise TypeError(f"expected a uqpot Structure or an ase.Atoms, got {type(obj).__name__}") from None


def _rounded(a) -> bytes:
    scaled = np.rint(np.asarray(a, dtype=np.float64) * 10.0**HASH_DECIMALS)
    return np.ascontiguousarray(scaled.astype(np.int64)).tobytes()


def structure_hash(structure_or_atoms, method: str) -> str:
    """Content hash (hex SHA-256) of a structure's geometry and the level of theory ``method``."""
    s = _as_structure(structure_or_atoms)
    if not isinstance(method, str) or not method:
        raise StoreError("method must be a non-empty string (the level of theory)")
    h = hashlib.sha256()
    h.update(b"uqpot-structure-v1\0")
    h.update(np.ascontiguousarray(np.asarray(s.numbers, dtype=np.int64)).tobytes())
    h.update(_rounded(np.asarray(s.positions).reshape(-1, 3)))
    h.update(_rounded(np.asarray(s.cell).reshape(3, 3)))
    h.update(np.asarray(s.pbc, dtype=np.uint8).reshape(3).tobytes())
    h.update(b"\0" + method.encode("utf-8"))
    return h.hexdigest()


def _check_provenance(provenance: dict | None) -> dict:
    from ase.db.core import check

    out = {}
    for key, value in (provenance or {}).items():
        if key in _OWN_KEYS:
            raise StoreError(f"provenance key {key!r} is reserved by the store ({', '.join(_OWN_KEYS)})")
        if isinstance(value, (np.integer,)):
            value = int(value)
        elif isinstance(value, (np.floating,)):
            value = float(value)
        elif isinstance(value, np.bool_):
            value = bool(value)
        if not isinstance(value, (str, bool, _numbers.Real)):
            raise StoreError(
                f"provenance {key}={value!r}: values must be str, int, float or bool "
                f"(got {type(value).__name__})"
            )
        out[key] = value
    try:
        check(out)
    except ValueError as e:
        raise StoreError(f"bad provenance key: {e} (ASE database key rules: an identifier, not a "
                         "reserved name such as energy/forces/id, not a chemical symbol)") from None
    return out


class Store:
    """Labelled structures in an ASE SQLite database (``.db``).

    ``Store(path)`` opens or creates the database.  Energies and forces are kcal/mol and kcal/mol/Å.
    """

    def __init__(self, path):
        import ase.db

        self.path = Path(path)
        if self.path.suffix != ".db":
            raise StoreError(f"{self.path}: a store is an SQLite ASE database and its name must end in .db")
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite locks the database itself (and rolls back a killed writer's transaction); ASE's extra
        # lock file ("<store>.db.lock", created exclusively around every write) would outlive a writer
        # killed mid-write and block every later write forever, so it is off.
        self._db = ase.db.connect(str(self.path), type="db", append=True, use_lock_file=False)
        self._init_metadata()
        self._ensure_index()

    # -- setup ----------------------------------------------------------------------------------------
    def _init_metadata(self) -> None:
        try:
            meta = dict(self._db.metadata)
        except sqlite3.DatabaseError as e:
            raise sqlite_problem(self.path, e) from None
        if meta.get("format") != STORE_FORMAT:
            if len(self._db) == 0:  # a new (or empty) database becomes a store
                meta.update({"format": STORE_FORMAT, "version": STORE_VERSION, "units": STORE_UNITS})
                self._db.metadata = meta
                return
            raise StoreError(f"{self.path}: an ASE database that is not a uqpot store (metadata {meta}); "
                             "its energies and forces have no declared units")
        if meta.get("units") != STORE_UNITS:
            raise StoreError(f"{self.path}: the store declares units {meta.get('units')}, expected {STORE_UNITS}")

    def _ensure_index(self) -> None:
        # ASE indexes text key-value pairs by key only; lookups by hash want (key, value).
        con = sqlite3.connect(str(self.path), timeout=60)
        try:
            con.execute("CREATE INDEX IF NOT EXISTS uqpot_text_kv_index ON text_key_values(key, value)")
            con.commit()
        finally:
            con.close()

    @property
    def metadata(self) -> dict:
        return dict(self._db.metadata)

    # -- keys -----------------------------------------------------------------------------------------
    @staticmethod
    def hash(structure_or_atoms, method: str) -> str:
        """The content hash that keys ``structure_or_atoms`` labelled with ``method``."""
        return structure_hash(structure_or_atoms, method)

    # -- reading --------------------------------------------------------------------------------------
    def _rows_for(self, key: str):
        return list(self._db.select(uqhash=key))

    def _record(self, row) -> StoreRecord:
        kvp = dict(row.key_value_pairs)
        method = kvp.pop("method")
        key = kvp.pop("uqhash")
        status = kvp.pop("status")
        error = kvp.pop("error", None)
        data = row.data or {}
        info = dict(data.get("info") or {})
        ok = status == STATUS_OK
        s = Structure(
            numbers=np.asarray(row.numbers, dtype=np.int64).copy(),
            positions=np.asarray(row.positions, dtype=np.float64).copy(),
            cell=np.asarray(row.cell, dtype=np.float64).reshape(3, 3).copy(),
            pbc=np.asarray(row.pbc, dtype=bool).copy(),
            energy=float(row.energy) if ok and row.get("energy") is not None else None,
            forces=np.asarray(row.forces, dtype=np.float64).copy() if ok and row.get("forces") is not None else None,
            source=str(kvp["source"]) if "source" in kvp else None,
            info=info,
            stress=_voigt_to_matrix(row.stress) if ok and row.get("stress") is not None else None,
        )
        s.info.update({"method": method, "store_id": int(row.id)})
        s.info.update(kvp)
        return StoreRecord(id=int(row.id), method=method, hash=key, status=status, structure=s,
                           error=error, provenance=kvp)

    def lookup(self, structure_or_atoms, method: str) -> StoreRecord | None:
        """The row for this structure and method (a success if there is one, else a failure), or None."""
        rows = self._rows_for(structure_hash(structure_or_atoms, method))
        if not rows:
            return None
        rows.sort(key=lambda r: (r.get("status") != STATUS_OK, r.id))
        return self._record(rows[0])

    def get(self, structure_or_atoms, method: str) -> Structure | None:
        """The labelled structure (energy in kcal/mol, forces in kcal/mol/Å), or None if not labelled.

        A stored failure returns None here; use :meth:`lookup` to see it.
        """
        rec = self.lookup(structure_or_atoms, method)
        return rec.structure if rec is not None and rec.ok else None

    def count(self, method: str | None = None, status: str | None = None) -> int:
        filters = {}
        if method is not None:
            filters["method"] = method
        if status is not None:
            filters["status"] = status
        return self._db.count(**filters)

    def __len__(self) -> int:
        return self.count()

    def select(self, *, status: str | None = STATUS_OK, **filters) -> list[Structure]:
        """Structures whose key-value pairs equal ``filters`` (e.g. ``method=..., generation=3``).

        Only successful labels unless ``status`` says otherwise (``status=None``: every row).
        """
        return [r.structure for r in self.records(status=status, **filters)]

    def records(self, *, status: str | None = None, **filters) -> list[StoreRecord]:
        if status is not None:
            filters["status"] = status
        return [self._record(row) for row in self._db.select(sort="id", **filters)]

    def failures(self, method: str | None = None) -> list[StoreRecord]:
        filters = {} if method is None else {"method": method}
        return self.records(status=STATUS_FAILED, **filters)

    # -- writing --------------------------------------------------------------------------------------
    def _atoms_for(self, s: Structure, with_results: bool):
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
        if with_results:
            if s.energy is None or s.forces is None:
                raise StoreError("a labelled structure needs both energy and forces")
            forces = np.asarray(s.forces, dtype=np.float64)
            if forces.shape != (s.n_atoms, 3):
                raise StoreError(f"forces have shape {forces.shape}, expected ({s.n_atoms}, 3)")
            # kcal/mol, kcal/mol/Å and kcal/mol/Å³, as the store's metadata says (not ASE's eV)
            extra = {}
            if getattr(s, "stress", None) is not None:
                st = np.asarray(s.stress, dtype=np.float64)
                extra["stress"] = st[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]  # ASE's Voigt order
            atoms.calc = SinglePointCalculator(atoms, energy=float(s.energy), forces=forces, **extra)
        return atoms

    @staticmethod
    def _info(s: Structure) -> dict:
        out = {}
        for k, v in s.info.items():
            if k in ("method", "store_id", "uqhash"):
                continue
            if isinstance(v, (np.integer,)):
                v = int(v)
            elif isinstance(v, (np.floating,)):
                v = float(v)
            if isinstance(v, (str, bool, int, float)):
                out[str(k)] = v
        return out

    def _write(self, s: Structure, method: str, kvp: dict, data: dict, with_results: bool) -> int:
        try:
            return self._write_row(s, method, kvp, data, with_results)
        except sqlite3.OperationalError as exc:  # locked by another writer past SQLite's timeout, disk I/O
            raise sqlite_problem(self.path, exc) from None

    def _write_row(self, s: Structure, method: str, kvp: dict, data: dict, with_results: bool) -> int:
        key = structure_hash(s, method)
        atoms = self._atoms_for(s, with_results)
        kvp = {**kvp, "method": method, "uqhash": key}
        rows = self._rows_for(key)
        ok_rows = [r for r in rows if r.get("status") == STATUS_OK]
        if ok_rows:
            # already labelled: labels are never overwritten
            return int(min(r.id for r in ok_rows))
        if rows:
            # replace the failure row in place (one transaction)
            row = min(rows, key=lambda r: r.id)
            old = set(row.key_value_pairs) - set(kvp)
            self._db.update(row.id, atoms=atoms, delete_keys=sorted(old), data=data, **kvp)
            return int(row.id)
        return int(self._db.write(atoms, key_value_pairs=kvp, data=data))

    def put(self, structure: Structure, method: str, provenance: dict | None = None) -> int:
        """Stores a labelled structure (energy kcal/mol, forces kcal/mol/Å); committed before returning.

        Returns the row id.  If the structure is already labelled with ``method`` the existing row is
        kept and its id returned; a stored failure for it is replaced.
        """
        s = _as_structure(structure)
        kvp = _check_provenance(provenance)
        kvp["status"] = STATUS_OK
        return self._write(s, method, kvp, {"info": self._info(s)}, with_results=True)

    def put_failure(self, structure, method: str, error: str, provenance: dict | None = None) -> int:
        """Records that labelling ``structure`` with ``method`` failed (with the error message).

        A structure that already has a successful label keeps it (the id of that row is returned).
        """
        s = _as_structure(structure)
        kvp = _check_provenance(provenance)
        error = str(error) if error else "unknown error"
        kvp.update(status=STATUS_FAILED, error=error[:_ERROR_CHARS])
        return self._write(s, method, kvp, {"info": self._info(s)}, with_results=False)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, rows={self.count()})"


def sqlite_problem(path, exc: Exception) -> StoreError:
    """An SQLite failure on the store ``path`` in words: a store another process holds locked is not a
    broken file."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreError(f"{path}: the label store is locked by another process (another uqpot loop or data build "
                          "writing to it?); wait until it has finished, or give another store")
    if "not a database" in text or "malformed" in text or "encrypted" in text:
        return StoreError(f"{path}: not an SQLite database ({text}); a label store is an ASE SQLite database "
                          "written by uqpot: give another store path")
    return StoreError(f"{path}: cannot open the label store ({type(exc).__name__}: {text})")


def check_store_path(path) -> Path:
    """Checks, without creating or changing anything, that ``path`` is a label store or can become one: a
    ``.db`` name, not a folder; an existing file must be a readable SQLite database that is a uqpot store (or
    empty), a new one must lie in a folder that can be created and written.  StoreError otherwise."""
    path = Path(path)
    if path.suffix != ".db":
        raise StoreError(f"{path}: a store is an SQLite ASE database and its name must end in .db")
    if path.is_dir():
        raise StoreError(f"{path}: is a directory; a label store is a file ending in .db")
    if not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise StoreError(f"{path}: cannot be created: {parent} is a file, not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StoreError(f"{path}: cannot be created in {parent} (permission denied)")
        return path
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{path}: the label store cannot be read and written (permission denied)")
    if path.stat().st_size == 0:
        return path  # an empty file becomes a store
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            meta, rows = {}, 0
            if "information" in tables:
                found = con.execute("SELECT value FROM information WHERE name='metadata'").fetchone()
                meta = json.loads(found[0]) if found else {}
            if "systems" in tables:
                rows = con.execute("SELECT COUNT(*) FROM systems").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise sqlite_problem(path, exc) from None
    except ValueError:
        meta = {}
    if rows and meta.get("format") != STORE_FORMAT:
        raise StoreError(f"{path}: an ASE database that is not a uqpot store (no uqpot metadata); its energies and "
                         "forces have no declared units: give another store path")
    if meta.get("format") == STORE_FORMAT and meta.get("units") != STORE_UNITS:
        raise StoreError(f"{path}: the store declares units {meta.get('units')}, expected {STORE_UNITS}")
    return path


def open_store(store) -> Store | None:
    """A :class:`Store` from a Store, a path, or None."""
    if store is None or isinstance(store, Store):
        return store
    return Store(store)
