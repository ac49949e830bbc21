"""Static inspection of pickles: which globals does a checkpoint reference?

Nothing here executes a pickle. :func:`scan_pickle` walks the opcodes with
:func:`pickletools.genops` and emulates only the unpickler's *stack shape* — enough to know which
strings ``STACK_GLOBAL`` pops (pushed directly or fetched back from the memo) — and
:func:`~soft_share_cli.checkpoints.policy.classify` then sorts the globals found into allowed,
refused and placeholder names.

:func:`scan_zip` and :func:`scan_legacy` apply the scan to the pickles of a torch zip file and
of the legacy format. The scan is a first gate with a readable verdict; torch's own weights-only
unpickler stays the second gate, so a global missed here is still never imported.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickletools
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from soft_share_cli.checkpoints.policy import classify
from soft_share_cli.errors import CheckpointError
from soft_share_cli.limits import MAX_KEYS, MAX_NESTING

# Opcodes that push a string the unpickler could later hand to STACK_GLOBAL.
_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
     "BINUNICODE8"}
)  # fmt: skip
_INT_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_MEMO_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MARK = pickletools.markobject
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PICKLES = 5  # magic, protocol version, sys_info, the object, storage keys
_ZIP_OVERHEAD = 16  # zip members besides storages: data.pkl, version, byteorder, .data/ ...
_CHUNK = 2**16  # bytes _Bounded reads from its stream at a time
_READ_WHOLE = 256 * 2**20  # uncompressed zip members up to this size are scanned from memory


class PickleScanError(ValueError):
    """The bytes are not a well-formed pickle (truncated, unknown opcode, bad stack use)."""


class _Bounded:
    """A stream that never reads past ``end`` (an offset as its ``tell()`` counts).

    pickletools reads an argument with ``read(n)`` for the length the pickle *declares*, and
    Python allocates ``n`` bytes before reading: a forged 2**62-byte string would end in a
    MemoryError. Clamped here, the short read is reported as what it is, a truncated pickle.
    """

    def __init__(self, stream: IO[bytes], end: int) -> None:
        # The position is kept here and the bytes come in chunks: genops reads one opcode at
        # a time, and a stream call per read (plus a tell()) doubled the scan of a legacy file.
        self._stream, self._end, self._pos = stream, end, stream.tell()
        self._buffer, self._at = b"", 0

    def tell(self) -> int:
        return self._pos

    def _fill(self) -> bool:
        """Replace the consumed buffer by the next chunk; False at the end."""
        ahead = self._end - self._pos - (len(self._buffer) - self._at)
        chunk = self._stream.read(min(_CHUNK, ahead)) if ahead > 0 else b""
        self._buffer, self._at = self._buffer[self._at :] + chunk, 0
        return bool(chunk)

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._end - self._pos)
        n = left if n is None or n < 0 else min(n, left)
        if len(self._buffer) - self._at < n and n <= _CHUNK:
            self._fill()
        if len(self._buffer) - self._at >= n:
            data = self._buffer[self._at : self._at + n]
            self._at += n
        else:  # larger than a chunk: what is buffered, then straight from the stream
            data = self._buffer[self._at :] + self._stream.read(n - (len(self._buffer) - self._at))
            self._buffer, self._at = b"", 0
        self._pos += len(data)
        return data

    def readline(self) -> bytes:
        while self._buffer.find(b"\n", self._at) < 0 and self._fill():
            pass  # a line longer than the buffer grows it, never past the end
        stop = self._buffer.find(b"\n", self._at)
        stop = len(self._buffer) if stop < 0 else stop + 1
        data = self._buffer[self._at : stop]
        self._at = stop
        self._pos += len(data)
        return data


class _Unknown:
    """Stack slot holding something other than a string literal."""


_UNKNOWN = _Unknown()


@dataclass(frozen=True)
class PickleScan:
    """What one pickle references, read without running it.

    Attributes:
        globals: dotted names (``module.qualname``) after Python 2 name mapping; names that
            cannot be resolved statically appear as ``<...>`` and are always refused.
        ints: the first few integer literals, used to recognise torch's legacy magic number.
        opcodes: the names of the opcodes it uses.
    """

    globals: frozenset[str]
    ints: tuple[int, ...]
    opcodes: frozenset[str] = frozenset()


def _map_py2_name(module: str, name: str) -> tuple[str, str]:
    # The same mapping torch's weights-only unpickler applies, so our verdict names what it sees.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _dotted(module: str, name: str) -> str:
    module, name = _map_py2_name(module, name)
    return f"{module}.{name}"


#: Opcodes that add items to the container below them and leave that container on the stack.
_FILLING_OPS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})


class PickleTooDeep(PickleScanError):
    """Containers nested deeper than :data:`soft_share_cli.limits.MAX_NESTING`, or more tensor
    storages referenced than :data:`soft_share_cli.limits.MAX_KEYS`: a declared size beyond a
    limit, found before anything is unpickled."""


#: Opcodes by which a torch pickle references a storage record (one per tensor).
_PERSISTENT_OPS = frozenset({"PERSID", "BINPERSID"})


def _too_many_storages(seen: int) -> PickleTooDeep:
    return PickleTooDeep(
        f"references tensor storages more than {seen - 1} times (once per tensor); ssc reads at "
        f"most {MAX_KEYS} tensors (limits.MAX_KEYS)"
    )


def _depth(value: Any) -> int:
    return value if type(value) is int else 0  # a string literal (or _UNKNOWN) is a leaf


class _StackModel:
    """The unpickler's stack, memo and MARK frames, with string literals as the only values.

    Every other value is modelled by its container nesting depth (an int: 0 for scalars and
    empty containers, 1 + the deepest item for what holds items), so that a pickle nesting
    lists, dicts or tuples past :data:`soft_share_cli.limits.MAX_NESTING` is refused before any
    unpickler (or a recursive walk of what it built) meets it. Values fetched back from the
    memo keep the depth they had when stored; the loaded object is checked again after loading.
    """

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.frames: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

    def pop_mark(self) -> None:
        if not self.frames:
            raise PickleScanError("MARK expected on the pickle stack")
        self.stack = self.frames.pop()

    def pop(self, count: int) -> None:
        if len(self.stack) < count:
            raise PickleScanError("pickle stack underflow")
        del self.stack[len(self.stack) - count :]

    def top(self) -> Any:
        if not self.stack:
            raise PickleScanError("pickle stack underflow")
        return self.stack[-1]

    def generic(self, opcode: pickletools.OpcodeInfo) -> None:
        """Apply an opcode's documented stack effect, pushing the depth of what it makes."""
        before = opcode.stack_before
        items = 0  # the deepest item consumed
        if _MARK in before:
            items = max(map(_depth, self.stack), default=0)  # the frame's items (the stackslice)
            self.pop_mark()
            below = self._take(before.index(_MARK))
        else:
            below = self._take(len(before))
        if not opcode.stack_after:  # POP, STOP, ...: nothing is built
            return
        if opcode.name in _FILLING_OPS and below:
            items = max([items, *map(_depth, below[1:])])
            depth = max(_depth(below[0]), items + 1)
        elif below or _MARK in before:
            depth = max([items, *map(_depth, below)]) + 1
        else:
            depth = 0
        if depth > MAX_NESTING:
            raise PickleTooDeep(
                f"containers nested more than {MAX_NESTING} levels deep; ssc reads at most "
                f"{MAX_NESTING} (limits.MAX_NESTING)"
            )
        self.stack.extend(depth for _ in opcode.stack_after)

    def _take(self, count: int) -> list[Any]:
        if len(self.stack) < count:
            raise PickleScanError("pickle stack underflow")
        taken = self.stack[len(self.stack) - count :]
        del self.stack[len(self.stack) - count :]
        return taken


def scan_pickle(stream: IO[bytes] | _Bounded) -> PickleScan:
    """Read one pickle from ``stream`` (up to and including STOP) and list its globals.

    Raises:
        PickleScanError: the pickle is malformed; loading is refused rather than guessed at.
    """
    model = _StackModel()
    found: set[str] = set()
    ints: list[int] = []
    storages = 0
    opcodes: set[str] = set()
    try:
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(cast(IO[bytes], stream))):
            name = opcode.name
            opcodes.add(name)
            if name in _PERSISTENT_OPS:
                # Each tensor references its storage once: past MAX_KEYS the state dict is
                # refused now, not after minutes of scanning and loading (a 200k-key file).
                storages += 1
                if storages > MAX_KEYS:
                    raise _too_many_storages(storages)
            if name in _MEMO_PUT_OPS and isinstance(arg, int) and not 0 <= arg <= count:
                # Picklers number memo slots 0, 1, 2, ...; a far index is forged, and makes
                # CPython's C unpickler allocate a memo that large (9 bytes: 16 GiB).
                raise PickleScanError(f"memo index {arg} is beyond anything stored so far")
            if name in _STRING_OPS:
                model.stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
            elif name == "MARK":
                model.frames.append(model.stack)
                model.stack = []
            elif name == "POP" and not model.stack:
                model.pop_mark()  # the real unpickler pops a MARK when the frame is empty
            elif name in _MEMO_PUT_OPS and isinstance(arg, int):
                model.memo[arg] = model.top()
            elif name == "MEMOIZE":
                model.memo[len(model.memo)] = model.top()
            elif name in _MEMO_GET_OPS:
                if arg not in model.memo:
                    raise PickleScanError(f"memo key {arg} read before it was stored")
                model.stack.append(model.memo[arg])
            elif name == "DUP":
                model.stack.append(model.top())
            elif name == "STACK_GLOBAL":
                qualname, module = model.top(), model.stack[-2] if len(model.stack) > 1 else None
                if isinstance(module, str) and isinstance(qualname, str):
                    found.add(_dotted(module, qualname))
                else:
                    found.add("<STACK_GLOBAL with computed operands>")
                model.generic(opcode)
            else:
                if name in ("GLOBAL", "INST"):
                    module, _, qualname = str(arg).partition(" ")
                    found.add(_dotted(module, qualname))
                elif name.startswith("EXT"):
                    # copyreg's extension registry maps integers to arbitrary globals.
                    found.add(f"<extension registry code {arg}>")
                elif name in _INT_OPS and isinstance(arg, int) and len(ints) < 8:
                    ints.append(arg)
                model.generic(opcode)
    except PickleScanError:
        raise
    except Exception as exc:  # genops raises ValueError on truncation, unknown opcodes, ...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PickleScanError(detail) from None
    return PickleScan(frozenset(found), tuple(ints), frozenset(opcodes))


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message, at most 200 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def scan_zip(path: Path, opcodes: set[str] | None = None) -> set[str]:
    """Globals referenced by the pickles of a torch zip checkpoint.

    ``opcodes``, if given, receives the names of the opcodes those pickles use.
    """
    names: set[str] = set()
    opcodes = set() if opcodes is None else opcodes
    try:
        with zipfile.ZipFile(path) as archive:
            # torch reads <archive>/data.pkl; scanning every pickle member costs little more.
            members = archive.infolist()
            if len(members) > MAX_KEYS + _ZIP_OVERHEAD:
                # torch writes one member per storage (plus a handful of records), and every
                # tensor has a storage: this many members cannot be a state dict ssc reads.
                raise CheckpointError(
                    f"{path}: holds {len(members)} zip members (one per tensor storage); ssc "
                    f"reads at most {MAX_KEYS} tensors (limits.MAX_KEYS)"
                )
            pickles = [m for m in members if m.filename.endswith(".pkl")]
            if not any(m.filename.rsplit("/", 1)[-1] == "data.pkl" for m in pickles):
                raise CheckpointError(
                    f"{path}: a zip file without data.pkl, not a torch checkpoint"
                )
            if any(m.filename.rsplit("/", 1)[-1] == "constants.pkl" for m in pickles):
                raise CheckpointError(  # torch.load's own test for TorchScript archives
                    f"{path}: a TorchScript archive (torch.jit.save), which ssc does not read; "
                    "save the model's state_dict() with torch.save instead"
                )
            for member in pickles:
                if member.compress_type == zipfile.ZIP_STORED and member.file_size <= _READ_WHOLE:
                    # torch stores its members uncompressed: the bytes lie in the file, so
                    # reading them whole costs what they weigh, and the opcodes then come from
                    # memory instead of a Python-level stream (5x faster on deep networks).
                    data = archive.read(member)
                    found = scan_pickle(io.BytesIO(data))
                    names |= found.globals
                    opcodes |= found.opcodes
                    continue
                # Compressed: streamed, not read whole, so a forged size or a compression bomb
                # costs nothing until the opcodes actually need the bytes.
                with archive.open(member) as fh:
                    found = scan_pickle(_Bounded(fh, member.file_size))
                    names |= found.globals
                    opcodes |= found.opcodes
    except PickleTooDeep as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except PickleScanError as exc:
        raise CheckpointError(f"{path}: its data.pkl is not a valid pickle ({exc})") from None
    except CheckpointError:
        raise
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, NotImplementedError (an
        # unknown compression method), RuntimeError (an encrypted member), OSError, ...
        raise CheckpointError(
            f"{path}: truncated or corrupt zip archive ({one_line(exc)})"
        ) from None
    return names


def scan_legacy(path: Path, opcodes: set[str] | None = None) -> set[str]:
    """Globals referenced by the first five pickles of a legacy (pre-1.6) torch file.

    Those are the magic number, protocol version, sys_info, the object and the storage keys;
    raw tensor bytes follow them and are never parsed as pickles. ``opcodes``, if given,
    receives the names of the opcodes those pickles use.
    """
    names: set[str] = set()
    opcodes = set() if opcodes is None else opcodes
    with path.open("rb") as fh:
        bounded = _Bounded(fh, os.fstat(fh.fileno()).st_size)
        for index in range(_LEGACY_PICKLES):
            try:
                found = scan_pickle(bounded)
            except PickleTooDeep as exc:
                raise CheckpointError(f"{path}: {exc}") from None
            except PickleScanError as exc:
                if index == 0:
                    if tarfile.is_tarfile(path):
                        raise CheckpointError(
                            f"{path}: uses torch's pre-0.4 tar format, which ssc does not read"
                        ) from None
                    raise CheckpointError(
                        f"{path}: not a checkpoint (neither a torch zip or legacy file nor "
                        "safetensors)"
                    ) from None
                if classify(names).refused:
                    return names  # report what was already found to be unsafe
                raise CheckpointError(
                    f"{path}: truncated or corrupt legacy checkpoint ({exc})"
                ) from None
            names |= found.globals
            opcodes |= found.opcodes
            if index == 0 and LEGACY_MAGIC not in found.ints:
                # A plain pickle: refuse it as unsafe if it is, else as not a torch file.
                if classify(names).refused:
                    return names
                raise CheckpointError(f"{path}: a pickle file but not a torch checkpoint")
    return names
