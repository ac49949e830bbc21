"""Read a torch zip or legacy checkpoint without torch: tensors become memory-mapped numpy views.

``ssc analyze`` needs a few thousand coefficients out of a file that may hold hundreds of
megabytes of templates and optimizer state, and importing torch alone costs more than a second.
This reader maps the file, unpickles its structure with a restricted unpickler, and turns every
tensor into a :class:`~soft_share_cli.arrays.StoredArray` viewing the file's bytes: nothing is
read until it is used, and what is never used (optimizer momentum, the templates under the
coefficients metric) is never read.

It runs only after :func:`soft_share_cli.checkpoint.load_checkpoint`'s scan has cleared the file,
and its unpickler hands out nothing but the tensor/storage rebuilders below, ``OrderedDict``,
numpy's array reconstructors and the inert placeholders: the same set torch's weights-only loader
accepts, minus what this reader does not model. Whatever it does not model (bfloat16, quantized,
sparse or subclassed tensors, compressed zip members, big-endian storage, a damaged file) makes
:func:`read_arrays` return ``None``, and the caller loads the file with torch instead, which then
also words any error.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from soft_share_cli import _pickle_scan as scan
from soft_share_cli.arrays import MappedFile, StoredArray

# torch storage class -> numpy dtype; bfloat16 and the quantized types have no numpy dtype.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
}
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra length
# The opcodes torch's weights-only unpickler reads (torch 2.13): a file using any other (protocol
# 0/1 or 4/5 pickles) is left to it, so that both paths accept and refuse the same files.
_TORCH_OPCODES = frozenset(
    {"APPEND", "APPENDS", "BINFLOAT", "BINGET", "BININT", "BININT1", "BININT2", "BINPERSID",
     "BINPUT", "BINUNICODE", "BUILD", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE",
     "GLOBAL", "LONG1", "LONG_BINGET", "LONG_BINPUT", "MARK", "NEWFALSE", "NEWOBJ", "NEWTRUE",
     "NONE", "PROTO", "REDUCE", "SETITEM", "SETITEMS", "SHORT_BINSTRING", "STOP", "TUPLE",
     "TUPLE1", "TUPLE2", "TUPLE3"}
)  # fmt: skip


class _Unsupported(Exception):
    """Something this reader does not model: the caller falls back to torch's loader."""


class _StorageType:
    """Stands for a ``torch.<X>Storage`` class in a persistent id: only its dtype matters."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any) -> StoredArray:
    if not isinstance(storage, np.ndarray):
        raise _Unsupported("a tensor without a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min((offset, *size, *stride), default=0) < 0:
        raise _Unsupported("a malformed tensor")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else 0
    if last >= max(storage.size, 1) and all(size):
        raise _Unsupported("a tensor outside its storage")
    item = storage.itemsize
    base = storage[offset:] if all(size) else storage[:0]
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    array = view.view(StoredArray)
    array.mapped = getattr(storage, "mapped", None)
    return array


def _rebuild_tensor_v2(
    storage: Any,
    offset: int,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> StoredArray:
    if metadata:  # e.g. a tensor subclass's or a conjugate view's extra state
        raise _Unsupported("tensor metadata")
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, *args: Any) -> Any:
    return data  # a Parameter in a state dict is its tensor


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # numpy arrays pickled with protocol 2 spell their bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Unsupported("_codecs.encode beyond latin-1 bytes")
    return codecs.encode(text, "latin1", errors)


class _Frozen:
    """A function the pickle may call but not edit: BUILD on it fails instead of altering it."""

    __slots__ = ("_function",)
    _function: Any

    def __init__(self, function: Any) -> None:
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _Unsupported("a pickle that edits a rebuild function")

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)


def _globals(placeholders: tuple[str, ...]) -> dict[str, Any]:
    """Dotted name -> what the unpickler gets for it; fresh objects for every file."""
    table: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor": _Frozen(_rebuild_tensor),
        "torch._utils._rebuild_tensor_v2": _Frozen(_rebuild_tensor_v2),
        "torch._utils._rebuild_parameter": _Frozen(_rebuild_parameter),
        "torch._utils._rebuild_parameter_with_state": _Frozen(_rebuild_parameter),
        "torch.Size": tuple,
        "_codecs.encode": _Frozen(_latin1_encode),
    }
    for name, dtype in _STORAGE_DTYPES.items():
        table[f"torch.{name}"] = _StorageType(dtype)
    for obj, name in scan.numpy_safe_globals():
        table[name] = obj
    for cls, name in scan.make_placeholders(placeholders):
        table[name] = cls
    return table


#: Every global the reader resolves besides placeholders; all of them torch's loader allows too.
MODELLED_GLOBALS = frozenset(_globals(()))


class _Unpickler(pickle.Unpickler):
    """Resolves globals from a fixed table only (the Python docs' "restricting globals").

    Refuses up front (reading the stream's opcodes, then rewinding) a pickle that uses an opcode
    torch's weights-only unpickler does not read.
    """

    def __init__(self, stream: Any, table: dict[str, Any], storage: Any) -> None:
        start = stream.tell()
        unknown = {op.name for op, _, _ in pickletools.genops(stream)} - _TORCH_OPCODES
        if unknown:
            raise _Unsupported(f"opcodes torch's safe loader does not read: {sorted(unknown)}")
        stream.seek(start)
        super().__init__(stream)
        self._table = table
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self._table.get(f"{module}.{name}")
        if found is None:
            raise _Unsupported(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        return self._storage(pid)


def read_arrays(path: Path, file_format: str, placeholders: tuple[str, ...]) -> Any | None:
    """The unpickled top-level object of a scanned zip or legacy file, tensors as StoredArray.

    Returns ``None`` when the file needs torch's loader (see the module docstring).
    """
    try:
        with path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return None
            mapped = MappedFile(fh.fileno())
            table = _globals(placeholders)
            if file_format == "zip":
                return _read_zip(fh, mapped, table)
        return _read_legacy(path, mapped, table)
    except (_Unsupported, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError):
        return None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error):
        return None  # a damaged file: torch's loader will say what is wrong with it


def _read_zip(fh: Any, mapped: MappedFile, table: dict[str, Any]) -> Any:
    with zipfile.ZipFile(fh) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in infos if name.rsplit("/", 1)[-1] == "data.pkl"]
        if len(pickles) != 1:
            raise _Unsupported("not exactly one data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        order = infos.get(f"{prefix}byteorder")
        if order is not None and archive.read(order).strip() != b"little":
            raise _Unsupported("big-endian storage")
        data = archive.read(pickles[0])

    storages: dict[str, np.ndarray] = {}

    def storage(pid: Any) -> np.ndarray:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise _Unsupported("a persistent id other than a storage")
        _, kind, key, _location, count = pid
        if not isinstance(kind, _StorageType):
            raise _Unsupported("an untyped or unknown storage")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if key not in storages:
            info = infos.get(f"{prefix}data/{key}")
            if info is None or info.compress_type != zipfile.ZIP_STORED:
                raise _Unsupported("a missing or compressed storage record")
            start = _member_offset(mapped, info)
            nbytes = int(count) * kind.dtype.itemsize
            if nbytes > info.file_size or start + nbytes > len(mapped.map):
                raise _Unsupported("a storage record shorter than its tensor")
            storages[key] = _storage_array(mapped, start, kind.dtype, int(count))
        array = storages[key]
        if array.dtype != kind.dtype:
            raise _Unsupported("one storage read as two dtypes")
        return array

    return _Unpickler(io.BytesIO(data), table, storage).load()


def _member_offset(mapped: MappedFile, info: zipfile.ZipInfo) -> int:
    header = mapped.map[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise _Unsupported("a bad local file header")
    return int(info.header_offset) + _LOCAL_HEADER.size + name_length + extra_length


def _storage_array(mapped: MappedFile, start: int, dtype: np.dtype, count: int) -> np.ndarray:
    array = np.frombuffer(mapped.map, dtype=dtype, count=count, offset=start).view(StoredArray)
    array.mapped = mapped
    return array


def _read_legacy(path: Path, mapped: MappedFile, table: dict[str, Any]) -> Any:
    # Layout: pickles of the magic number, protocol version, sys_info, the object and the list
    # of storage keys; then each storage in that order as an int64 element count and raw bytes.
    # Where the bytes lie is known only after the object, so it is unpickled twice: first over
    # stand-in storages to learn the keys, then over the mapped bytes.
    roots: dict[str, tuple[np.dtype, int]] = {}
    placed: dict[str, np.ndarray] = {}

    def storage(pid: Any) -> np.ndarray:
        if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] not in ("storage", b"storage"):
            raise _Unsupported("a persistent id other than a storage")
        _, kind, root, _location, count, view = pid
        if not isinstance(kind, _StorageType):
            raise _Unsupported("an unknown storage")
        root, count = str(root), int(count)
        if roots.setdefault(root, (kind.dtype, count)) != (kind.dtype, count):
            raise _Unsupported("one storage described twice differently")
        if root in placed:
            array = placed[root]
        else:  # first pass: as many elements as the storage has, and no memory behind them
            zero = np.zeros(1, dtype=kind.dtype)
            array = np.lib.stride_tricks.as_strided(zero, shape=(count,), strides=(0,))
        if view is None:
            return array
        _view_key, offset, size = (int(v) for v in view)
        if offset < 0 or size < 0 or offset + size > count:
            raise _Unsupported("a storage view outside its storage")
        return array[offset : offset + size]

    empty: dict[str, Any] = {}
    with path.open("rb") as fh:
        if _Unpickler(fh, empty, None).load() != scan._LEGACY_MAGIC:
            raise _Unsupported("not a legacy torch file")
        if _Unpickler(fh, empty, None).load() != 1001:
            raise _Unsupported("an unknown legacy protocol version")
        _Unpickler(fh, empty, None).load()  # sys_info: plain values
        start = fh.tell()
        _Unpickler(fh, table, storage).load()
        keys = _Unpickler(fh, empty, None).load()
        offset = fh.tell()
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
            raise _Unsupported("storage keys that do not match the tensors")
        for key in map(str, keys):
            dtype, count = roots[key]
            (stored,) = struct.unpack("<q", mapped.map[offset : offset + 8])
            nbytes = count * dtype.itemsize
            if stored != count or offset + 8 + nbytes > len(mapped.map):
                raise _Unsupported("a storage whose size does not match")
            placed[key] = _storage_array(mapped, offset + 8, dtype, count)
            offset += 8 + nbytes
        fh.seek(start)
        return _Unpickler(fh, table, storage).load()
