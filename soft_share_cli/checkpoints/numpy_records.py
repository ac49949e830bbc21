"""numpy's array, dtype and scalar reconstructors, replaced by stand-ins that check their state.

numpy's own reconstructors trust their pickled state: a forged ``dtype`` state or array state can
make numpy build objects that crash the process when they are built or touched.
:func:`safe_numpy_globals` replaces them, for the mapped reader
(:mod:`soft_share_cli.checkpoints.mapped`) and for torch's loader alike, by checking stand-ins: a
dtype is rebuilt through numpy's public constructor and its pickled state must be exactly the one
numpy writes for it; an array's state must be a plain shape, such a dtype and exactly
``prod(shape) * itemsize`` bytes (or, for object arrays, a list of ``prod(shape)`` items: object
arrays are never built from raw bytes). Anything else is :class:`ForgedNumpyState`.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

import numpy as np

from soft_share_cli.checkpoints.policy import numpy_safe_globals
from soft_share_cli.checkpoints.scan import one_line

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

#: Most dimensions a tensor record may have (numpy 2's limit; torch's own is lower in practice).
MAX_NDIM = 64
_DETAIL = 160  # characters of a record's numbers quoted in an error
# A dtype spec as numpy pickles it: a kind and a size (``f4``, ``U5``, ``O8``, ``M8``).
_SPEC = re.compile(r"[biufcSUVOMm][0-9]{0,7}")
_ORDERS = ("<", ">", "|", "=")


class ForgedNumpyState(ValueError):
    """A numpy array, dtype or scalar pickled with arguments or a state numpy never writes."""


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to what an error message quotes of a record's numbers."""
    text = repr(value)
    return text if len(text) <= _DETAIL else text[: _DETAIL - 3] + "..."


def exact_int(value: Any) -> bool:
    """Whether ``value`` is an ``int`` itself (not a bool, not a subclass a pickle made)."""
    return type(value) is int


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
        raise ForgedNumpyState(
            f"numpy.dtype called with {short_repr(args)}, not a simple dtype spec"
        )
    try:
        return np.dtype(args[0])
    except (TypeError, ValueError) as exc:
        raise ForgedNumpyState(f"numpy.dtype({args[0]!r}): {one_line(exc)}") from None


def _dtype_from_state(base: np.dtype, state: Any) -> np.dtype:
    if not isinstance(state, tuple) or len(state) < 2 or state[1] not in _ORDERS:
        raise ForgedNumpyState(f"a numpy dtype state that numpy never writes: {short_repr(state)}")
    candidate = base
    if base.kind in "Mm" and len(state) == 9 and isinstance(state[8], tuple):
        # datetime64/timedelta64: the unit travels in the state's metadata.
        unit = state[8][-1]
        if isinstance(unit, tuple) and len(unit) == 4 and isinstance(unit[0], bytes):
            text, count = unit[0].decode("ascii", "replace"), unit[1]
            if exact_int(count) and 0 < count < 1 << 31 and text.isalpha() and len(text) <= 3:
                with contextlib.suppress(TypeError, ValueError):
                    candidate = np.dtype(f"{base.kind}8[{count}{text}]")
    if state[1] in "<>" and candidate.byteorder != "|":
        candidate = candidate.newbyteorder(state[1])
    if not _same(state, candidate.__reduce__()[2]):
        raise ForgedNumpyState(
            f"a numpy dtype {base.str!r} whose pickled state is not numpy's own: "
            f"{short_repr(state)}"
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
            raise ForgedNumpyState(f"{self._cls.__name__}: {one_line(exc)}") from None
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
            raise ForgedNumpyState(
                f"a numpy array state that numpy never writes: {short_repr(state)}"
            )
        _, shape, dtype_value, fortran, data = state
        dtype = _real_dtype(dtype_value)
        if not isinstance(shape, tuple) or not all(exact_int(n) and n >= 0 for n in shape):
            raise ForgedNumpyState(f"a numpy array of shape {short_repr(shape)}")
        if len(shape) > MAX_NDIM or type(fortran) is not bool:
            raise ForgedNumpyState(f"a numpy array of shape {short_repr(shape)}")
        count = math.prod(shape)
        if dtype.hasobject:  # objects come as a list of unpickled items, never as raw bytes
            if type(data) is not list or len(data) != count:
                raise ForgedNumpyState(f"a numpy object array of shape {short_repr(shape)} "
                                       "without exactly one item per element")  # fmt: skip
        elif type(data) not in (bytes, bytearray) or dtype.itemsize == 0:
            raise ForgedNumpyState(f"a numpy {dtype} array without raw bytes")
        elif len(data) != count * dtype.itemsize:
            raise ForgedNumpyState(
                f"a numpy {dtype} array of shape {short_repr(shape)} with {len(data)} bytes "
                f"(it needs {count * dtype.itemsize})"
            )
        np.ndarray.__setstate__(self, (1, shape, dtype, fortran, data))


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> PickledArray:
    """``numpy.core.multiarray._reconstruct``: the empty array a numpy pickle starts from."""
    if cls is not PickledArray or shape != (0,) or typecode not in (b"b", "b"):
        raise ForgedNumpyState(
            f"numpy's _reconstruct called with {short_repr((cls, shape, typecode))}, "
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
    """numpy's reconstructors under every name
    :func:`~soft_share_cli.checkpoints.policy.numpy_safe_globals` lists, checking.

    The same names (so the scan's verdict does not change), mapped to the stand-ins above: give
    these, not numpy's own, to any unpickler, torch's weights-only loader included.
    """
    pairs: list[tuple[Any, str]] = []
    for obj, name in numpy_safe_globals():
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
