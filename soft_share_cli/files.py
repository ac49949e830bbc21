"""What ssc reads and writes on disk: regular input files only, honest outputs.

Every path a command reads (checkpoints, data files, image folders) goes through
:func:`require_regular_file` (or :func:`require_directory`): a FIFO, ``/dev/zero``, a character
device or a socket would otherwise block forever or never end. Symlinks are resolved first, and
the check is made on what the link points to.

Every file a command writes goes through :func:`atomic_write`, and every command checks its
outputs with :func:`check_outputs` before it does any work:

* an output must be (or become) a regular file: a directory, device node, FIFO or socket there,
  or a symlink to one, is refused and never replaced; a dangling or looping symlink is refused;
* a symlink to a regular file is replaced by the new file (the file it pointed to is not
  touched), as a hard-linked output is replaced by a new file (its other names keep the old
  contents): ssc only ever changes the directory entry it was given;
* an output that is the same file as an input of the command (same path, through a symlink, or
  a hard link), or as another output of it, is refused;
* a failed write (disk full, file too large, I/O error), whatever library raised it, is an
  :class:`InputError` naming the file, and the previous file stays as it was;
* the file has the mode the umask gives (``0o666 & ~umask``), and it and its directory are
  fsynced, so a crash right after ssc reports success cannot lose it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from soft_share_cli.errors import InputError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """``"a regular file"``, ``"a directory"``, ``"a FIFO (named pipe)"``, ... for a stat mode."""
    if stat.S_ISREG(mode):
        return "a regular file"
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def require_regular_file(
    path: str | os.PathLike[str], what: str = "file", error: type[InputError] = InputError
) -> Path:
    """``path`` as a :class:`Path` if it names (through any symlinks) an existing regular file.

    Raises ``error`` (an :class:`InputError` subclass, exit 2) with one line otherwise: missing,
    a dangling or looping symlink, or a directory, FIFO, device or socket.
    """
    target = Path(path)
    try:
        info = os.stat(target)  # follows symlinks; never opens, so a FIFO cannot block here
    except FileNotFoundError:
        raise error(f"{target}: no such {what}") from None
    except PermissionError:
        raise error(f"{target}: permission denied") from None
    except OSError as exc:  # ELOOP (a symlink loop), ENAMETOOLONG, ENOTDIR, ...
        raise error(f"{target}: cannot read the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{target}: is {file_kind(info.st_mode)}, not a regular {what}")
    return target


# --- outputs -------------------------------------------------------------------------------------

PathLike = str | os.PathLike[str]


def check_output(path: PathLike) -> Path:
    """``path`` as a :class:`Path` if a regular file can be written there; InputError if not.

    Refused: a directory, device node, FIFO or socket at ``path`` (or a symlink to one), a
    dangling or looping symlink, a missing or unwritable directory. Nothing is opened or created,
    so the check itself cannot block, truncate or replace anything.
    """
    target = Path(path)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:  # ENAMETOOLONG, ENOTDIR (a parent is a file), EACCES, ...
        raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
    if info is not None and stat.S_ISLNK(info.st_mode):
        pointee = os.readlink(target)
        try:
            info = os.stat(target)
        except FileNotFoundError:
            raise InputError(
                f"cannot write {target}: it is a dangling symlink (to {pointee}); remove it or "
                "choose another output"
            ) from None
        except OSError as exc:  # ELOOP
            raise InputError(
                f"cannot write {target}: it is a symlink that cannot be followed "
                f"({exc.strerror or exc})"
            ) from None
        if not stat.S_ISREG(info.st_mode):
            raise InputError(
                f"cannot write {target}: it is a symlink to {file_kind(info.st_mode)} "
                f"({pointee}); ssc writes regular files only"
            )
    elif info is not None and not stat.S_ISREG(info.st_mode):
        raise InputError(
            f"cannot write {target}: it is {file_kind(info.st_mode)}; ssc writes regular files "
            "only and never replaces one"
        )
    parent = target.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {target}: directory {parent} is not writable")
    return target


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """The resolved path and, for an existing file, its ``(st_dev, st_ino)``."""
    resolved = os.path.realpath(path)
    try:
        info = os.stat(path)
    except OSError:
        return resolved, None
    return resolved, (info.st_dev, info.st_ino)


def check_outputs(
    outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None] | None = None
) -> None:
    """Refuse, before any work, outputs that cannot be written or would destroy an input.

    ``outputs`` and ``inputs`` map what the user calls each path (``"-o"``, ``"--graph"``,
    ``"CHECKPOINT"``, ``"--data"``) to the path (None: not given). Each output must pass
    :func:`check_output`; no two outputs may be the same file, and no output may be an input: the
    same path, a symlink to it (or from it) or a hard link (same ``st_dev``/``st_ino``). An input
    that is a directory (``--data folder:DIR``) protects every existing file inside it.

    Raises:
        InputError: naming the output and what it collides with (exit 2).
    """
    named = [(label, Path(path)) for label, path in outputs.items() if path is not None]
    for _, path in named:
        check_output(path)
    seen: list[tuple[str, Path, str, tuple[int, int] | None]] = []
    for label, path in named:
        resolved, ident = _identity(path)
        for other_label, other, other_resolved, other_ident in seen:
            if resolved == other_resolved or (ident is not None and ident == other_ident):
                raise InputError(
                    f"refusing to write {path}: {label} and {other_label} ({other}) name the "
                    "same file"
                )
        seen.append((label, path, resolved, ident))
    for label, source in (inputs or {}).items():
        if source is None or not os.path.lexists(source):  # a missing input fails on its own
            continue
        source_path = Path(source)
        source_resolved, source_ident = _identity(source_path)
        is_dir = os.path.isdir(source_path)
        for out_label, path, resolved, ident in seen:
            same = resolved == source_resolved or (ident is not None and ident == source_ident)
            inside = (
                is_dir
                and ident is not None
                and resolved.startswith(source_resolved.rstrip(os.sep) + os.sep)
            )
            if same or inside:
                where = "is" if same else "is a file inside"
                raise InputError(
                    f"refusing to write {path} ({out_label}): it {where} the input {label} "
                    f"({source}); ssc never overwrites its input, choose another output"
                )


# --- atomic writes -------------------------------------------------------------------------------

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def write_failure(exc: BaseException) -> OSError | None:
    """The OS error behind ``exc`` when it reports a failed write, else None.

    Writers do not all raise :class:`OSError`: torch wraps it in a RuntimeError (the OSError is
    its ``__context__``), matplotlib's PDF backend may raise a zlib error after it, and
    safetensors raises its own ``SafetensorError`` quoting ``(os error N)``.
    """
    current: BaseException | None = exc
    for _ in range(20):  # the chain of causes and contexts, bounded
        if current is None:
            break
        if isinstance(current, OSError):
            return current
        if type(current).__name__ == "SafetensorError":
            found = _OS_ERROR.search(str(current))
            if found:
                number = int(found.group(1))
                return OSError(number, os.strerror(number))
            if "I/O error" in str(current):
                return OSError(errno.EIO, str(current).split("I/O error:")[-1].strip())
        current = current.__cause__ or current.__context__
    return None


def _sync_directory(directory: Path) -> None:
    """fsync ``directory``, so that a rename inside it survives a crash (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # no directory fsync
            raise
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> None:
    """Create ``path`` all at once: ``write(tmp)`` fills a temporary file, then it is renamed.

    The temporary file lives in the target's directory (so ``os.replace`` is atomic) and is
    removed on any failure, Ctrl-C included; an existing file at ``path`` stays untouched until
    the new one is complete. Before the rename the file gets the umask's mode (a writer such as
    safetensors may have replaced it with its own 0600 file) and is fsynced; after it, the
    directory is fsynced. ``path`` must pass :func:`check_output` (checked before the write and
    again before the rename). A failed write (missing directory, no permission, disk full, file
    too large, I/O error), whatever the writer raised for it, becomes :class:`InputError` naming
    the target.
    """
    target = check_output(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    created = False
    try:
        # O_EXCL: never clobber a file we did not create; mode 0o666 lets the umask decide.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 & ~umask, read without os.umask
        finally:
            os.close(fd)
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDWR)  # writable: Windows refuses to fsync a read-only handle
        try:
            os.fsync(fd)  # the rename must not land before the data does
        finally:
            os.close(fd)
        check_output(target)  # nothing became a FIFO, device or directory there meanwhile
        os.replace(tmp, target)
        created = False
        _sync_directory(target.parent)  # and the rename itself must survive a crash
    except BaseException as exc:
        if created:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, InputError):
            raise
        failure = write_failure(exc) if isinstance(exc, Exception) else None
        if failure is not None:
            raise InputError(f"cannot write {target}: {failure.strerror or failure}") from exc
        raise


def save_torch(path: PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`.

    Through a Python file object, not a path: torch's own file writer drops the error of its
    last buffered write, so a disk that fills up at the very end gave a truncated file and no
    error; Python's file object raises it.
    """
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    atomic_write(path, write)


def save_safetensors(
    path: PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` to ``path`` through :func:`atomic_write`.

    safetensors writes its own temporary file (mode 0600) and renames it over ours, and reports
    a full disk as ``SafetensorError``: :func:`atomic_write` restores the mode and reports it.
    """
    import json

    import safetensors.torch

    def write(tmp: Path) -> None:
        safetensors.torch.save_file(dict(tensors), str(tmp), metadata=dict(metadata or {}))
        # One input, one file byte for byte: safetensors writes its metadata map in a random
        # order. The header is re-serialised compactly with the metadata keys sorted and padded
        # with spaces (which the format allows) to its old length; the tensor data is untouched.
        # A header that would grow is left as written.
        with open(tmp, "r+b") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
            meta = header.pop("__metadata__", None)
            ordered = {"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}
            ordered.update(header)
            text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
            if len(text) <= size:
                f.seek(8)
                f.write(text + b" " * (size - len(text)))

    atomic_write(path, write)
