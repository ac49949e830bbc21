"""``npz:FILE`` data: every .npy member's header is read and checked before its array exists.

``x`` (N, C, H, W) float, already preprocessed, and ``y`` (N,) int (optionally a ``num_classes``
scalar); both splits are the whole file unless it holds ``x_train/y_train/x_test/y_test``.
``np.load`` allocates what a header declares, so a 500-byte file could ask for terabytes: here
shapes and dtypes are checked against each member's real size and :mod:`soft_share_cli.limits`
first, and the data is read in bounded chunks.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soft_share_cli import limits
from soft_share_cli.data.common import check_images, limit_error, open_regular, shorten
from soft_share_cli.errors import DataError


def load_npz(path: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """``split``'s arrays of the .npz archive ``path`` (the whole file when it has no splits)."""
    assert path is not None
    split_keys = ("x_train", "y_train", "x_test", "y_test")
    # Every member's .npy header is read and checked (shape and dtype against the member's real
    # size and the limits) before its array is allocated: np.load allocates what a header
    # declares first, so a 500-byte file could ask for terabytes.
    try:
        with open_regular(path, "npz file") as fh:
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
            raise limit_error(path, what, limits.MAX_CLASSES, "MAX_CLASSES")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: caught next
        x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {names[0]} contains NaN or infinite values")
    num_classes = max((int(a.max()) + 1 for a in all_labels.values() if a.size), default=0)
    if declared is not None:
        if declared.ndim != 0 or declared.dtype.kind not in "iu" or int(declared) < num_classes:
            raise DataError(f"{path}: num_classes must be an integer scalar >= {num_classes}")
        if int(declared) > limits.MAX_CLASSES:
            raise limit_error(
                path, f"num_classes is {int(declared)}", limits.MAX_CLASSES, "MAX_CLASSES"
            )
        num_classes = int(declared)
    which = f"{split} arrays" if present else "none: train and test are the whole file"
    return x, y, num_classes, {"dataset": "npz", "file": str(path), "split": which}


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
        raise limit_error(
            where, f"declares {info.file_size} bytes", limits.MAX_DATA_BYTES, "MAX_DATA_BYTES"
        )
    ratio_cap = limits.MAX_INFLATION * max(info.compress_size, 1)
    if (
        info.compress_type != zipfile.ZIP_STORED
        and info.file_size > limits.INFLATION_EXEMPT_BYTES
        and info.file_size > ratio_cap
    ):
        raise limit_error(
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
            raise DataError(f"{where}: not a .npy array ({shorten(str(exc), 80)})") from None
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
        raise limit_error(
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
    check_images(path, n, c, h * w)
    for key, labels in headers.items():
        if key.startswith("y") and (len(labels.shape) != 1 or labels.dtype.kind not in "iu"):
            raise DataError(f"{path}: {key} must be 1-D integer, got {labels.dtype} {labels.shape}")
    for key, labels in headers.items():
        if key.startswith("y") and labels.count > limits.MAX_SAMPLES:
            raise limit_error(
                path, f"{key} has {labels.count} labels", limits.MAX_SAMPLES, "MAX_SAMPLES"
            )
    if n != headers[y_key].shape[0]:
        raise DataError(f"{path}: {x_key} has {n} samples but {y_key} has {headers[y_key].count}")
    declared = headers.get("num_classes")
    if declared is not None and (declared.shape != () or declared.dtype.kind not in "iu"):
        raise DataError(
            f"{path}: num_classes must be an integer scalar, got {declared.dtype} {declared.shape}"
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
