"""Read a torch zip or legacy checkpoint without torch: tensors become memory-mapped numpy views.

``ssc analyze`` needs a few thousand coefficients out of a file that may hold hundreds of
megabytes of templates and optimizer state, and importing torch alone costs more than a second.
This reader maps the file, unpickles its structure with a restricted unpickler, and turns every
tensor into a :class:`~soft_share_cli.checkpoints.arrays.StoredArray` viewing the file's bytes:
nothing is read until it is used, and what is never used (optimizer momentum, the templates under
the coefficients metric) is never read.

It runs only after :func:`soft_share_cli.checkpoints.load.load_checkpoint`'s scan has cleared the
file, and its unpickler (:mod:`soft_share_cli.checkpoints.tensor_records`) hands out nothing but
tensor/storage rebuilders, ``OrderedDict``, numpy's array reconstructors and the inert
placeholders: the same set torch's weights-only loader accepts, minus what this reader does not
model. Whatever it does not model (bfloat16, quantized, sparse or subclassed tensors, compressed
zip members, big-endian storage, a truncated file) makes :func:`read_arrays` return ``None``, and
the caller loads the file with torch instead, which then also words any error.

Memory safety. A tensor here is a view of the mapped file, so a record that points outside what
the file holds would read memory that is not there (SIGSEGV, SIGBUS). Every storage is proven
here inside its zip member or legacy block and inside the mapping (whose length is the file's size
when it was mapped), and every tensor's whole byte extent, computed with Python integers from its
offset, sizes and strides, inside its storage, before numpy is asked for the view; numpy's own
buffer check then runs as well. A record that fails is no longer left to torch: it is a
:class:`~soft_share_cli.errors.CheckpointError` naming the record. The legacy format's first pass
(which only learns where the storages lie) builds no views at all.

numpy's array and dtype reconstructors trust their pickled state; the checking stand-ins of
:mod:`soft_share_cli.checkpoints.numpy_records` replace them, for this reader and for torch's
loader alike, and a forged state is
:class:`~soft_share_cli.checkpoints.numpy_records.ForgedNumpyState`.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from soft_share_cli.checkpoints.arrays import MappedFile
from soft_share_cli.checkpoints.numpy_records import ForgedNumpyState, exact_int, short_repr
from soft_share_cli.checkpoints.scan import LEGACY_MAGIC, one_line
from soft_share_cli.checkpoints.tensor_records import (
    Frozen,
    Malformed,
    Records,
    RecordUnpickler,
    Storage,
    StorageType,
    Unsupported,
    unpickler_table,
)
from soft_share_cli.errors import CheckpointError

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra length


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
            records = Records()
            table = unpickler_table(placeholders, records)
            if file_format == "zip":
                return _read_zip(fh, mapped, table, opcodes)
        return _read_legacy(path, mapped, table, opcodes)
    except Malformed as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except ForgedNumpyState as exc:  # worded as torch's path words it (load._torch_load)
        raise CheckpointError(f"{path}: unreadable checkpoint ({one_line(exc)})") from None
    except (Unsupported, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError):
        return None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error):
        return None  # a damaged file: torch's loader will say what is wrong with it
    except (OverflowError, RecursionError, MemoryError):
        return None  # numbers or nesting this reader cannot hold: torch's loader words it


def _count(pid_count: Any, key: str) -> int:
    if not exact_int(pid_count) or pid_count < 0:
        raise Malformed(f"storage {key!r} has an element count of {short_repr(pid_count)}")
    return pid_count


def _read_zip(
    fh: Any, mapped: MappedFile, table: dict[str, Any], opcodes: frozenset[str] | None
) -> Any:
    with zipfile.ZipFile(fh) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in infos if name.rsplit("/", 1)[-1] == "data.pkl"]
        if len(pickles) != 1:
            raise Unsupported("not exactly one data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        order = infos.get(f"{prefix}byteorder")
        if order is not None and archive.read(order).strip() != b"little":
            raise Unsupported("big-endian storage")
        data = archive.read(pickles[0])

    storages: dict[str, Storage] = {}

    def storage(pid: Any) -> Storage:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise Unsupported("a persistent id other than a storage")
        _, kind, key, _location, count = pid
        if not isinstance(kind, StorageType):
            raise Unsupported("an untyped or unknown storage")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        count = _count(count, key)
        if key not in storages:
            info = infos.get(f"{prefix}data/{key}")
            if info is None or info.compress_type != zipfile.ZIP_STORED:
                raise Unsupported("a missing or compressed storage record")
            start = _member_offset(mapped, info)
            nbytes = count * kind.dtype.itemsize
            if nbytes > info.file_size:
                raise Malformed(
                    f"storage {key!r} claims {count} {kind.dtype} elements ({nbytes} bytes) but "
                    f"its zip member holds {info.file_size} bytes"
                )
            storages[key] = Storage(key, kind.dtype, count, mapped, start)
        found = storages[key]
        if found.dtype != kind.dtype or found.count != count:
            raise Unsupported("one storage read as two dtypes or sizes")
        return found

    return RecordUnpickler(io.BytesIO(data), table, storage, opcodes).load()


def _member_offset(mapped: MappedFile, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start, proven (with its whole length) inside the mapping."""
    size = len(mapped.map)
    where = f"zip member {info.filename!r}"
    if info.header_offset + _LOCAL_HEADER.size > size:
        raise Malformed(f"{where} has its header at byte {info.header_offset}, past the file")
    header = mapped.map[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise Unsupported("a bad local file header")
    start = int(info.header_offset) + _LOCAL_HEADER.size + name_length + extra_length
    if start + info.file_size > size:
        raise Malformed(
            f"{where} claims bytes {start}..{start + info.file_size} of a {size}-byte file"
        )
    return start


def _read_legacy(
    path: Path, mapped: MappedFile, table: dict[str, Any], opcodes: frozenset[str] | None
) -> Any:
    # Layout: pickles of the magic number, protocol version, sys_info, the object and the list
    # of storage keys; then each storage in that order as an int64 element count and raw bytes.
    # Where the bytes lie is known only after the object, so it is unpickled twice: first with
    # storages that have bounds but no bytes (tensors become Pending, no view is built), then
    # over the mapped bytes.
    roots: dict[str, tuple[np.dtype, int]] = {}
    placed: dict[str, Storage] = {}

    def storage(pid: Any) -> Storage:
        if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] not in ("storage", b"storage"):
            raise Unsupported("a persistent id other than a storage")
        _, kind, root, _location, count, view = pid
        if not isinstance(kind, StorageType):
            raise Unsupported("an unknown storage")
        root = str(root)
        count = _count(count, root)
        if roots.setdefault(root, (kind.dtype, count)) != (kind.dtype, count):
            raise Unsupported("one storage described twice differently")
        found = placed.get(root) or Storage(root, kind.dtype, count, None, 0)
        if view is None:
            return found
        if not isinstance(view, tuple) or len(view) != 3:
            raise Malformed(f"storage {root!r} has a view record {short_repr(view)}")
        _view_key, offset, size = view
        if not (exact_int(offset) and exact_int(size)) or offset < 0 or size < 0:
            raise Malformed(f"storage {root!r} has a view record {short_repr(view)}")
        if offset + size > count:
            raise Malformed(
                f"a view of storage {root!r} (elements {offset}..{offset + size}) lies outside "
                f"it ({count} elements)"
            )
        return found.part(offset, size)

    empty: dict[str, Any] = {}
    with path.open("rb") as fh:
        if RecordUnpickler(fh, empty, None, opcodes).load() != LEGACY_MAGIC:
            raise Unsupported("not a legacy torch file")
        if RecordUnpickler(fh, empty, None, opcodes).load() != 1001:
            raise Unsupported("an unknown legacy protocol version")
        RecordUnpickler(fh, empty, None, opcodes).load()  # sys_info: plain values
        start = fh.tell()
        RecordUnpickler(fh, table, storage, opcodes).load()
        keys = RecordUnpickler(fh, empty, None, opcodes).load()
        offset = fh.tell()
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
            raise Unsupported("storage keys that do not match the tensors")
        size = len(mapped.map)
        for key in map(str, keys):
            dtype, count = roots[key]
            if offset + 8 > size:
                raise Unsupported("a truncated file")  # torch's loader words it
            (stored,) = struct.unpack("<q", mapped.map[offset : offset + 8])
            if stored != count:
                raise Malformed(
                    f"storage {key!r} is stored with {stored} elements, but its record says {count}"
                )
            nbytes = count * dtype.itemsize
            if offset + 8 + nbytes > size:
                raise Unsupported("a truncated file")
            placed[key] = Storage(key, dtype, count, mapped, offset + 8)
            offset += 8 + nbytes
        fh.seek(start)
        table = {**table}
        records = Records()  # numbered afresh: the second pass meets the same records
        table["torch._utils._rebuild_tensor"] = Frozen(records.rebuild)
        table["torch._utils._rebuild_tensor_v2"] = Frozen(records.rebuild_v2)
        return RecordUnpickler(fh, table, storage, opcodes).load()
