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

**Safety.**  A pickle can run any code while it is loaded (a ``__reduce__`` that calls ``os.system``),
so these files are never given to ``pickle.load`` or to ``torch.load(weights_only=False)``.  The
:class:`SafeUnpickler` resolves *only* the names in :data:`ALLOWED` — torch's tensor and storage rebuild
functions (re-implemented here on NumPy, with bounds checks), NumPy's array/dtype/scalar reconstruction,
``collections.OrderedDict``, ``set``/``frozenset``/``complex``, a Latin-1-only ``_codecs.encode`` and the
NFF ``Dataset`` class (replaced by an inert record of its attributes; NFF is never imported).  Any other
global is refused with a :class:`~uqpot.core.errors.DataError` naming it, before anything is called.  Both of
torch's containers are read: the zip format (torch >= 1.6) and the older pickle-stream format.
PyTorch itself is not needed.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ...core.errors import DataError

# -- torch storages and tensors, on NumPy ---------------------------------------------------------------
#: torch storage class name -> NumPy dtype (bfloat16 has no NumPy dtype and is refused)
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64, "UntypedStorage": np.uint8,
}


class _StorageType:
    """Stands for a torch storage class named in the file (carries its dtype only)."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    """A flat array of one storage's elements."""

    def __init__(self, array: np.ndarray):
        self.array = array


class _TensorType:
    """Stands for ``torch.Tensor`` / ``torch.nn.Parameter`` (only as an argument to the rebuild functions)."""


_TENSOR = _TensorType()


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor(_v2): a strided view of ``storage``, checked to lie inside it, copied."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor must be built from a storage of the file")
    if storage.array is None:  # legacy format: the storage's data come after the pickle
        return _LazyTensor(storage, storage_offset, size, stride)
    flat = storage.array
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise pickle.UnpicklingError(f"bad tensor geometry: size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(flat):
        raise pickle.UnpicklingError(f"tensor (size {size}, stride {stride}, offset {offset}) reaches past "
                                     f"its storage of {len(flat)} elements")
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=tuple(s * flat.itemsize for s in stride), writeable=False)
    return np.array(view, dtype=flat.dtype.newbyteorder("="))


class _LazyTensor:
    """A tensor of a legacy file whose storage has not been read yet (see :func:`_resolve`)."""

    def __init__(self, storage, storage_offset, size, stride):
        self.args = (storage, storage_offset, size, stride)


def _resolve(obj, depth: int = 0):
    """Replaces every :class:`_LazyTensor` in ``obj`` (containers, NFF records) by its array."""
    if depth > 200:
        raise pickle.UnpicklingError("nesting too deep")
    if isinstance(obj, _LazyTensor):
        return _rebuild_tensor(*obj.args)
    if isinstance(obj, list):
        obj[:] = [_resolve(v, depth + 1) for v in obj]
        return obj
    if isinstance(obj, tuple):
        return tuple(_resolve(v, depth + 1) for v in obj)
    if isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _resolve(obj[k], depth + 1)
        return obj
    if isinstance(obj, NFFDatasetRecord):
        _resolve(obj.__dict__, depth + 1)
        return obj
    return obj


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_parameter) or new_type is not _TENSOR:
        raise pickle.UnpicklingError("only plain tensors are allowed")
    return func(*args)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin-1", errors)


def _numpy_core():
    return getattr(np, "_core", None) or np.core  # NumPy 2 renamed numpy.core to numpy._core


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain NumPy arrays are allowed")
    return _numpy_core().multiarray._reconstruct(np.ndarray, shape, dtype)


def _np_scalar(dtype, *args):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("only numeric NumPy scalars are allowed")
    return _numpy_core().multiarray.scalar(dtype, *args)


class NFFDatasetRecord:
    """The attributes (``props``, ``units``, ...) of a pickled ``nff.data.dataset.Dataset``; inert."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("an NFF Dataset's state must be a dict")
        self.__dict__.update({str(k): v for k, v in state.items()})


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (protocol 0/1 pickles of plain objects), for the NFF record only."""
    if cls is not NFFDatasetRecord or base is not object:
        raise pickle.UnpicklingError("copyreg._reconstructor is allowed for the NFF Dataset only")
    return NFFDatasetRecord()


ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
    ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("copy_reg", "_reconstructor"): _reconstructor, ("copyreg", "_reconstructor"): _reconstructor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR, ("torch.nn.parameter", "Parameter"): _TENSOR,
    ("torch", "Size"): tuple,
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar, ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("nff.data.dataset", "Dataset"): NFFDatasetRecord, ("nff.data", "Dataset"): NFFDatasetRecord,
}
for _name in STORAGE_DTYPES:
    ALLOWED[("torch", _name)] = _StorageType(_name)
    ALLOWED[("torch.storage", _name)] = ALLOWED[("torch", _name)]


class SafeUnpickler(pickle.Unpickler):
    """A pickle reader that resolves only :data:`ALLOWED` names; storages come from ``storages(pid)``."""

    def __init__(self, file, storages=None):
        super().__init__(file, encoding="latin1")
        self._storages = storages

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load the global {module}.{name} (not on uqpot's "
                                         "allow-list of tensors, arrays and plain containers)") from None

    def persistent_load(self, pid):
        if self._storages is None:
            raise pickle.UnpicklingError("a persistent id in a plain pickle (not written by torch.save)")
        return self._storages(pid)


def _storage_array(raw: bytes, storage_type, numel: int, what: str) -> np.ndarray:
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"{what}: unknown storage type {storage_type!r}")
    dtype = storage_type.dtype
    if len(raw) < int(numel) * dtype.itemsize:
        raise pickle.UnpicklingError(f"{what}: {len(raw)} bytes, expected {int(numel) * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype, count=int(numel))


def _load_zip(path: Path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise pickle.UnpicklingError("a zip file without the data.pkl of torch.save")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if byteorder != "little":
            raise pickle.UnpicklingError(f"byte order {byteorder!r} is not supported")
        cache: dict[str, _Storage] = {}

        def storages(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            _, storage_type, key, _location, numel = pid
            key = str(key)
            if key not in cache:
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise pickle.UnpicklingError(f"storage {key} is missing from the file")
                cache[key] = _Storage(_storage_array(zf.read(member), storage_type, numel, f"storage {key}"))
            return cache[key]

        return SafeUnpickler(io.BytesIO(zf.read(pkl[0])), storages).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_pickle_or_legacy(path: Path):
    """A plain pickle, or torch.save's pickle-stream format (torch < 1.6, or
    ``_use_new_zipfile_serialization=False``): magic number, protocol, sys_info, the object, the storage
    keys, then each storage's raw data."""
    with open(path, "rb") as f:
        first = SafeUnpickler(f).load()
        if not (isinstance(first, int) and first == _LEGACY_MAGIC):
            return first  # a plain pickle
        if SafeUnpickler(f).load() != 1001:
            raise pickle.UnpicklingError("unsupported torch.save protocol version")
        SafeUnpickler(f).load()  # sys_info
        wanted: dict[str, tuple] = {}  # root key -> (storage type, numel)
        views: list[tuple] = []

        def storages(pid):
            if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            _, storage_type, key, _location, numel, view = pid
            if not isinstance(storage_type, _StorageType):
                raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
            wanted.setdefault(str(key), (storage_type, int(numel)))
            st = _Storage(None)  # filled once the raw data (after the pickle) has been read
            views.append((st, str(key), view))
            return st

        obj = SafeUnpickler(f, storages).load()
        keys = SafeUnpickler(f).load()
        if not isinstance(keys, list):
            raise pickle.UnpicklingError("bad storage key list")
        data: dict[str, np.ndarray] = {}
        for key in keys:
            key = str(key)
            storage_type, numel = wanted.get(key, (None, None))
            if storage_type is None:
                raise pickle.UnpicklingError(f"storage {key} was not referenced")
            head = f.read(8)
            if len(head) != 8:
                raise pickle.UnpicklingError("file ends inside the storage data")
            (count,) = struct.unpack("<q", head)
            raw = f.read(count * storage_type.dtype.itemsize)
            data[key] = _storage_array(raw, storage_type, count, f"storage {key}")
        for st, key, view in views:
            if key not in data:
                raise pickle.UnpicklingError(f"storage {key} has no data")
            arr = data[key]
            if view is not None:
                _vkey, offset, size = view
                arr = arr[int(offset): int(offset) + int(size)]
            st.array = arr
    return _resolve(obj)


def load_nff(path):
    """The object stored in an NFF/torch file (dicts, lists, NumPy arrays; an NFF Dataset as a
    :class:`NFFDatasetRecord`), read through the allow-list unpickler.  Raises DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        import tarfile

        if tarfile.is_tarfile(path):
            raise DataError(path, "PyTorch's pre-2018 tar container is not supported; re-save the file with a "
                                  "recent PyTorch (torch.save) first")
        return _load_pickle_or_legacy(path)
    except DataError:
        raise
    except pickle.UnpicklingError as e:
        raise DataError(path, f"not loaded: {e}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError, struct.error,
            zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise DataError(path, f"not a readable NFF/torch file ({type(e).__name__}: {e})") from None


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
