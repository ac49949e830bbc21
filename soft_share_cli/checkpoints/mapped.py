"""Read a torch zip or legacy checkpoint without torch: tensors become memory-mapped numpy views.

``ssc analyze`` needs a few thousand coefficients out of a file that may hold hundreds of
megabytes of templates and optimizer state, and importing torch alone costs more than a second.
This reader maps the file, unpickles its structure with a restricted unpickler, and turns every
tensor into a :class:`~soft_share_cli.checkpoints.arrays.StoredArray` viewing the file's bytes:
nothing is
read until it is used, and what is never used (optimizer momentum, the templates under the
coefficients metric) is never read.

It runs only after :func:`soft_share_cli.checkpoints.load.load_checkpoint`'s scan has cleared the
file,
and its unpickler hands out nothing but the tensor/storage rebuilders below, ``OrderedDict``,
numpy's array reconstructors and the inert placeholders: the same set torch's weights-only loader
accepts, minus what this reader does not model. Whatever it does not model (bfloat16, quantized,
sparse or subclassed tensors, compressed zip members, big-endian storage, a truncated file) makes
:func:`read_arrays` return ``None``, and the caller loads the file with torch instead, which then
also words any error.

Memory safety. A tensor here is a view of the mapped file, so a record that points outside what
the file holds would read memory that is not there (SIGSEGV, SIGBUS). Every storage is proven
inside its zip member or legacy block and inside the mapping (whose length is the file's size when
it was mapped), and every tensor's whole byte extent, computed with Python integers from its
offset, sizes and strides, inside its storage, before numpy is asked for the view; numpy's own
buffer check then runs as well. A record that fails is no longer left to torch: it is a
:class:`~soft_share_cli.errors.CheckpointError` naming the record. The legacy format's first pass
(which only learns where the storages lie) builds no views at all.

numpy's array and dtype reconstructors trust their pickled state: a forged ``dtype`` state or
array state can make numpy build objects that crash the process when they are built or touched.
:func:`safe_numpy_globals` replaces them, for this reader and for torch's loader alike, by
checking stand-ins: a dtype is rebuilt through numpy's public constructor and its pickled state
must be exactly the one numpy writes for it; an array's state must be a plain shape, such a dtype
and exactly ``prod(shape) * itemsize`` bytes (or, for object arrays, a list of ``prod(shape)``
items: object arrays are never built from raw bytes). Anything else is
:class:`ForgedNumpyState`.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import contextlib
import io
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from soft_share_cli.checkpoints import scan
from soft_share_cli.checkpoints.arrays import MappedFile, StoredArray
from soft_share_cli.errors import CheckpointError

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
#: Most dimensions a tensor record may have (numpy 2's limit; torch's own is lower in practice).
MAX_NDIM = 64
_DETAIL = 160  # characters of a record's numbers quoted in an error


class _Unsupported(Exception):
    """Something this reader does not model: the caller falls back to torch's loader."""


class _Malformed(Exception):
    """A record that points outside what the file holds: an error, never left to torch."""


class ForgedNumpyState(ValueError):
    """A numpy array, dtype or scalar pickled with arguments or a state numpy never writes."""


class _Sealed:
    """An object of this reader that a pickle's BUILD must not edit."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _Unsupported(f"a pickle that edits a {type(self).__name__}")


class _StorageType(_Sealed):
    """Stands for a ``torch.<X>Storage`` class in a persistent id: only its dtype matters."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)


class _Storage(_Sealed):
    """``count`` elements of ``dtype`` at byte ``start`` of ``buffer`` (the mapping).

    ``buffer`` is ``None`` in the legacy format's first pass, where only the bounds are known.
    A storage is never a tensor: a pickle that hands one around as a value gets this object.
    """

    __slots__ = ("buffer", "count", "dtype", "key", "mapped", "start")

    def __init__(self, key: str, dtype: np.dtype, count: int, mapped: MappedFile | None,
                 start: int) -> None:  # fmt: skip
        self.key, self.dtype, self.count, self.start = key, dtype, count, start
        self.mapped = mapped
        self.buffer = None if mapped is None else mapped.map

    def part(self, offset: int, size: int) -> _Storage:
        """A legacy storage view: ``size`` elements from element ``offset`` (already checked)."""
        start = self.start + offset * self.dtype.itemsize
        return _Storage(self.key, self.dtype, size, self.mapped, start)

    def __repr__(self) -> str:
        return f"<storage {self.key!r}: {self.count} {self.dtype} elements>"


class _Pending(_Sealed):
    """A tensor of the legacy first pass: its bounds are proven, but it has no bytes yet."""

    __slots__ = ()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL else text[: _DETAIL - 3] + "..."


def _exact_int(value: Any) -> bool:
    return type(value) is int


class _Records:
    """Counts the tensor records of one file (1-based, in pickle order) for error messages."""

    def __init__(self) -> None:
        self.seen = 0

    def rebuild(self, *args: Any) -> Any:
        """``torch._utils._rebuild_tensor`` for this file."""
        self.seen += 1
        return _rebuild_tensor(*args, record=self.seen)

    def rebuild_v2(self, *args: Any) -> Any:
        """``torch._utils._rebuild_tensor_v2`` for this file."""
        self.seen += 1
        return _rebuild_tensor_v2(*args, record=self.seen)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *, record: int = 0) -> Any:
    """A view proven inside its storage (a :class:`_Pending` in the legacy first pass)."""
    where = f"tensor record {record}"
    if not isinstance(storage, _Storage):
        raise _Unsupported("a tensor without a storage")
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        raise _Malformed(f"{where} has sizes or strides that are not tuples")
    size, stride = tuple(size), tuple(stride)
    if not all(map(_exact_int, (offset, *size, *stride))):
        raise _Malformed(f"{where} has an offset, size or stride that is not an integer")
    if len(size) != len(stride):
        raise _Malformed(f"{where} has {len(size)} sizes but {len(stride)} strides")
    if len(size) > MAX_NDIM:
        raise _Malformed(f"{where} has {len(size)} dimensions (at most {MAX_NDIM})")
    if min((offset, *size, *stride), default=0) < 0:
        raise _Malformed(
            f"{where} has a negative offset, size or stride "
            f"(offset {_short(offset)}, size {_short(size)}, stride {_short(stride)})"
        )
    # Elements the view reaches, with Python integers (no overflow): all strides are >= 0, so
    # the lowest element is `offset` and the highest `offset + sum((n - 1) * stride)`.
    empty = 0 in size
    reach = sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    needed = offset if empty else offset + 1 + reach
    if needed > storage.count:
        raise _Malformed(
            f"{where} points outside its storage (offset {_short(offset)}, size "
            f"{_short(size)}, stride {_short(stride)}; storage {storage.key!r} holds "
            f"{storage.count} {storage.dtype} elements)"
        )
    if math.prod(size) >= 1 << 63:  # in bounds with zero strides, but numpy cannot count it
        raise _Malformed(f"{where} has size {_short(size)}: more elements than numpy can index")
    if storage.buffer is None:
        return _Pending()
    item = storage.dtype.itemsize
    if empty:
        strides: tuple[int, ...] = (0,) * len(size)
    else:  # a length-1 dimension's stride is never followed: kept only when it is small
        strides = tuple(
            (s if n > 1 or s <= storage.count else 0) * item
            for n, s in zip(size, stride, strict=True)
        )
    # Proven: every byte the view reaches lies in [start, start + needed * item), inside the
    # storage, which lies inside the mapping. numpy checks the buffer's length once more.
    view = np.ndarray(
        size, dtype=storage.dtype, buffer=storage.buffer,
        offset=storage.start + offset * item, strides=strides,
    ).view(StoredArray)  # fmt: skip
    view.mapped = storage.mapped
    return view


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
    *,
    record: int = 0,
) -> Any:
    if metadata:  # e.g. a tensor subclass's or a conjugate view's extra state
        raise _Unsupported("tensor metadata")
    return _rebuild_tensor(storage, offset, size, stride, record=record)


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


# --- numpy reconstructors that check their arguments ---------------------------------------------

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

# A dtype spec as numpy pickles it: a kind and a size (``f4``, ``U5``, ``O8``, ``M8``).
_SPEC = re.compile(r"[biufcSUVOMm][0-9]{0,7}")
_ORDERS = ("<", ">", "|", "=")


class NumpyDType:
    """Stands for ``numpy.dtype`` in a pickle: rebuilt through numpy's public constructor.

    ``dtype`` is the real dtype once built. The BUILD state is compared with the one numpy
    itself writes for that dtype and never handed to ``dtype.__setstate__``. Structured and
    subarray dtypes are not read.
    """

    __slots__ = ("built", "dtype")

    def __new__(cls, *args: Any) -> NumpyDType:
        self = super().__new__(cls)
        self.dtype, self.built = _dtype_from_args(args), False
        return self

    def __init__(self, *args: Any) -> None:
        pass  # everything happened in __new__ (NEWOBJ calls only that)

    def __setstate__(self, state: Any) -> None:
        if self.built:
            raise ForgedNumpyState("a numpy dtype whose state is set twice")
        self.built = True
        self.dtype = _dtype_from_state(self.dtype, state)

    def __repr__(self) -> str:
        return f"dtype({self.dtype.str!r})"


def _dtype_from_args(args: tuple[Any, ...]) -> np.dtype:
    if not 1 <= len(args) <= 3 or not isinstance(args[0], str) or not _SPEC.fullmatch(args[0]):
        raise ForgedNumpyState(f"numpy.dtype called with {_short(args)}, not a simple dtype spec")
    try:
        return np.dtype(args[0])
    except (TypeError, ValueError) as exc:
        raise ForgedNumpyState(f"numpy.dtype({args[0]!r}): {scan.one_line(exc)}") from None


def _dtype_from_state(base: np.dtype, state: Any) -> np.dtype:
    if not isinstance(state, tuple) or len(state) < 2 or state[1] not in _ORDERS:
        raise ForgedNumpyState(f"a numpy dtype state that numpy never writes: {_short(state)}")
    candidate = base
    if base.kind in "Mm" and len(state) == 9 and isinstance(state[8], tuple):
        # datetime64/timedelta64: the unit travels in the state's metadata.
        unit = state[8][-1]
        if isinstance(unit, tuple) and len(unit) == 4 and isinstance(unit[0], bytes):
            text, count = unit[0].decode("ascii", "replace"), unit[1]
            if _exact_int(count) and 0 < count < 1 << 31 and text.isalpha() and len(text) <= 3:
                with contextlib.suppress(TypeError, ValueError):
                    candidate = np.dtype(f"{base.kind}8[{count}{text}]")
    if state[1] in "<>" and candidate.byteorder != "|":
        candidate = candidate.newbyteorder(state[1])
    if not _same(state, candidate.__reduce__()[2]):
        raise ForgedNumpyState(
            f"a numpy dtype {base.str!r} whose pickled state is not numpy's own: {_short(state)}"
        )
    return candidate


def _same(value: Any, expected: Any) -> bool:
    """``value == expected`` for plain nested tuples, never calling a pickled object's ``==``."""
    if type(value) is not type(expected):
        return False
    if type(expected) is tuple:
        return len(value) == len(expected) and all(map(_same, value, expected))
    return bool(value == expected)  # None, bool, int, str, bytes: numpy's own state fields


class _DTypeClass:
    """Stands for a ``numpy.dtypes.<X>DType`` class: calling it gives its (simple) dtype."""

    __slots__ = ("_cls",)

    def __init__(self, cls: type) -> None:
        self._cls = cls

    def __call__(self, *args: Any) -> NumpyDType:
        try:
            real = np.dtype(self._cls(*args))
        except Exception as exc:  # the class's own argument checks
            raise ForgedNumpyState(f"{self._cls.__name__}: {scan.one_line(exc)}") from None
        if real.fields is not None or real.subdtype is not None or real.kind not in "biufcSUVOMm":
            raise ForgedNumpyState(f"a numpy {self._cls.__name__} this reader does not read")
        made = NumpyDType.__new__(NumpyDType, "b1")
        made.dtype = real
        return made

    def __setstate__(self, state: Any) -> None:
        raise ForgedNumpyState("a pickle that edits a numpy dtype class")


def _real_dtype(value: Any) -> np.dtype:
    if not isinstance(value, NumpyDType):
        raise ForgedNumpyState(f"a numpy array or scalar whose dtype is a {type(value).__name__}")
    return value.dtype


class PickledArray(np.ndarray):
    """A numpy array pickled inside a checkpoint (a training recorder's history, say).

    Built only by the checking ``_reconstruct`` below, and filled only by a state that matches
    its dtype and shape exactly. It is a plain ``ndarray`` in every other respect (a subclass
    only so that torch's loader lets BUILD reach the checking ``__setstate__``).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledArray:
        # ndarray(shape, dtype, buffer, offset, strides) straight from a pickle: numpy itself
        # never pickles an array that way, and a forged buffer/offset/strides is the danger.
        raise ForgedNumpyState("a pickle that calls numpy.ndarray(...) directly")

    def __setstate__(self, state: Any) -> None:
        if getattr(self, "_ssc_built", False):
            raise ForgedNumpyState("a numpy array whose state is set twice")
        self._ssc_built = True
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise ForgedNumpyState(f"a numpy array state that numpy never writes: {_short(state)}")
        _, shape, dtype_value, fortran, data = state
        dtype = _real_dtype(dtype_value)
        if not isinstance(shape, tuple) or not all(_exact_int(n) and n >= 0 for n in shape):
            raise ForgedNumpyState(f"a numpy array of shape {_short(shape)}")
        if len(shape) > MAX_NDIM or type(fortran) is not bool:
            raise ForgedNumpyState(f"a numpy array of shape {_short(shape)}")
        count = math.prod(shape)
        if dtype.hasobject:  # objects come as a list of unpickled items, never as raw bytes
            if type(data) is not list or len(data) != count:
                raise ForgedNumpyState(f"a numpy object array of shape {_short(shape)} "
                                       "without exactly one item per element")  # fmt: skip
        elif type(data) not in (bytes, bytearray) or dtype.itemsize == 0:
            raise ForgedNumpyState(f"a numpy {dtype} array without raw bytes")
        elif len(data) != count * dtype.itemsize:
            raise ForgedNumpyState(
                f"a numpy {dtype} array of shape {_short(shape)} with {len(data)} bytes "
                f"(it needs {count * dtype.itemsize})"
            )
        np.ndarray.__setstate__(self, (1, shape, dtype, fortran, data))


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> PickledArray:
    """``numpy.core.multiarray._reconstruct``: the empty array a numpy pickle starts from."""
    if cls is not PickledArray or shape != (0,) or typecode not in (b"b", "b"):
        raise ForgedNumpyState(
            f"numpy's _reconstruct called with {_short((cls, shape, typecode))}, "
            "which numpy never writes"
        )
    return np.ndarray.__new__(PickledArray, (0,), np.int8)


def _scalar(dtype_value: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: one value of a simple dtype from its raw bytes."""
    dtype = _real_dtype(dtype_value)
    if dtype.hasobject or type(data) is not bytes or len(data) != dtype.itemsize or not data:
        raise ForgedNumpyState(
            f"a numpy {dtype} scalar from {type(data).__name__} data, not {dtype.itemsize} bytes"
        )
    return _multiarray.scalar(dtype, data)


def safe_numpy_globals() -> tuple[tuple[Any, str], ...]:
    """numpy's reconstructors under every name :func:`scan.numpy_safe_globals` lists, checking.

    The same names (so the scan's verdict does not change), mapped to the stand-ins above: give
    these, not numpy's own, to any unpickler, torch's weights-only loader included.
    """
    pairs: list[tuple[Any, str]] = []
    for obj, name in scan.numpy_safe_globals():
        leaf = name.rsplit(".", 1)[-1]
        if name == "numpy.ndarray":
            pairs.append((PickledArray, name))
        elif name == "numpy.dtype":
            pairs.append((NumpyDType, name))
        elif leaf == "_reconstruct":
            pairs.append((_reconstruct, name))
        elif leaf == "scalar":
            pairs.append((_scalar, name))
        elif isinstance(obj, type) and issubclass(obj, np.dtype):
            pairs.append((_DTypeClass(obj), name))
        else:  # pragma: no cover - a name numpy_safe_globals gained: refuse it until modelled
            pairs.append((_refused(name), name))
    return tuple(pairs)


def _refused(name: str) -> Any:
    def refuse(*args: Any) -> Any:
        raise ForgedNumpyState(f"{name} is not read")

    return refuse


# --- the unpickler -------------------------------------------------------------------------------


def _globals(placeholders: tuple[str, ...], records: _Records | None = None) -> dict[str, Any]:
    """Dotted name -> what the unpickler gets for it; fresh objects for every file."""
    records = records or _Records()
    table: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor": _Frozen(records.rebuild),
        "torch._utils._rebuild_tensor_v2": _Frozen(records.rebuild_v2),
        "torch._utils._rebuild_parameter": _Frozen(_rebuild_parameter),
        "torch._utils._rebuild_parameter_with_state": _Frozen(_rebuild_parameter),
        "torch.Size": tuple,
        "_codecs.encode": _Frozen(_latin1_encode),
    }
    for name, dtype in _STORAGE_DTYPES.items():
        table[f"torch.{name}"] = _StorageType(dtype)
    for obj, name in safe_numpy_globals():
        table[name] = obj
    for cls, name in scan.make_placeholders(placeholders):
        table[name] = cls
    return table


#: Every global the reader resolves besides placeholders; all of them torch's loader allows too.
MODELLED_GLOBALS = frozenset(_globals(()))


class _Unpickler(pickle.Unpickler):
    """Resolves globals from a fixed table only (the Python docs' "restricting globals").

    Refuses up front a pickle that uses an opcode torch's weights-only unpickler does not read:
    by the opcodes the pickle scan already saw (``opcodes``), or else by reading the stream's
    opcodes and rewinding.
    """

    def __init__(
        self, stream: Any, table: dict[str, Any], storage: Any, opcodes: frozenset[str] | None
    ) -> None:
        start = stream.tell()
        if opcodes is None:
            opcodes = frozenset(op.name for op, _, _ in pickletools.genops(stream))
        unknown = opcodes - _TORCH_OPCODES
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


def read_arrays(
    path: Path,
    file_format: str,
    placeholders: tuple[str, ...],
    opcodes: frozenset[str] | None = None,
) -> Any | None:
    """The unpickled top-level object of a scanned zip or legacy file, tensors as StoredArray.

    ``opcodes``: the opcode names the pickle scan found in the file's pickles (a superset of
    those unpickled here), so that they are not walked a second time; ``None`` walks them.
    Returns ``None`` when the file needs torch's loader (see the module docstring).

    Raises:
        CheckpointError: a tensor or storage record points outside what the file holds, or a
            numpy object in it has a forged state.
    """
    try:
        with path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return None
            mapped = MappedFile(fh.fileno())  # its length is the file's size now
            records = _Records()
            table = _globals(placeholders, records)
            if file_format == "zip":
                return _read_zip(fh, mapped, table, opcodes)
        return _read_legacy(path, mapped, table, opcodes)
    except _Malformed as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except ForgedNumpyState as exc:  # worded as torch's path words it (checkpoint._torch_load)
        raise CheckpointError(f"{path}: unreadable checkpoint ({scan.one_line(exc)})") from None
    except (_Unsupported, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError):
        return None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error):
        return None  # a damaged file: torch's loader will say what is wrong with it
    except (OverflowError, RecursionError, MemoryError):
        return None  # numbers or nesting this reader cannot hold: torch's loader words it


def _count(pid_count: Any, key: str) -> int:
    if not _exact_int(pid_count) or pid_count < 0:
        raise _Malformed(f"storage {key!r} has an element count of {_short(pid_count)}")
    return pid_count


def _read_zip(
    fh: Any, mapped: MappedFile, table: dict[str, Any], opcodes: frozenset[str] | None
) -> Any:
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

    storages: dict[str, _Storage] = {}

    def storage(pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise _Unsupported("a persistent id other than a storage")
        _, kind, key, _location, count = pid
        if not isinstance(kind, _StorageType):
            raise _Unsupported("an untyped or unknown storage")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        count = _count(count, key)
        if key not in storages:
            info = infos.get(f"{prefix}data/{key}")
            if info is None or info.compress_type != zipfile.ZIP_STORED:
                raise _Unsupported("a missing or compressed storage record")
            start = _member_offset(mapped, info)
            nbytes = count * kind.dtype.itemsize
            if nbytes > info.file_size:
                raise _Malformed(
                    f"storage {key!r} claims {count} {kind.dtype} elements ({nbytes} bytes) but "
                    f"its zip member holds {info.file_size} bytes"
                )
            storages[key] = _Storage(key, kind.dtype, count, mapped, start)
        found = storages[key]
        if found.dtype != kind.dtype or found.count != count:
            raise _Unsupported("one storage read as two dtypes or sizes")
        return found

    return _Unpickler(io.BytesIO(data), table, storage, opcodes).load()


def _member_offset(mapped: MappedFile, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start, proven (with its whole length) inside the mapping."""
    size = len(mapped.map)
    where = f"zip member {info.filename!r}"
    if info.header_offset + _LOCAL_HEADER.size > size:
        raise _Malformed(f"{where} has its header at byte {info.header_offset}, past the file")
    header = mapped.map[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise _Unsupported("a bad local file header")
    start = int(info.header_offset) + _LOCAL_HEADER.size + name_length + extra_length
    if start + info.file_size > size:
        raise _Malformed(
            f"{where} claims bytes {start}..{start + info.file_size} of a {size}-byte file"
        )
    return start


def _read_legacy(
    path: Path, mapped: MappedFile, table: dict[str, Any], opcodes: frozenset[str] | None
) -> Any:
    # Layout: pickles of the magic number, protocol version, sys_info, the object and the list
    # of storage keys; then each storage in that order as an int64 element count and raw bytes.
    # Where the bytes lie is known only after the object, so it is unpickled twice: first with
    # storages that have bounds but no bytes (tensors become _Pending, no view is built), then
    # over the mapped bytes.
    roots: dict[str, tuple[np.dtype, int]] = {}
    placed: dict[str, _Storage] = {}

    def storage(pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] not in ("storage", b"storage"):
            raise _Unsupported("a persistent id other than a storage")
        _, kind, root, _location, count, view = pid
        if not isinstance(kind, _StorageType):
            raise _Unsupported("an unknown storage")
        root = str(root)
        count = _count(count, root)
        if roots.setdefault(root, (kind.dtype, count)) != (kind.dtype, count):
            raise _Unsupported("one storage described twice differently")
        found = placed.get(root) or _Storage(root, kind.dtype, count, None, 0)
        if view is None:
            return found
        if not isinstance(view, tuple) or len(view) != 3:
            raise _Malformed(f"storage {root!r} has a view record {_short(view)}")
        _view_key, offset, size = view
        if not (_exact_int(offset) and _exact_int(size)) or offset < 0 or size < 0:
            raise _Malformed(f"storage {root!r} has a view record {_short(view)}")
        if offset + size > count:
            raise _Malformed(
                f"a view of storage {root!r} (elements {offset}..{offset + size}) lies outside "
                f"it ({count} elements)"
            )
        return found.part(offset, size)

    empty: dict[str, Any] = {}
    with path.open("rb") as fh:
        if _Unpickler(fh, empty, None, opcodes).load() != scan._LEGACY_MAGIC:
            raise _Unsupported("not a legacy torch file")
        if _Unpickler(fh, empty, None, opcodes).load() != 1001:
            raise _Unsupported("an unknown legacy protocol version")
        _Unpickler(fh, empty, None, opcodes).load()  # sys_info: plain values
        start = fh.tell()
        _Unpickler(fh, table, storage, opcodes).load()
        keys = _Unpickler(fh, empty, None, opcodes).load()
        offset = fh.tell()
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
            raise _Unsupported("storage keys that do not match the tensors")
        size = len(mapped.map)
        for key in map(str, keys):
            dtype, count = roots[key]
            if offset + 8 > size:
                raise _Unsupported("a truncated file")  # torch's loader words it
            (stored,) = struct.unpack("<q", mapped.map[offset : offset + 8])
            if stored != count:
                raise _Malformed(
                    f"storage {key!r} is stored with {stored} elements, but its record says "
                    f"{count}"
                )
            nbytes = count * dtype.itemsize
            if offset + 8 + nbytes > size:
                raise _Unsupported("a truncated file")
            placed[key] = _Storage(key, dtype, count, mapped, offset + 8)
            offset += 8 + nbytes
        fh.seek(start)
        table = {**table}
        records = _Records()  # numbered afresh: the second pass meets the same records
        table["torch._utils._rebuild_tensor"] = _Frozen(records.rebuild)
        table["torch._utils._rebuild_tensor_v2"] = _Frozen(records.rebuild_v2)
        return _Unpickler(fh, table, storage, opcodes).load()
