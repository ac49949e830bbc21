"""Data sets named by ``--data`` specs, loaded whole into memory and already preprocessed.

Accepted specs (``KIND[:PATH]``, optionally followed by ``?limit=N`` to keep the first N samples):

* ``digits`` — scikit-learn's bundled 8x8 digits (no download), fixed 1437/360 split.
* ``npz:FILE`` — arrays ``x`` (N, C, H, W) float, already preprocessed, and ``y`` (N,) int;
  both splits are the whole file unless it holds ``x_train/y_train/x_test/y_test``.
* ``cifar10:DIR`` / ``cifar100:DIR`` — the standard python-pickle batches (DIR or its parent),
  read without executing pickle code; train = the training batches, test = the test batch.
* ``folder:DIR`` — one sub-folder of same-size images per class (sorted names give the class
  indices; dot-files are skipped); both splits are all of the images.
* ``maze:size=N[,count=M,seed=S]`` / ``prefix-sums:length=N[,count=M,seed=S]`` — generated
  algorithmic tasks with a label per pixel, ``y`` of shape ``(N, H, W)`` (see
  :mod:`soft_share_cli.data.tasks`).

Only regular files are read (a FIFO, device or socket would block or never end), symlinks are
followed once and never recursed into, and every size a file declares (npz headers, CIFAR arrays,
image headers) is checked against the bytes present and against :mod:`soft_share_cli.limits`
(``MAX_SAMPLES``, ``MAX_DATA_BYTES``, ``MAX_IMAGE_PIXELS``, ``MAX_CLASSES``, ``MAX_CHANNELS``,
``MAX_BATCH_BYTES``, ``MAX_INFLATION``) before anything is allocated: beyond one, a
:class:`DataError` names the file and the limit.
"""

from __future__ import annotations

import enum
import importlib
import math
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from soft_share_cli import limits
from soft_share_cli.errors import DataError
from soft_share_cli.files import file_kind, require_regular_file

SPEC_FORMS = (
    "digits, npz:FILE, cifar10:DIR, cifar100:DIR, folder:DIR, maze:size=N, prefix-sums:length=N "
    "(optionally ?limit=N)"
)
SPLITS = ("train", "test")

# Digits pixels are 0..16. Computed once as the mean and (population, ddof=0) std of all pixels
# of the train split below after scaling by 1/16: 0.305383..., 0.376119...; a test recomputes.
DIGITS_MEAN = 0.3054
DIGITS_STD = 0.3761
DIGITS_SPLIT = "sklearn train_test_split(test_size=0.2, stratify=y, random_state=0)"

# The authors' CIFAR normalisation (per channel, on x / 255).
CIFAR_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
}


class DataKind(str, enum.Enum):
    """The kinds of data set a spec can name."""

    DIGITS = "digits"
    NPZ = "npz"
    CIFAR10 = "cifar10"
    CIFAR100 = "cifar100"
    FOLDER = "folder"
    MAZE = "maze"
    PREFIX_SUMS = "prefix-sums"


TASK_KINDS = (DataKind.MAZE, DataKind.PREFIX_SUMS)  # generated; options instead of a path


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` spec; parsing checks the form and that the path exists."""

    kind: DataKind
    path: Path | None  # None for digits and the generated tasks
    options: dict[str, int] = field(default_factory=dict)  # e.g. {"limit": 500}


@dataclass(frozen=True)
class Dataset:
    """An in-memory, already preprocessed split of a data set.

    ``x`` is float32 ``(N, C, H, W)``, ``y`` int64 ``(N,)`` with labels in ``[0, num_classes)``;
    for the per-pixel tasks (maze, prefix-sums) ``y`` is ``(N, H, W)``, one label per pixel.
    """

    name: str  # the spec it came from, e.g. "digits" or "npz:/path/file.npz"
    split: str  # "train" or "test"
    x: Tensor
    y: Tensor
    num_classes: int
    preprocessing: dict[str, Any] = field(default_factory=dict)  # stored in checkpoints

    @property
    def in_channels(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.y.shape[0])


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``spec`` into a :class:`DataSpec`, raising :class:`DataError` if it is unusable."""
    options: dict[str, int] = {}
    # Options only when the tail is exactly "?limit=N", so paths containing "?" still work.
    match = re.fullmatch(r"(.*)\?limit=([0-9]+)", spec.strip())
    if match:
        spec, digits = match.group(1), match.group(2).lstrip("0") or "0"
        # Compared as text first: int() of thousands of digits is refused (or slow).
        limit = int(digits) if len(digits) <= 18 else limits.MAX_SAMPLES + 1
        if limit < 1:
            raise DataError(f"?limit must be at least 1 in data spec {spec!r}")
        if limit > limits.MAX_SAMPLES:
            raise DataError(
                f"?limit={_shorten(match.group(2))} in data spec {spec!r}: ssc reads at most "
                f"{limits.MAX_SAMPLES} samples (limits.MAX_SAMPLES)"
            )
        options["limit"] = limit
    kind_text, sep, path_text = spec.strip().partition(":")
    try:
        kind = DataKind(kind_text.lower())
    except ValueError:
        raise DataError(f"unknown data spec {spec!r}; use one of: {SPEC_FORMS}") from None
    if kind in TASK_KINDS:
        from soft_share_cli.data.tasks import parse_task_spec

        task = parse_task_spec(kind.value, path_text)
        return DataSpec(
            kind, None, {"size": task.size, "count": task.count, "seed": task.seed, **options}
        )
    if kind is DataKind.DIGITS:
        if sep:
            raise DataError(f"'digits' takes no path (got {spec!r}); use one of: {SPEC_FORMS}")
        return DataSpec(kind, None, options)
    if not path_text:
        raise DataError(f"data spec {spec!r} needs a path, e.g. {kind.value}:/path/to/data")
    path = Path(path_text).expanduser()
    if not os.path.lexists(path):
        raise DataError(f"data path not found: {path} (from spec {spec!r})")
    mode = _stat_mode(path)  # follows symlinks; a loop or a dangling link is a DataError
    want_dir = kind is not DataKind.NPZ
    if want_dir != stat.S_ISDIR(mode):
        what = "a directory" if want_dir else "an .npz file"
        raise DataError(f"{kind.value}: expects {what}, got {path} ({file_kind(mode)})")
    if not want_dir:
        require_regular_file(path, "npz file", DataError)
    return DataSpec(kind, path, options)


def _shorten(text: str, keep: int = 24) -> str:
    """``text``, or its first ``keep`` characters and an ellipsis when it is longer."""
    return text if len(text) <= keep else text[:keep] + "..."


def _stat_mode(path: Path) -> int:
    """``os.stat(path).st_mode`` (through symlinks); a :class:`DataError` when it fails.

    Only stats, never opens: a FIFO cannot block here.
    """
    try:
        return os.stat(path).st_mode
    except OSError as exc:  # ELOOP (a symlink loop), a dangling link, EACCES, ENAMETOOLONG
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _limit_error(where: Any, what: str, limit: int, name: str) -> DataError:
    """The one-line error for data beyond ``limits.<name>`` (= ``limit``)."""
    return DataError(f"{where}: {what}; ssc reads at most {limit} (limits.{name})")


def load_data(spec: str, split: str = "test") -> Dataset:
    """Load the ``split`` ("train" or "test") of the data set named by ``spec``.

    See the module docstring for the accepted specs. ``npz`` files without per-split arrays and
    ``folder`` data sets have no split: both splits return all of their samples.
    """
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    parsed = parse_data_spec(spec)
    loaders: dict[DataKind, Callable[[Path | None, str], tuple[np.ndarray, np.ndarray, int, dict]]]
    loaders = {
        DataKind.DIGITS: _load_digits,
        DataKind.NPZ: _load_npz,
        DataKind.CIFAR10: lambda p, s: _load_cifar(p, s, "cifar10"),
        DataKind.CIFAR100: lambda p, s: _load_cifar(p, s, "cifar100"),
        DataKind.FOLDER: _load_folder,
    }
    if parsed.kind in TASK_KINDS:
        x, y, num_classes, preprocessing = _load_task(parsed, split)
    else:
        x, y, num_classes, preprocessing = loaders[parsed.kind](parsed.path, split)
    if "limit" in parsed.options:
        # Copies, so the full arrays are freed rather than kept alive behind a view.
        x, y = x[: parsed.options["limit"]].copy(), y[: parsed.options["limit"]].copy()
        preprocessing["limit"] = parsed.options["limit"]
    if len(y) == 0:
        raise DataError(f"data spec {spec!r} gives no {split} samples")
    return Dataset(
        name=spec,
        split=split,
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(np.asarray(y, dtype=np.int64)),
        num_classes=num_classes,
        preprocessing=preprocessing,
    )


def _load_task(parsed: DataSpec, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """A generated task split (:mod:`soft_share_cli.data.tasks`); inputs 0/1, not normalised."""
    from soft_share_cli.data.tasks import Task, TaskSpec, task_arrays

    o = parsed.options
    spec = TaskSpec(Task(parsed.kind.value), o["size"], o["count"], o["seed"])
    x, y = task_arrays(spec, split)
    return x, y, 2, {"dataset": spec.task.value, **spec.to_dict(), "split": f"generated {split}"}


def _normalise(x: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """(x - mean) / std per channel (axis 1), in place on a fresh float32 ``x`` to spare memory."""
    x -= np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return x


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed digits split as raw sklearn arrays: ``x_train, x_test, y_train, y_test``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)


def _load_digits(_: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    x_train, x_test, y_train, y_test = digits_split()
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    x = (x.astype(np.float32) / 16).reshape(-1, 1, 8, 8)
    prep = {
        "dataset": "digits",
        "scale": 1 / 16,
        "mean": [DIGITS_MEAN],
        "std": [DIGITS_STD],
        "split": DIGITS_SPLIT,
    }
    return _normalise(x, prep["mean"], prep["std"]), y, 10, prep


def _load_npz(path: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    assert path is not None
    split_keys = ("x_train", "y_train", "x_test", "y_test")
    # Every member's .npy header is read and checked (shape and dtype against the member's real
    # size and the limits) before its array is allocated: np.load allocates what a header
    # declares first, so a 500-byte file could ask for terabytes.
    try:
        with _open_regular(path, "npz file") as fh:
            if fh.read(6) == b"\x93NUMPY":  # a .npy holds one bare array
                raise DataError(f"{path}: expected an .npz archive of x and y arrays, got a .npy")
            fh.seek(0)
            with zipfile.ZipFile(fh) as archive:
                members = _npz_members(archive)
                keys = set(members)
                present = [k for k in split_keys if k in keys]
                if present and len(present) < 4:
                    missing = sorted(set(split_keys) - keys)
                    raise DataError(f"{path}: has {present} but lacks {missing}; give all four")
                names = ("x_" + split, "y_" + split) if present else ("x", "y")
                other = ("y_test" if split == "train" else "y_train") if present else None
                for key in names:
                    if key not in keys:
                        raise DataError(f"{path}: no array {key!r} (has {sorted(keys)})")
                wanted = [*names, *([other] if other else [])]
                wanted += ["num_classes"] if "num_classes" in keys else []
                headers = {key: _npy_header(archive, members[key], path, key) for key in wanted}
                _check_npz_headers(headers, names, path)
                arrays = {key: _read_npy(archive, members[key], headers[key], path, key)
                          for key in wanted}  # fmt: skip
    except (ValueError, NotImplementedError, RuntimeError) as exc:  # bad headers, methods
        raise DataError(f"{path}: cannot read .npz ({exc}); save plain numeric arrays") from None
    except (
        OSError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:  # bad zip directory, corrupt deflate streams, truncated members
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None

    x, y = arrays[names[0]], arrays[names[1]]
    all_labels = {names[1]: y, **({other: arrays[other]} if other else {})}
    declared = arrays.get("num_classes")
    for key, labels in all_labels.items():
        if labels.size and labels.min() < 0:
            raise DataError(f"{path}: {key} has negative labels")
        if labels.size and int(labels.max()) >= limits.MAX_CLASSES:
            top = int(labels.max())
            what = f"{key} has label {top} ({top + 1} classes)"
            raise _limit_error(path, what, limits.MAX_CLASSES, "MAX_CLASSES")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: caught next
        x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {names[0]} contains NaN or infinite values")
    num_classes = max((int(a.max()) + 1 for a in all_labels.values() if a.size), default=0)
    if declared is not None:
        if declared.ndim != 0 or declared.dtype.kind not in "iu" or int(declared) < num_classes:
            raise DataError(f"{path}: num_classes must be an integer scalar >= {num_classes}")
        if int(declared) > limits.MAX_CLASSES:
            raise _limit_error(
                path, f"num_classes is {int(declared)}", limits.MAX_CLASSES, "MAX_CLASSES"
            )
        num_classes = int(declared)
    which = f"{split} arrays" if present else "none: train and test are the whole file"
    return x, y, num_classes, {"dataset": "npz", "file": str(path), "split": which}


def _open_regular(path: Path, what: str) -> Any:
    """``path`` opened for reading, after checking (without opening) that it is a regular file."""
    return require_regular_file(path, what, DataError).open("rb")


@dataclass(frozen=True)
class _NpyHeader:
    """What a .npy member of an npz declares, checked against the member's real size."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # bytes of magic and header before the data

    @property
    def count(self) -> int:
        return math.prod(self.shape)


class _CountingReader:
    """A read-only stream that counts the bytes read through it (the .npy header's length)."""

    def __init__(self, stream: Any):
        self.stream, self.consumed = stream, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.consumed += len(data)
        return data


def _npz_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Array name -> member, as ``np.load`` names them (``x.npy`` is ``x``; the last one wins)."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename
        members[name[:-4] if name.endswith(".npy") else name] = info
    return members


def _npy_header(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str
) -> _NpyHeader:
    """Read and check member ``key``'s .npy header; nothing of its data is read or allocated."""
    where = f"{path}: array {key!r}"
    if info.flag_bits & 0x1:
        raise DataError(f"{where} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(
            f"{where} uses zip compression method {info.compress_type}; "
            "np.savez and np.savez_compressed write stored or deflated members"
        )
    if info.file_size > limits.MAX_DATA_BYTES + 2**16:  # a .npy header is at most 64 KiB
        raise _limit_error(
            where, f"declares {info.file_size} bytes", limits.MAX_DATA_BYTES, "MAX_DATA_BYTES"
        )
    ratio_cap = limits.MAX_INFLATION * max(info.compress_size, 1)
    if (
        info.compress_type != zipfile.ZIP_STORED
        and info.file_size > limits.INFLATION_EXEMPT_BYTES
        and info.file_size > ratio_cap
    ):
        raise _limit_error(
            where,
            f"{info.compress_size} compressed bytes inflate to {info.file_size} "
            f"({info.file_size // max(info.compress_size, 1)} times; np.savez, uncompressed, "
            "is not limited)",
            limits.MAX_INFLATION,
            "MAX_INFLATION",
        )
    from numpy.lib import format as npy_format

    with archive.open(info) as raw:
        stream = _CountingReader(raw)
        try:
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
            else:  # (3, 0): utf-8 field names; only numpy's private reader knows it
                from numpy.lib import _format_impl

                shape, fortran, dtype = _format_impl._read_array_header(stream, version)
        except (ValueError, SyntaxError, TypeError, ImportError, AttributeError) as exc:
            raise DataError(f"{where}: not a .npy array ({_shorten(str(exc), 80)})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: cannot read an object array (pickled Python objects); "
                        "save plain numeric arrays")  # fmt: skip
    if dtype.names is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise DataError(f"{where}: dtype {dtype} is not a plain numeric type")
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: negative dimension in shape {shape}")
    header = _NpyHeader(tuple(shape), dtype, bool(fortran), stream.consumed)
    declared = header.count * dtype.itemsize
    if declared > limits.MAX_DATA_BYTES:
        raise _limit_error(
            where,
            f"declares shape {header.shape} of {dtype} ({declared} bytes)",
            limits.MAX_DATA_BYTES,
            "MAX_DATA_BYTES",
        )
    if header.offset + declared != info.file_size:
        raise DataError(
            f"{where}: declares shape {header.shape} of {dtype} ({declared} bytes) but holds "
            f"{info.file_size - header.offset} bytes"
        )
    return header


def _check_npz_headers(headers: dict[str, _NpyHeader], names: tuple[str, str], path: Path) -> None:
    """Shapes and dtypes of the images and labels, from their headers alone (nothing read yet)."""
    x_key, y_key = names
    x = headers[x_key]
    if len(x.shape) != 4:
        raise DataError(f"{path}: {x_key} must be (N, C, H, W), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise DataError(f"{path}: {x_key} must be float (preprocessed), got {x.dtype}")
    n, c, h, w = x.shape
    if min(c, h, w) < 1:
        raise DataError(f"{path}: {x_key} has shape {x.shape}: images need a channel and a pixel")
    _check_images(path, n, c, h * w)
    for key, labels in headers.items():
        if key.startswith("y") and (len(labels.shape) != 1 or labels.dtype.kind not in "iu"):
            raise DataError(f"{path}: {key} must be 1-D integer, got {labels.dtype} {labels.shape}")
    for key, labels in headers.items():
        if key.startswith("y") and labels.count > limits.MAX_SAMPLES:
            raise _limit_error(
                path, f"{key} has {labels.count} labels", limits.MAX_SAMPLES, "MAX_SAMPLES"
            )
    if n != headers[y_key].shape[0]:
        raise DataError(f"{path}: {x_key} has {n} samples but {y_key} has {headers[y_key].count}")
    declared = headers.get("num_classes")
    if declared is not None and (declared.shape != () or declared.dtype.kind not in "iu"):
        raise DataError(
            f"{path}: num_classes must be an integer scalar, got {declared.dtype} {declared.shape}"
        )


def _check_images(where: Any, samples: int, channels: int, pixels: int) -> None:
    """Refuse ``samples`` images of ``channels`` x ``pixels`` beyond the data limits."""
    if samples > limits.MAX_SAMPLES:
        raise _limit_error(where, f"{samples} samples", limits.MAX_SAMPLES, "MAX_SAMPLES")
    if channels > limits.MAX_CHANNELS:
        raise _limit_error(where, f"{channels} channels", limits.MAX_CHANNELS, "MAX_CHANNELS")
    if pixels > limits.MAX_IMAGE_PIXELS:
        raise _limit_error(
            where, f"images of {pixels} pixels", limits.MAX_IMAGE_PIXELS, "MAX_IMAGE_PIXELS"
        )
    size = samples * channels * pixels * 4
    if size > limits.MAX_DATA_BYTES:
        raise _limit_error(
            where,
            f"{samples} images of {channels} x {pixels} would take {size} bytes as float32",
            limits.MAX_DATA_BYTES,
            "MAX_DATA_BYTES",
        )


_CHUNK = 16 * 2**20


def _read_npy(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: _NpyHeader, path: Path, key: str
) -> np.ndarray:
    """The array of a checked member, read in bounded chunks into an array of its declared size.

    The zip reader stops at the member's declared size, so a deflated member that would inflate
    to more (a zip bomb) yields no more than was checked; one that holds less is truncated.
    """
    flat = np.empty(header.count, header.dtype)
    view = memoryview(flat.view(np.uint8).reshape(-1)) if flat.size else memoryview(b"")
    with archive.open(info) as stream:
        stream.read(header.offset)
        filled = 0
        while filled < len(view):
            chunk = stream.read(min(_CHUNK, len(view) - filled))
            if not chunk:
                raise DataError(
                    f"{path}: array {key!r} is truncated ({filled} of {len(view)} bytes)"
                )
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        stream.read(1)  # at the end: lets the zip reader check the member's CRC
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C")


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
                    raise _limit_error(
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
        raise _limit_error(path, f"a batch of {size} bytes", limits.MAX_BATCH_BYTES,
                           "MAX_BATCH_BYTES")  # fmt: skip
    with path.open("rb") as fh:
        try:
            batch = _BatchUnpickler(_BoundedFile(fh, size), path).load()
        except DataError:
            raise
        except Exception as exc:  # truncated or garbled files raise many different types
            message = _shorten(" ".join(str(exc).split()), 200)
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
        raise _limit_error(path, f"{len(data)} images", limits.MAX_SAMPLES, "MAX_SAMPLES")
    if not isinstance(raw_labels, list | tuple | np.ndarray) or len(raw_labels) != len(data):
        raise DataError(f"{path}: labels must be {len(data)} integers")
    try:
        labels = np.asarray(raw_labels)
    except (ValueError, TypeError, OverflowError):  # ragged or nested lists
        raise DataError(f"{path}: labels must be {len(data)} integers") from None
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be {len(data)} integers")
    return data, labels


def _load_cifar(
    path: Path | None, split: str, which: str
) -> tuple[np.ndarray, np.ndarray, int, dict]:
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
    _check_images(path, sum(len(p[0]) for p in parts), 3, 1024)
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
    return _normalise(x, mean, std), y, num_classes, prep


#: The image formats ``folder:`` data may use. Pillow opens many more, some through external
#: programs (EPS runs Ghostscript) or rarely used decoders: a downloaded data set needs none.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def _listing(folder: Path, limit: int, name: str, what: str) -> list[tuple[str, int]]:
    """``(entry name, st_mode)`` of ``folder``'s entries not starting with a dot, sorted.

    Symlinks are followed (a loop or a dangling link is a :class:`DataError` naming it) and
    never recursed into; more than ``limit`` entries (``limits.<name>``) are refused while
    listing, so a folder of millions of entries stops early.
    """
    entries: list[tuple[str, int]] = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.name.startswith("."):
                    continue
                entries.append((entry.name, _stat_mode(folder / entry.name)))
                if len(entries) > limit:
                    cap = getattr(limits, name)
                    raise _limit_error(folder, f"more than {cap} {what}", cap, name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    return sorted(entries)


def _open_image(file: Path) -> Any:
    """``file`` opened with Pillow (header only, nothing decoded), its size checked first."""
    from PIL import Image

    require_regular_file(file, "image file", DataError)
    try:
        with warnings.catch_warnings():  # our own bound is lower than Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(file, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise _limit_error(
            file, "an image of more pixels than Pillow opens", limits.MAX_IMAGE_PIXELS,
            "MAX_IMAGE_PIXELS",
        ) from None  # fmt: skip
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error ...
        raise DataError(f"{file}: not a readable image ({_shorten(str(exc), 200)})") from None
    width, height = img.size
    if width * height > limits.MAX_IMAGE_PIXELS:
        img.close()
        raise _limit_error(
            file, f"an image of {width} x {height} pixels", limits.MAX_IMAGE_PIXELS,
            "MAX_IMAGE_PIXELS",
        )  # fmt: skip
    if width < 1 or height < 1:
        img.close()
        raise DataError(f"{file}: an image of {width} x {height} pixels has no pixels")
    return img


def _load_folder(path: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    assert path is not None
    # Files at the top level are ignored (only sub-folders name classes), as torchvision does;
    # anything there that is neither a folder nor a regular file is refused.
    classes: list[str] = []
    for name, mode in _listing(path, limits.MAX_CLASSES, "MAX_CLASSES", "class folders"):
        if stat.S_ISDIR(mode):
            classes.append(name)
        elif not stat.S_ISREG(mode):
            raise DataError(f"{path / name}: is {file_kind(mode)}, not a class folder or a file")
    if not classes:
        raise DataError(f"{path}: no class sub-folders; expected DIR/<class>/<image>")
    files: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        left = limits.MAX_SAMPLES - len(files)
        entries = _listing(path / name, left, "MAX_SAMPLES", "images in all")
        if not entries:
            raise DataError(f"{path / name}: class folder has no images")
        for entry, mode in entries:
            if stat.S_ISDIR(mode):
                raise DataError(
                    f"{path / name / entry}: nested folders are not supported in folder: data"
                )
            files.append((path / name / entry, index))
    # First pass: headers only (sizes and modes), so nothing is decoded before it is checked.
    size: tuple[int, int] | None = None
    grey = True
    for file, _ in files:
        with _open_image(file) as img:
            if size is None:
                size = img.size
            elif img.size != size:
                raise DataError(f"{file}: size {img.size} differs from {files[0][0]}'s {size}")
            grey = grey and img.mode in ("1", "L")
    assert size is not None
    mode, channels = ("L", 1) if grey else ("RGB", 3)
    _check_images(path, len(files), channels, size[0] * size[1])
    # Second pass: decode each image into its slot of one preallocated array.
    pixels = np.empty((len(files), size[1], size[0], channels), dtype=np.uint8)
    for slot, (file, _) in enumerate(files):
        with _open_image(file) as img:
            if img.size != size:  # changed since the first pass
                raise DataError(f"{file}: size {img.size} differs from {files[0][0]}'s {size}")
            try:
                array = np.asarray(img.convert(mode), dtype=np.uint8)
            except Exception as exc:  # truncated data, decoder errors
                raise DataError(
                    f"{file}: not a readable image ({_shorten(str(exc), 200)})"
                ) from None
        pixels[slot] = array.reshape(size[1], size[0], channels)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32)
    del pixels
    x /= 255
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    std[std == 0] = 1.0  # a constant channel would divide by zero; leave it centred only
    prep = {
        "dataset": "folder",
        "root": str(path),
        "classes": classes,
        "mode": mode,
        "scale": 1 / 255,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "split": "none: train and test are the whole folder",
    }
    labels = np.asarray([index for _, index in files], dtype=np.int64)
    return _normalise(x, mean, std), labels, len(classes), prep
