"""Checkpoints whose tensor records point outside what the file holds, built opcode by opcode.

``torch.save`` only writes consistent records, so the files here are assembled by hand: a small
protocol-2 pickle writer (the opcodes torch writes, nothing else) emits
``torch._utils._rebuild_tensor_v2`` calls, persistent storage ids and numpy reconstructors with
whatever arguments a test chooses, and :func:`zip_checkpoint` / :func:`legacy_checkpoint` wrap
the pickle and the raw storage bytes the way torch lays them out. Nothing here imports torch.

Used by ``tests/test_mapped_safety.py``; ``python tests/corpus/memory_cases.py DIR`` writes the
named regression cases for a look by hand (``for f in DIR/*; do ssc info "$f"; done``).
"""

from __future__ import annotations

import io
import struct
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# --- a protocol-2 pickle writer -------------------------------------------------------------------


def integer(value: int) -> bytes:
    """BININT1 / BININT2 / BININT / LONG1, as the pickler picks them."""
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def text(value: str) -> bytes:
    """BINUNICODE."""
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def glob(module: str, name: str) -> bytes:
    """GLOBAL."""
    return f"c{module}\n{name}\n".encode()


def tup(*items: bytes) -> bytes:
    """A tuple of already-pickled items."""
    return b")" if not items else b"(" + b"".join(items) + b"t"


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)``: the arguments tuple, then REDUCE."""
    return func + tup(*args) + b"R"


def build(obj: bytes, state: bytes) -> bytes:
    """BUILD ``obj`` with ``state``."""
    return obj + state + b"b"


def dictionary(items: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A dict of already-pickled keys and values."""
    if not items:
        return b"}"
    return b"}(" + b"".join(k + v for k, v in items) + b"u"


def ints(values: Sequence[int]) -> bytes:
    """A tuple of ints (``torch.Size`` pickles as one)."""
    return tup(*(integer(v) for v in values))


NONE, FALSE, TRUE = b"N", b"\x89", b"\x88"


def raw_bytes(data: bytes) -> bytes:
    """``bytes`` the way a protocol-2 pickle spells them: ``_codecs.encode(latin1-str)``."""
    return call(glob("_codecs", "encode"), text(data.decode("latin1")), text("latin1"))


def pickle_of(body: bytes) -> bytes:
    """PROTO 2, ``body``, STOP."""
    return b"\x80\x02" + body + b"."


# --- tensor and numpy records ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """One ``_rebuild_tensor_v2`` record over storage ``key``, with any arguments."""

    offset: int = 0
    size: tuple[int, ...] = (4,)
    stride: tuple[int, ...] = (1,)
    key: str = "0"
    storage: str = "FloatStorage"
    count: int = 4  # element count of the storage in its persistent id
    view: tuple[str, int, int] | None = None  # legacy storage view: (key, offset, size)
    v1: bool = False  # the old ``_rebuild_tensor(storage, offset, size, stride)``

    def pid(self, legacy: bool) -> bytes:
        """The persistent id of the storage (5 fields in zip files, 6 in legacy files)."""
        fields = [text("storage"), glob("torch", self.storage), text(self.key), text("cpu")]
        fields.append(integer(self.count))
        if legacy:
            view = self.view
            fields.append(NONE if view is None else tup(text(view[0]), *map(integer, view[1:])))
        return tup(*fields) + b"Q"

    def pickled(self, legacy: bool) -> bytes:
        """The REDUCE that rebuilds the tensor."""
        args = [self.pid(legacy), integer(self.offset), ints(self.size), ints(self.stride)]
        if self.v1:
            return call(glob("torch._utils", "_rebuild_tensor"), *args)
        ordered = call(glob("collections", "OrderedDict"))
        return call(glob("torch._utils", "_rebuild_tensor_v2"), *args, FALSE, ordered)


def dtype(spec: str = "f4", state: bytes | None = None) -> bytes:
    """``numpy.dtype(spec, False, True)`` with its BUILD state (numpy's own unless given)."""
    made = call(glob("numpy", "dtype"), text(spec), FALSE, TRUE)
    if state is None:
        order = "|" if spec[1:] in ("1", "") or spec[0] in "bSUVO" else "<"
        flags = 63 if spec.startswith("O") else 0
        fields = (NONE, NONE, NONE, integer(-1), integer(-1), integer(flags))
        state = tup(integer(3), text(order), *fields)
    return build(made, state)


def dtype_state(*fields: bytes) -> bytes:
    """A forged dtype BUILD state tuple."""
    return tup(*fields)


def ndarray(
    shape: Sequence[int] = (3,),
    dtype_pickle: bytes | None = None,
    data: bytes | None = None,
    *,
    version: int = 1,
    fortran: bool = False,
    state: bytes | None = None,
    items: int | None = None,
    module: str = "numpy.core.multiarray",
) -> bytes:
    """A numpy array as numpy pickles it: ``_reconstruct(ndarray, (0,), b'b')`` then BUILD.

    ``items`` gives the data as a list of that many ``None`` (as object arrays pickle it).
    """
    if dtype_pickle is None:
        dtype_pickle = dtype("f4")
    if data is None and items is None:
        data = bytes(4 * min(_product(shape), 1 << 12))
    made = call(glob(module, "_reconstruct"), glob("numpy", "ndarray"), ints((0,)), raw_bytes(b"b"))
    payload = raw_bytes(data or b"") if items is None else b"](" + NONE * items + b"e"
    if state is None:
        state = tup(
            integer(version), ints(shape), dtype_pickle, TRUE if fortran else FALSE, payload
        )
    return build(made, state)


def scalar(dtype_pickle: bytes, data: bytes, module: str = "numpy.core.multiarray") -> bytes:
    """``numpy.core.multiarray.scalar(dtype, bytes)``: a numpy scalar."""
    return call(glob(module, "scalar"), dtype_pickle, raw_bytes(data))


def _product(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


# --- files ----------------------------------------------------------------------------------------


@dataclass
class Storage:
    """The raw bytes of one storage (legacy files also store an int64 element count)."""

    data: bytes = field(repr=False)
    stored_count: int | None = None  # legacy header; the pid's count when None


@dataclass
class Checkpoint:
    """A state dict of tensor records, other top-level entries, and the storages."""

    entries: dict[str, bytes]
    storages: dict[str, Storage] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # legacy: pid count per storage key
    extra: dict[str, bytes] = field(default_factory=dict)

    def body(self) -> bytes:
        """The pickled object: the state dict, or ``{"state_dict": ..., **extra}``."""
        tensors = dictionary([(text(k), v) for k, v in self.entries.items()])
        if not self.extra:
            return tensors
        return dictionary(
            [(text("state_dict"), tensors), *((text(k), v) for k, v in self.extra.items())]
        )


def state(records: dict[str, Tensor], *, legacy: bool, extra: dict[str, bytes] | None = None,
          storages: dict[str, Storage] | None = None) -> Checkpoint:  # fmt: skip
    """A checkpoint of tensor records whose storages hold exactly what the pids claim."""
    entries = {name: t.pickled(legacy) for name, t in records.items()}
    made: dict[str, Storage] = {}
    counts: dict[str, int] = {}
    for t in records.values():
        counts.setdefault(t.key, t.count)
        item = ITEMSIZE.get(t.storage, 4)
        made.setdefault(t.key, Storage(_ramp(max(0, min(t.count, 4096)) * item)))
    made.update(storages or {})
    return Checkpoint(entries, made, counts, dict(extra or {}))


ITEMSIZE = {
    "FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}  # fmt: skip


def _ramp(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def zip_checkpoint(
    path: Path,
    ckpt: Checkpoint,
    *,
    pickle_bytes: bytes | None = None,
    patch: Callable[[bytearray, dict[str, zipfile.ZipInfo]], None] | None = None,
) -> Path:
    """A torch zip checkpoint (stored members, ``archive/`` prefix); ``patch`` edits the bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes or pickle_of(ckpt.body()))
        archive.writestr("archive/byteorder", "little")
        for key, storage in ckpt.storages.items():
            archive.writestr(f"archive/data/{key}", storage.data)
        archive.writestr("archive/version", "3\n")
        infos = {info.filename: info for info in archive.infolist()}
    data = bytearray(out.getvalue())
    if patch is not None:
        patch(data, infos)
    path.write_bytes(bytes(data))
    return path


def legacy_checkpoint(
    path: Path, ckpt: Checkpoint, *, keys: list[str] | None = None, cut: int = 0
) -> Path:
    """A legacy (pre-1.6) torch file: five pickles, then each storage as int64 count + bytes."""
    sys_info = dictionary([
        (text("protocol_version"), integer(1001)),
        (text("little_endian"), TRUE),
        (text("type_sizes"), dictionary([(text("short"), integer(2)), (text("int"), integer(4)),
                                         (text("long"), integer(4))])),
    ])  # fmt: skip
    keys = sorted(ckpt.storages) if keys is None else keys
    parts = [
        pickle_of(integer(LEGACY_MAGIC)),
        pickle_of(integer(1001)),
        pickle_of(sys_info),
        pickle_of(ckpt.body()),
        pickle_of(b"](" + b"".join(text(k) for k in keys) + b"e" if keys else b"]"),
    ]
    for key in keys:
        storage = ckpt.storages.get(key, Storage(b""))
        count = storage.stored_count
        if count is None:
            count = ckpt.counts.get(key, len(storage.data) // 4)
        parts.append(struct.pack("<Q", count % (1 << 64)) + storage.data)  # any int64 bits
    data = b"".join(parts)
    path.write_bytes(data[: len(data) - cut] if cut else data)
    return path


def set_u16(data: bytearray, at: int, value: int) -> None:
    """Overwrite a little-endian uint16 (zip header fields)."""
    data[at : at + 2] = struct.pack("<H", value)


def set_u32(data: bytearray, at: int, value: int) -> None:
    """Overwrite a little-endian uint32 (zip header fields)."""
    data[at : at + 4] = struct.pack("<I", value)


# --- the named regression cases -------------------------------------------------------------------


def _find_central(data: bytes, name: str) -> int:
    encoded = name.encode()
    at = 0
    while True:
        at = data.index(b"PK\x01\x02", at)
        (length,) = struct.unpack_from("<H", data, at + 28)
        if data[at + 46 : at + 46 + length] == encoded:
            return at
        at += 4


def member_patch(name: str, *, size: int | None = None, local_offset: int | None = None,
                 extra: int | None = None) -> Callable[[bytearray, dict[str, zipfile.ZipInfo]], None]:  # fmt: skip  # noqa: E501
    """Edit a member's sizes (central and local), local header offset or local extra length."""

    def patch(data: bytearray, infos: dict[str, zipfile.ZipInfo]) -> None:
        central = _find_central(bytes(data), name)
        local = infos[name].header_offset
        if size is not None:
            set_u32(data, central + 20, size)
            set_u32(data, central + 24, size)
            set_u32(data, local + 18, size)
            set_u32(data, local + 22, size)
        if local_offset is not None:
            set_u32(data, central + 42, local_offset)
        if extra is not None:
            set_u16(data, local + 28, extra)

    return patch


def regression_cases(directory: Path) -> dict[str, Path]:
    """Files that crashed ``ssc info``/``ssc analyze`` by a signal before the reader's checks.

    Each must now end with exit 2 and one line (or, where the file is merely odd but in bounds,
    exit 0).
    """
    directory.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Path] = {}
    huge = 1 << 40

    def tensors(name: str, formats: str = "zl", **records: Tensor) -> None:
        for fmt in formats:
            legacy = fmt == "l"
            ckpt = state(records, legacy=legacy)
            target = directory / f"{'legacy' if legacy else 'zip'}-{name}.pt"
            if legacy:
                cases[target.stem] = legacy_checkpoint(target, ckpt)
            else:
                cases[target.stem] = zip_checkpoint(target, ckpt)

    # storage offsets past the storage
    tensors("offset-past-storage", w=Tensor(offset=1 << 20, size=(4,), stride=(1,), count=4))
    tensors("offset-huge", w=Tensor(offset=huge, size=(4,), stride=(1,), count=4))
    tensors("offset-just-past", w=Tensor(offset=1, size=(4,), stride=(1,), count=4))
    # sizes past the storage
    tensors("size-past-storage", w=Tensor(size=(1 << 20,), stride=(1,), count=4))
    tensors("size-2d-past", w=Tensor(size=(64, 64), stride=(64, 1), count=16))
    # strides that walk out
    tensors("stride-huge", w=Tensor(size=(2, 2), stride=(huge, 1), count=4))
    tensors("stride-past", w=Tensor(size=(4, 4), stride=(4096, 1), count=16))
    tensors("stride-zero-size-huge", w=Tensor(size=(huge, huge), stride=(0, 0), count=4))
    tensors("stride-negative", w=Tensor(offset=3, size=(4,), stride=(-1,), count=4))
    tensors("stride-int64-overflow", w=Tensor(size=(3,), stride=(1 << 62,), count=4))
    tensors("extent-int64-overflow", w=Tensor(size=(1 << 33, 1 << 33), stride=(1 << 31, 1),
                                             count=4))  # fmt: skip
    tensors("size-negative", w=Tensor(size=(-4,), stride=(1,), count=4))
    tensors("ndim-enormous", w=Tensor(size=(1,) * 100, stride=(1,) * 100, count=4))
    tensors("v1-stride-past", w=Tensor(size=(4, 4), stride=(4096, 1), count=16, v1=True))
    # counts that claim more than the file holds
    tensors("count-huge", w=Tensor(size=(4,), stride=(1,), count=1 << 61))
    tensors("count-overflow", w=Tensor(size=(4,), stride=(1,), count=(1 << 63) - 1))
    # a view of a valid-looking storage built from another dtype
    tensors("double-view-of-float", w=Tensor(size=(4,), stride=(1,), count=4),
            v=Tensor(size=(4,), stride=(1,), count=4, storage="DoubleStorage"))  # fmt: skip

    # zip members: sizes, local header offsets and extra lengths that point outside the file
    base = state({"w": Tensor(size=(4,), count=4)}, legacy=False)
    for name, patch in {
        "member-size-short": member_patch("archive/data/0", size=2),
        "member-local-offset-past": member_patch("archive/data/0", local_offset=1 << 30),
        "member-extra-past": member_patch("archive/data/0", extra=65535),
    }.items():
        cases[f"zip-{name}"] = zip_checkpoint(directory / f"zip-{name}.pt", base, patch=patch)

    # legacy: storage headers that disagree with the persistent id, or a truncated file
    ckpt = state({"w": Tensor(size=(4,), count=4)}, legacy=True)
    ckpt.storages["0"].stored_count = 1 << 40
    cases["legacy-stored-count-huge"] = legacy_checkpoint(directory / "legacy-scount.pt", ckpt)
    ckpt = state({"w": Tensor(size=(4,), count=1 << 40)}, legacy=True,
                 storages={"0": Storage(bytes(16), stored_count=1 << 40)})  # fmt: skip
    cases["legacy-both-counts-huge"] = legacy_checkpoint(directory / "legacy-bcount.pt", ckpt)
    ckpt = state({"w": Tensor(size=(4,), count=4, view=("v", 2, 4))}, legacy=True)
    cases["legacy-view-past"] = legacy_checkpoint(directory / "legacy-view.pt", ckpt)
    ckpt = state({"w": Tensor(size=(4,), count=4, view=("v", 1 << 40, 4))}, legacy=True)
    cases["legacy-view-huge"] = legacy_checkpoint(directory / "legacy-view-huge.pt", ckpt)
    ckpt = state({"w": Tensor(size=(1000,), count=1000)}, legacy=True)
    cases["legacy-truncated"] = legacy_checkpoint(directory / "legacy-cut.pt", ckpt, cut=1000)

    # the legacy first pass: a pickle that iterates a tensor before the storages are placed
    huge_rows = Tensor(size=(16, 2), stride=(1 << 36, 1), count=1 << 40)
    iterated = call(glob("collections", "OrderedDict"), huge_rows.pickled(legacy=True))
    ckpt = Checkpoint({"w": iterated}, {"0": Storage(bytes(16), 1 << 40)}, {"0": 1 << 40})
    cases["legacy-first-pass-iterate"] = legacy_checkpoint(directory / "legacy-iter.pt", ckpt)

    # a numpy array handed over as a tensor's storage (sliced by rows, viewed with element strides)
    for legacy in (False, True):
        array = ndarray((2, 1 << 14), dtype("f4"), bytes(8 << 14))
        record = call(
            glob("torch._utils", "_rebuild_tensor_v2"), array, integer(1),
            ints((1, 1, 1, 1, (1 << 15) - 1)), ints((1, 1, 1, 1, 1)), FALSE,
            call(glob("collections", "OrderedDict")),
        )  # fmt: skip
        ckpt = Checkpoint({"w": Tensor(size=(4,), count=4).pickled(legacy), "b.templates": record},
                          {"0": Storage(bytes(16))}, {"0": 4})  # fmt: skip
        target = directory / f"{'legacy' if legacy else 'zip'}-storage-is-numpy.pt"
        cases[target.stem] = (legacy_checkpoint if legacy else zip_checkpoint)(target, ckpt)

    # BUILD on a tensor: numpy would re-point the view of the mapping at the state's data
    for legacy in (False, True):
        state_ = tup(integer(1), ints((1 << 10,)), dtype("f4"), FALSE, raw_bytes(bytes(4 << 10)))
        ckpt = Checkpoint({"w": build(Tensor(size=(4,), count=4).pickled(legacy), state_)},
                          {"0": Storage(bytes(16))}, {"0": 4})  # fmt: skip
        target = directory / f"{'legacy' if legacy else 'zip'}-tensor-build.pt"
        cases[target.stem] = (legacy_checkpoint if legacy else zip_checkpoint)(target, ckpt)

    # numpy reconstructors with forged arguments, beside one valid tensor
    good = Tensor(size=(4,), count=4)
    numpy_cases = {
        "np-object-from-bytes": ndarray((2,), dtype("O8"), bytes(range(16))),
        "np-object-flags-zero": ndarray(
            (2,),
            dtype("O8", tup(integer(3), text("|"), NONE, NONE, NONE, integer(-1), integer(-1),
                            integer(0))),
            bytes(range(16)),
        ),  # fmt: skip
        "np-shape-mismatch": ndarray((1 << 20,), dtype("f4"), bytes(16)),
        "np-shape-huge": ndarray((1 << 62, 1 << 62), dtype("f4"), bytes(16)),
        "np-shape-negative": ndarray((-1,), dtype("f4"), bytes(16)),
        "np-dtype-elsize-forged": ndarray(
            (4,),
            dtype("V8", tup(integer(3), text("|"), NONE, NONE, NONE, integer(1 << 30),
                            integer(1), integer(0))),
            bytes(32),
        ),  # fmt: skip
        "np-dtype-fields-forged": ndarray(
            (2,),
            dtype("V8", tup(
                integer(3), text("|"), NONE, tup(text("a")),
                dictionary([(text("a"), tup(dtype("O8"), integer(0)))]),
                integer(8), integer(1), integer(63),
            )),
            bytes(16),
        ),  # fmt: skip
        "np-dtype-subarray-forged": ndarray(
            (2,),
            dtype("V8", tup(
                integer(3), text("|"), tup(dtype("f4"), ints((1 << 40,))), NONE, NONE,
                integer(8), integer(1), integer(0),
            )),
            bytes(16),
        ),  # fmt: skip
        "np-datetime-state": ndarray((1,), dtype("M8", tup(
            integer(3), text("="), NONE, NONE, NONE, integer(1 << 31), integer(-1), integer(4)
        )), bytes(8)),
        "np-timedelta-state": ndarray((1,), dtype("m8", tup(
            integer(3), text(">"), NONE, NONE, NONE, integer(7), integer(1), integer(1)
        )), bytes(8)),
        "np-void-object-flags": ndarray((), dtype("V8", tup(
            integer(3), text("|"), NONE, NONE, NONE, integer(7), integer(16), integer(63)
        )), items=0),
        "np-scalar-short": scalar(dtype("f8"), b"\x00"),
        "np-scalar-object": scalar(dtype("O8"), bytes(8)),
    }
    # the authors' recorder, whose best accuracy `ssc info` reads: pointers forged as objects
    forged_objects = ndarray(
        (2, 2),
        dtype("O8", tup(integer(3), text("|"), NONE, NONE, NONE, integer(-1), integer(-1),
                        integer(0))),
        bytes(range(100, 132)),
    )  # fmt: skip
    recorder = build(
        glob("utils", "RecorderMeter") + b")\x81",  # NEWOBJ, as protocol 2 pickles an instance
        dictionary([(text("epoch_accuracy"), forged_objects), (text("current_epoch"), integer(2))]),
    )
    for legacy in (False, True):
        ckpt = state({"w": good}, legacy=legacy, extra={
            "epoch": integer(2), "arch": text("swrn"), "recorder": recorder,
        })  # fmt: skip
        target = directory / f"{'legacy' if legacy else 'zip'}-np-recorder-objects.pt"
        cases[target.stem] = (legacy_checkpoint if legacy else zip_checkpoint)(target, ckpt)
    for name, record in numpy_cases.items():
        for legacy in (False, True):
            ckpt = state({"w": good}, legacy=legacy, extra={"np": record})
            target = directory / f"{'legacy' if legacy else 'zip'}-{name}.pt"
            writer = legacy_checkpoint if legacy else zip_checkpoint
            cases[target.stem] = writer(target, ckpt)
    return cases


# --- running ssc on many files, each in a forked child --------------------------------------------

#: Address-space cap of each child: a forged size that gets allocated fails fast instead of paging.
CHILD_MEMORY = 6 << 30


#: A job ``[TORCH_LOAD, path]`` runs ``load_checkpoint(path)`` (torch's loader, as ``ssc eval``,
#: ``fold`` and ``surgery`` read) instead of a command.
TORCH_LOAD = "--torch-load"


def _torch_load(path: str) -> int:
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.errors import SscError

    try:
        load_checkpoint(path)
    except SscError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BaseException as exc:  # what cli.main would call an internal error
        print(f"Error: internal error ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 4
    return 0


def run_children(jobs: list[list[str]], timeout: float) -> list[dict[str, object]]:
    """Run ``ssc ARGS`` for each job in a forked child of this process; how each one ended.

    Returns per job ``{"args", "status", "err"}``: ``status`` is the exit code, ``-N`` for death by
    signal N, or ``"timeout"``; ``err`` is the child's stderr. The parent imports ssc (and torch)
    once, so a child costs a fork rather than an interpreter start.
    """
    import importlib
    import os
    import resource
    import signal
    import tempfile
    import time

    import torch  # noqa: F401  (imported before forking, so children share it)

    from soft_share_cli.cli import main

    for module in ("analysis.analyze", "pipeline.info", "pipeline.network",
                   "checkpoints.load", "checkpoints.mapped", "models.builder", "models.params",
                   "render.tables", "analysis.similarity", "analysis.clustering",
                   "analysis.banks", "folding.kinds"):  # what info and analyze import lazily
        importlib.import_module(f"soft_share_cli.{module}")  # fmt: skip

    results: list[dict[str, object]] = []
    for args in jobs:
        with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
            pid = os.fork()
            if pid == 0:  # the child: never returns
                code = 70
                try:
                    os.dup2(out.fileno(), 1)
                    os.dup2(err.fileno(), 2)
                    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
                    try:
                        if args[0] == TORCH_LOAD:  # the loader every torch command uses
                            code = _torch_load(args[1])
                        else:
                            main(list(args))
                            code = 0
                    except SystemExit as exc:
                        code = exc.code if isinstance(exc.code, int) else 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            deadline = time.monotonic() + timeout
            status: object = "timeout"
            while time.monotonic() < deadline:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(raw)
                    break
                time.sleep(0.01)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            err.seek(0)
            results.append(
                {"args": args, "status": status, "err": err.read().decode("utf-8", "replace")}
            )
    return results


if __name__ == "__main__":  # pragma: no cover - a by-hand look, and the tests' child driver
    if sys.argv[1:2] == ["run"]:  # JSON {"jobs": [[args...], ...], "timeout": s} on stdin
        import json

        request = json.load(sys.stdin)
        print(json.dumps(run_children(request["jobs"], float(request["timeout"]))))
    elif sys.argv[1:2] == ["serve"]:  # the same, one JSON request per line, one answer per line
        import json

        run_children([], 1.0)  # the imports, before the first request
        print("ready", flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            answer = run_children(request["jobs"], float(request["timeout"]))
            print(json.dumps(answer), flush=True)
    else:
        for case, file in regression_cases(Path(sys.argv[1])).items():
            print(case, file)
