"""Loading NFF/torch files (``torch.save``'s containers) without executing code: :func:`load_nff`.

**Safety.**  A pickle can run any code while it is loaded (a ``__reduce__`` that calls ``os.system``),
so these files are never given to ``pickle.load`` or to ``torch.load(weights_only=False)``.  The
:class:`SafeUnpickler` resolves *only* the names in :data:`ALLOWED` — torch's tensor and storage rebuild
functions (re-implemented here on NumPy, with bounds checks), NumPy's array/dtype/scalar reconstruction,
``collections.OrderedDict``, ``set``/``frozenset``/``complex``, a Latin-1-only ``_codecs.encode`` and the
NFF ``Dataset`` class (replaced by an inert record of its attributes; NFF is never imported).  Any other
global is refused with a :class:`~uqpot.core.errors.DataError` naming it, before anything is called.  Both of
torch's containers are read: the zip format (torch >= 1.6) and the older pickle-stream format.
PyTorch itself is not needed.

What the loaded properties mean and how they become structures: :mod:`uqpot.data.sets.nff`.
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
