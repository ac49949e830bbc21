"""``cifar10:DIR`` / ``cifar100:DIR`` data: the python-pickle batches, read without running code.

A restricted, bounded unpickler: only numpy array reconstruction is allowed (never the
``numpy.ndarray`` class itself), every read is bounded by the file, and opcodes are counted
against ``limits.MAX_BATCH_OPCODES``. Train is the training batches, test the test batch.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from soft_share_cli import limits
from soft_share_cli.data.common import check_images, limit_error, shorten
from soft_share_cli.errors import DataError
from soft_share_cli.files import require_regular_file

# The authors' CIFAR normalisation (per channel, on x / 255).
CIFAR_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Pickle protocol 5 (Python 3 default) stores arrays through _frombuffer: plain data too.
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The only use of ``_codecs.encode`` a protocol-2 pickle of bytes makes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode called with unexpected arguments")
    return text.encode("latin1")


class _ArrayClass:
    """Stands for ``numpy.ndarray`` in a batch, where only :func:`_reconstruct_empty` takes it.

    Handing out the real class would let a pickle call ``numpy.ndarray(shape, dtype, buffer,
    offset, strides)``: zero strides over one byte make an array of any declared size, and
    ``ndarray(shape)`` allocates whatever it is told.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"


_ARRAY_CLASS = _ArrayClass()


def _numpy_function(module: str, name: str) -> Any:
    """``module.name`` from numpy, under numpy 2's ``numpy._core`` or numpy 1's ``numpy.core``."""
    submodule = module.rsplit(".", 1)[1]
    try:  # numpy 2 renamed numpy.core to numpy._core; batches may name either
        owner = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        owner = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(owner, name)


def _reconstruct_empty(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` as pickles of arrays call it: an empty array, filled by BUILD."""
    if subtype is not _ARRAY_CLASS or shape != (0,) or dtype not in (b"b", "b"):
        raise pickle.UnpicklingError("numpy _reconstruct called with unexpected arguments")
    return _numpy_function("numpy._core.multiarray", "_reconstruct")(np.ndarray, (0,), b"b")


def _frombuffer(buf: Any, dtype: Any, *args: Any) -> np.ndarray:
    """numpy's ``_frombuffer`` (protocol 5), over bytes the file holds and a plain dtype only."""
    if not isinstance(buf, bytes | bytearray) or not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("numpy _frombuffer called with unexpected arguments")
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy _frombuffer of an object dtype")
    return _numpy_function("numpy._core.numeric", "_frombuffer")(buf, dtype, *args)


def _check_array_state(state: Any) -> None:
    """Refuse an ``ndarray.__setstate__`` state that is not plain data matching its shape."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise pickle.UnpicklingError("unexpected numpy array state")
    shape, dtype, raw = state[-4], state[-3], state[-1]
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("numpy array of objects (or without a dtype)")
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise pickle.UnpicklingError("numpy array with a malformed shape")
    if not isinstance(raw, bytes | bytearray) or len(raw) != math.prod(shape) * dtype.itemsize:
        raise pickle.UnpicklingError("numpy array whose data does not match its shape")


class _BoundedFile:
    """A regular file read by the unpickler: no read may ask for more than the file holds.

    Length prefixes come from the file (``BYTEARRAY8`` allocates and zero-fills its length
    before reading): asking only for what remains keeps a forged length from allocating more.
    """

    def __init__(self, fh: Any, size: int):
        self.fh, self.size = fh, size
        self.readline = fh.readline  # bounded by the file (at most limits.MAX_BATCH_BYTES)
        self._read = fh.read

    @property
    def remaining(self) -> int:
        return max(self.size - self.fh.tell(), 0)

    def read(self, n: int = -1) -> bytes:
        if 0 <= n <= 65536:  # opcodes and short arguments: the fast path
            return self._read(n)
        return self._read(self.remaining if n < 0 else min(n, self.remaining))


class _BatchUnpickler(pickle._Unpickler):
    """Unpickles CIFAR batches; refuses every global beyond numpy array reconstruction.

    The pure-Python unpickler, as torch's weights-only loader uses: the C one sizes its memo by
    the largest index a file names, so nine forged bytes would allocate 16 GiB. Batches hold a
    few large objects, so the speed is the same. Arrays are made only as pickles of arrays make
    them (an empty array, then its data): ``numpy.ndarray`` itself is never handed out, BUILD
    applies only to arrays and dtypes, and an array's state must hold the bytes its shape says.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: _BoundedFile, source: Path):
        # encoding="bytes": the batches are Python 2 pickles whose str keys must stay bytes.
        super().__init__(file, encoding="bytes")
        self.source = source
        self.bounded = file

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"{self.source}: pickle references {module}.{name}; refusing")
        if module == "numpy":
            return _ARRAY_CLASS if name == "ndarray" else np.dtype
        if name == "_reconstruct":
            return _reconstruct_empty
        if name == "_frombuffer":
            return _frombuffer
        return _numpy_function(module, name)

    def load(self) -> Any:
        """``pickle._Unpickler.load``, counting opcodes against ``limits.MAX_BATCH_OPCODES``.

        The pure-Python unpickler takes about a microsecond per opcode: a file of one-byte
        opcodes would otherwise keep it busy for minutes.
        """
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch = self.read, self.dispatch
        budget = limits.MAX_BATCH_OPCODES
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                budget -= 1
                if budget < 0:
                    raise limit_error(
                        self.source,
                        f"more than {limits.MAX_BATCH_OPCODES} pickle opcodes",
                        limits.MAX_BATCH_OPCODES,
                        "MAX_BATCH_OPCODES",
                    )
                dispatch[key[0]](self)
        except pickle._Stop as stop:
            return stop.value

    def load_build(self) -> None:
        state, target = self.stack[-1], self.stack[-2]
        if type(target) is np.ndarray:
            _check_array_state(state)
        elif not isinstance(target, np.dtype):
            raise pickle.UnpicklingError(f"BUILD of a {type(target).__name__}; refusing")
        self.stack.pop()
        target.__setstate__(state)

    def load_bytearray8(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self.bounded.size:  # it may lie in a frame already read: the file bounds it
            raise pickle.UnpicklingError(f"BYTEARRAY8 of {size} bytes is longer than the file")
        data = bytearray(size)
        self.readinto(data)
        self.append(data)

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.lexists(path) or path.is_dir():
        kind = " (a directory)" if path.is_dir() else ""
        raise DataError(f"CIFAR batch not found: {path}{kind}")
    size = require_regular_file(path, "CIFAR batch", DataError).stat().st_size
    if size > limits.MAX_BATCH_BYTES:
        raise limit_error(path, f"a batch of {size} bytes", limits.MAX_BATCH_BYTES,
                           "MAX_BATCH_BYTES")  # fmt: skip
    with path.open("rb") as fh:
        try:
            batch = _BatchUnpickler(_BoundedFile(fh, size), path).load()
        except DataError:
            raise
        except Exception as exc:  # truncated or garbled files raise many different types
            message = shorten(" ".join(str(exc).split()), 200)
            raise DataError(f"{path}: not a readable CIFAR batch ({message})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or label_key not in batch:
        raise DataError(f"{path}: batch lacks 'data' or {label_key.decode()!r}")
    data, raw_labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        raise DataError(f"{path}: 'data' must be uint8 (N, 3072)")
    if len(data) > limits.MAX_SAMPLES:
        raise limit_error(path, f"{len(data)} images", limits.MAX_SAMPLES, "MAX_SAMPLES")
    if not isinstance(raw_labels, list | tuple | np.ndarray) or len(raw_labels) != len(data):
        raise DataError(f"{path}: labels must be {len(data)} integers")
    try:
        labels = np.asarray(raw_labels)
    except (ValueError, TypeError, OverflowError):  # ragged or nested lists
        raise DataError(f"{path}: labels must be {len(data)} integers") from None
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be {len(data)} integers")
    return data, labels


def load_cifar(
    path: Path | None, split: str, which: str
) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """``split`` of the ``which`` ("cifar10" or "cifar100") batches in ``path`` (or below it).

    ``x`` is scaled to [0, 1]; the preprocessing holds the mean and std ``load_data`` applies.
    """
    assert path is not None
    subdir = "cifar-10-batches-py" if which == "cifar10" else "cifar-100-python"
    if (path / subdir).is_dir():
        path = path / subdir
    if which == "cifar10":
        names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        label_key, num_classes = b"labels", 10
    else:
        names, label_key, num_classes = [split], b"fine_labels", 100
    parts = [_read_batch(path / name, label_key) for name in names]
    check_images(path, sum(len(p[0]) for p in parts), 3, 1024)
    data = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}; is this {which}?")
    # Rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 image.
    x = data.reshape(-1, 3, 32, 32).astype(np.float32)
    x /= 255
    mean, std = CIFAR_STATS[which]
    prep = {"dataset": which, "scale": 1 / 255, "mean": list(mean), "std": list(std)}
    prep["split"] = f"official {split} batches"
    return x, y, num_classes, prep  # load_data normalises by prep's mean and std
