"""The records of a torch pickle, rebuilt without torch, and the unpickler that reads them.

:func:`unpickler_table` is everything :class:`RecordUnpickler` resolves a global to: the tensor and
storage rebuilders below, ``OrderedDict``, numpy's checking reconstructors
(:mod:`soft_share_cli.checkpoints.numpy_records`) and the inert placeholders; the same set torch's
weights-only loader accepts, minus what the mapped reader does not model. A tensor record becomes a
:class:`~soft_share_cli.checkpoints.arrays.StoredArray` viewing the mapped file only once its whole
byte extent, computed with Python integers from its offset, sizes and strides, is proven inside
its :class:`Storage` (``_rebuild_tensor``); a record that fails is :class:`Malformed`, and
whatever is not modelled is :class:`Unsupported` (the caller then falls back to torch's loader).
Where storages lie in the file is :mod:`soft_share_cli.checkpoints.mapped`'s part.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import math
import pickle
import pickletools
from typing import Any

import numpy as np

from soft_share_cli.checkpoints.arrays import MappedFile, StoredArray
from soft_share_cli.checkpoints.numpy_records import (
    MAX_NDIM,
    exact_int,
    safe_numpy_globals,
    short_repr,
)
from soft_share_cli.checkpoints.policy import make_placeholders

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
# The opcodes torch's weights-only unpickler reads (torch 2.13): a file using any other (protocol
# 0/1 or 4/5 pickles) is left to it, so that both paths accept and refuse the same files.
_TORCH_OPCODES = frozenset(
    {"APPEND", "APPENDS", "BINFLOAT", "BINGET", "BININT", "BININT1", "BININT2", "BINPERSID",
     "BINPUT", "BINUNICODE", "BUILD", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE",
     "GLOBAL", "LONG1", "LONG_BINGET", "LONG_BINPUT", "MARK", "NEWFALSE", "NEWOBJ", "NEWTRUE",
     "NONE", "PROTO", "REDUCE", "SETITEM", "SETITEMS", "SHORT_BINSTRING", "STOP", "TUPLE",
     "TUPLE1", "TUPLE2", "TUPLE3"}
)  # fmt: skip


class Unsupported(Exception):
    """Something this reader does not model: the caller falls back to torch's loader."""


class Malformed(Exception):
    """A record that points outside what the file holds: an error, never left to torch."""


class _Sealed:
    """An object of this reader that a pickle's BUILD must not edit."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise Unsupported(f"a pickle that edits a {type(self).__name__}")


class StorageType(_Sealed):
    """Stands for a ``torch.<X>Storage`` class in a persistent id: only its dtype matters."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)


class Storage(_Sealed):
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

    def part(self, offset: int, size: int) -> Storage:
        """A legacy storage view: ``size`` elements from element ``offset`` (already checked)."""
        start = self.start + offset * self.dtype.itemsize
        return Storage(self.key, self.dtype, size, self.mapped, start)

    def __repr__(self) -> str:
        return f"<storage {self.key!r}: {self.count} {self.dtype} elements>"


class Pending(_Sealed):
    """A tensor of the legacy first pass: its bounds are proven, but it has no bytes yet."""

    __slots__ = ()


class Records:
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
    """A view proven inside its storage (a :class:`Pending` in the legacy first pass)."""
    where = f"tensor record {record}"
    if not isinstance(storage, Storage):
        raise Unsupported("a tensor without a storage")
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        raise Malformed(f"{where} has sizes or strides that are not tuples")
    size, stride = tuple(size), tuple(stride)
    if not all(map(exact_int, (offset, *size, *stride))):
        raise Malformed(f"{where} has an offset, size or stride that is not an integer")
    if len(size) != len(stride):
        raise Malformed(f"{where} has {len(size)} sizes but {len(stride)} strides")
    if len(size) > MAX_NDIM:
        raise Malformed(f"{where} has {len(size)} dimensions (at most {MAX_NDIM})")
    if min((offset, *size, *stride), default=0) < 0:
        raise Malformed(
            f"{where} has a negative offset, size or stride "
            f"(offset {short_repr(offset)}, size {short_repr(size)}, stride {short_repr(stride)})"
        )
    # Elements the view reaches, with Python integers (no overflow): all strides are >= 0, so
    # the lowest element is `offset` and the highest `offset + sum((n - 1) * stride)`.
    empty = 0 in size
    reach = sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    needed = offset if empty else offset + 1 + reach
    if needed > storage.count:
        raise Malformed(
            f"{where} points outside its storage (offset {short_repr(offset)}, size "
            f"{short_repr(size)}, stride {short_repr(stride)}; storage {storage.key!r} holds "
            f"{storage.count} {storage.dtype} elements)"
        )
    if math.prod(size) >= 1 << 63:  # in bounds with zero strides, but numpy cannot count it
        raise Malformed(f"{where} has size {short_repr(size)}: more elements than numpy can index")
    if storage.buffer is None:
        return Pending()
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
        raise Unsupported("tensor metadata")
    return _rebuild_tensor(storage, offset, size, stride, record=record)


def _rebuild_parameter(data: Any, requires_grad: Any = False, *args: Any) -> Any:
    return data  # a Parameter in a state dict is its tensor


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # numpy arrays pickled with protocol 2 spell their bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Unsupported("_codecs.encode beyond latin-1 bytes")
    return codecs.encode(text, "latin1", errors)


class Frozen:
    """A function the pickle may call but not edit: BUILD on it fails instead of altering it."""

    __slots__ = ("_function",)
    _function: Any

    def __init__(self, function: Any) -> None:
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name: str, value: Any) -> None:
        raise Unsupported("a pickle that edits a rebuild function")

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)


# --- the unpickler -------------------------------------------------------------------------------


def unpickler_table(
    placeholders: tuple[str, ...], records: Records | None = None
) -> dict[str, Any]:
    """Dotted name -> what the unpickler gets for it; fresh objects for every file."""
    records = records or Records()
    table: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor": Frozen(records.rebuild),
        "torch._utils._rebuild_tensor_v2": Frozen(records.rebuild_v2),
        "torch._utils._rebuild_parameter": Frozen(_rebuild_parameter),
        "torch._utils._rebuild_parameter_with_state": Frozen(_rebuild_parameter),
        "torch.Size": tuple,
        "_codecs.encode": Frozen(_latin1_encode),
    }
    for name, dtype in _STORAGE_DTYPES.items():
        table[f"torch.{name}"] = StorageType(dtype)
    for obj, name in safe_numpy_globals():
        table[name] = obj
    for cls, name in make_placeholders(placeholders):
        table[name] = cls
    return table


#: Every global the reader resolves besides placeholders; all of them torch's loader allows too.
MODELLED_GLOBALS = frozenset(unpickler_table(()))


class RecordUnpickler(pickle.Unpickler):
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
            raise Unsupported(f"opcodes torch's safe loader does not read: {sorted(unknown)}")
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
            raise Unsupported(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        return self._storage(pid)
