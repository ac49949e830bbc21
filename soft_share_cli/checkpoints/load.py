"""Load any checkpoint ssc meets without running code from it; save our own atomically.

Every command reads weights through :func:`load_checkpoint`. It accepts torch zip files, the
legacy pre-1.6 torch format and ``.safetensors``, and unwraps the containers met in practice:

* ``"ssc"``: our own files, ``{"format": "ssc-checkpoint", "format_version": 1, "arch",
  "arch_kwargs", "state_dict", "metadata"}`` (see :func:`save_checkpoint`);
* ``"authors-training"``: the authors' ``{"epoch", "arch", "state_dict", "recorder",
  "optimizer"}``, whose ``recorder`` is a pickled ``utils.RecorderMeter``;
* ``"ssc-folded"``: a folded network (safetensors; see
  :mod:`soft_share_cli.checkpoints.folded_header`);
* ``"state_dict"``: a bare dict of tensors;
* ``"wrapped:<key>"``: a dict holding one under the first of
  :data:`~soft_share_cli.checkpoints.containers.WRAPPER_KEYS` that does, nested up to
  :data:`~soft_share_cli.checkpoints.containers.MAX_WRAPPER_DEPTH` deep (``<key>`` is dotted
  then: ``model.state_dict``), or under the entry ``key=`` names.

Safety comes in two gates. First the pickle is scanned without being run
(:mod:`soft_share_cli.checkpoints.scan`) and refused (:mod:`soft_share_cli.checkpoints.policy`)
if it names the standard library, unlisted torch/numpy globals or code-running packages; user
classes such as ``utils.RecorderMeter`` are swapped for inert placeholders. Then
``torch.load(weights_only=True)`` does the loading, so even a global the scan missed is never
imported.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soft_share_cli import limits
from soft_share_cli.checkpoints.containers import (
    as_state_dict,
    best_val_accuracy,
    check_plain,
    find_wrapped,
    select_key,
    strip_prefixes,
    typed_header,
)
from soft_share_cli.checkpoints.folded_header import FORMAT_NAME as FOLDED_FORMAT
from soft_share_cli.checkpoints.folded_header import folded_metadata
from soft_share_cli.checkpoints.policy import classify, make_placeholders
from soft_share_cli.checkpoints.scan import one_line, scan_legacy, scan_zip
from soft_share_cli.errors import CheckpointError, UnsafeCheckpointError
from soft_share_cli.files import require_regular_file, save_torch

if TYPE_CHECKING:  # torch is imported where tensors are made: analysis can do without it
    from torch import Tensor

FORMAT_NAME = "ssc-checkpoint"
FORMAT_VERSION = 1

_OURS_KEYS = ("format", "format_version", "arch", "arch_kwargs", "state_dict", "metadata")
_AUTHORS_KEYS = ("epoch", "arch", "state_dict")
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read by :func:`load_checkpoint`; only ``state_dict`` holds tensors.

    ``state_dict`` is a plain dict (an ``OrderedDict``'s ``_metadata`` attribute is not kept);
    tensors that shared storage in the file still share it. ``extras`` holds the other top-level
    entries of the file (e.g. ``recorder``, ``optimizer``) and is never used for anything.
    ``other_state_dicts``: the dotted keys of the file's other state dicts, not used (an EMA copy
    next to ``model``, say), any of which ``key=`` can choose instead.
    """

    path: Path
    format: str  # "zip" | "legacy" | "safetensors"
    container: str  # "ssc" | "ssc-folded" | "authors-training" | "state_dict" | "wrapped:<key>"
    state_dict: dict[str, Tensor]
    stripped_prefix: str | None
    arch: str | None
    arch_kwargs: dict[str, Any] | None
    metadata: dict[str, Any]
    placeholders: tuple[str, ...]
    extras: dict[str, Any]
    other_state_dicts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no tensors, extras by name only)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "container": self.container,
            "num_tensors": len(self.state_dict),
            "stripped_prefix": self.stripped_prefix,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "metadata": self.metadata,
            "placeholders": list(self.placeholders),
            "extras": sorted(self.extras),
        }


def load_checkpoint(
    path: str | os.PathLike[str], *, mmap: bool = True, arrays: bool = False, key: str | None = None
) -> LoadedCheckpoint:
    """Read a checkpoint without executing anything it contains.

    Args:
        path: a torch zip file, a legacy (pre-1.6) torch file or a ``.safetensors`` file.
        mmap: memory-map the tensors of zip files instead of reading them (legacy files cannot
            be mapped by torch and are always read).
        arrays: read zip and legacy files without torch: every tensor becomes a read-only
            :class:`~soft_share_cli.checkpoints.arrays.StoredArray` over the mapped file, read only
            where
            used (what the analysis wants). Files that need torch's own loader (bfloat16,
            quantized, sparse tensors, ...) and safetensors files still give torch tensors.
        key: the entry of the file's top-level dict that holds the state dict, dotted for
            nesting (``model.state_dict``, ``ema``); by default the first of the
            :data:`~soft_share_cli.checkpoints.containers.WRAPPER_KEYS` that holds one. The
            ``state_dict`` of an ssc or authors' checkpoint keeps its header.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or holds no tensor state dict
            (under ``key``, when given: a missing key names the keys present).
        UnsafeCheckpointError: the file references code that could run or touch the system.
    """
    path = Path(path)
    head, size = _read_head(path)
    opcodes: set[str] = set()  # what the scan saw, so the reader need not walk them again
    if head.startswith(_ZIP_MAGIC):
        file_format, names = "zip", scan_zip(path, opcodes)
    elif path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        if key is not None:
            raise CheckpointError(
                f"{path}: --key {key!r} given, but a safetensors file holds its tensors at the "
                "top level, under no key"
            )
        return _load_safetensors(path)
    else:
        file_format, names = "legacy", scan_legacy(path, opcodes)
    from soft_share_cli.checkpoints.mapped import read_arrays
    from soft_share_cli.checkpoints.tensor_records import MODELLED_GLOBALS

    # Judged without importing torch when the file names only what the reader models.
    modelled = classify(names, allowed=MODELLED_GLOBALS)
    verdict = modelled if not modelled.refused else classify(names)
    if verdict.refused:
        raise UnsafeCheckpointError(_refusal(path, verdict.refused))
    if not modelled.refused:
        # The torch-free reader proves every storage inside the file and every view inside its
        # storage, and names the forged record; torch's loader would allocate what a record
        # declares first and fail with an allocator message (or a garbled size check).
        obj = read_arrays(path, file_format, verdict.placeholders, frozenset(opcodes))
        if arrays and obj is not None:
            return _interpret(path, file_format, obj, verdict.placeholders, key)
    from soft_share_cli.checkpoints.numpy_records import (
        safe_numpy_globals,  # checking numpy reconstructors
    )

    safe = [*safe_numpy_globals(), *make_placeholders(verdict.placeholders)]
    obj = _torch_load(path, safe, mmap=mmap and file_format == "zip")
    return _interpret(path, file_format, obj, verdict.placeholders, key)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any],
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, Any],
) -> None:
    """Write an ssc checkpoint (torch zip format, loadable with ``weights_only=True``) atomically.

    ``arch_kwargs`` and ``metadata`` may hold only plain Python values (str, int, float, bool,
    None, lists/tuples and str-keyed dicts of those), so the file never needs a custom global.
    Tensors are saved detached; tensors sharing storage are written once and share it on load.
    """
    from torch import Tensor

    if not isinstance(arch, str) or not arch:
        raise TypeError(f"arch must be a non-empty string, got {arch!r}")
    check_plain(dict(arch_kwargs), "arch_kwargs")
    check_plain(dict(metadata), "metadata")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"state_dict entries must map str to Tensor; offending keys: {bad[:5]}")
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": {key: tensor.detach() for key, tensor in state_dict.items()},
        "metadata": dict(metadata),
    }
    save_torch(path, payload)  # atomically, and a failed write is an InputError


# --- reading -------------------------------------------------------------------------------------


def _read_head(path: Path) -> tuple[bytes, int]:
    # A FIFO, /dev/zero or a socket would block or never end: only regular files are opened.
    require_regular_file(path, "file", CheckpointError)
    try:
        with path.open("rb") as fh:
            head, size = fh.read(16), os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    return head, size


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    # 8-byte little-endian header length, then the JSON header itself.
    header_len = int.from_bytes(head[:8], "little")
    return len(head) > 8 and head[8:9] == b"{" and 0 < header_len <= size - 8


def _refusal(path: Path, refused: tuple[str, ...]) -> str:
    listed = ", ".join(refused[:6]) + (f" and {len(refused) - 6} more" if len(refused) > 6 else "")
    hint = ""
    if any(name.startswith("torch.nn.") for name in refused):
        hint = " (a whole pickled model? ssc reads state dicts: save model.state_dict())"
    return (
        f"refusing to load {path}: it references {listed}, which can execute code or touch the "
        f"system{hint}; ssc never runs code from a checkpoint"
    )


def _torch_load(path: Path, safe_globals: list[Any], *, mmap: bool) -> Any:
    import torch

    try:
        with warnings.catch_warnings():
            # Protocol and TypedStorage deprecation warnings are noise to a CLI user.
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(safe_globals):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = _weights_only_detail(text)
        if "Weights only load failed" not in text:
            raise CheckpointError(f"{path}: corrupt pickle data ({detail})") from None
        if detail.startswith("Unsupported operand"):
            raise CheckpointError(
                f"{path}: its pickle uses opcodes torch's safe loader cannot read ({detail}); "
                "it was probably written with a pickle protocol other than 2"
            ) from None
        raise UnsafeCheckpointError(
            f"refusing to load {path}: torch's weights-only loader rejected it ({detail}); "
            "ssc never runs code from a checkpoint"
        ) from None
    except MemoryError:
        raise CheckpointError(f"{path}: too large to load into memory") from None
    except Exception as exc:  # RuntimeError, EOFError, KeyError, ... from a damaged file
        raise CheckpointError(f"{path}: unreadable checkpoint ({one_line(exc)})") from None


def _weights_only_detail(text: str) -> str:
    # torch wraps the unpickler's own one-line reason in several lines of advice.
    _, marker, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if marker else text).splitlines() if line.strip()]
    return lines[0] if lines else "no detail"


def _load_safetensors(path: Path) -> LoadedCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            header = dict(reader.metadata() or {})
            keys = list(reader.keys())  # noqa: SIM118
            limits.check_keys(len(keys), str(path))  # before a tensor object per key is made
            state_dict = {key: reader.get_tensor(key) for key in keys}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({one_line(exc)})"
        ) from None
    if not state_dict:
        raise CheckpointError(f"{path}: the safetensors file holds no tensors")
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    metadata: dict[str, Any] = {}
    container = "state_dict"
    if "ssc" in header:
        try:
            info = limits.loads_json(header.pop("ssc"), f"{path}: its 'ssc' metadata")
        except ValueError:
            raise CheckpointError(f"{path}: its 'ssc' metadata is not valid JSON") from None
        if not isinstance(info, dict):
            raise CheckpointError(f"{path}: its 'ssc' metadata is not a JSON object")
        arch, arch_kwargs, metadata = typed_header(path, info)
        container = "ssc"
    elif header.get("format") == FOLDED_FORMAT:
        container, metadata = FOLDED_FORMAT, folded_metadata(path, header)  # program and report
    state_dict, stripped = strip_prefixes(state_dict)
    return LoadedCheckpoint(
        path, "safetensors", container, state_dict, stripped, arch, arch_kwargs, metadata, (),
        dict(header),
    )  # fmt: skip


def _interpret(
    path: Path, file_format: str, obj: Any, placeholders: tuple[str, ...], key: str | None
) -> LoadedCheckpoint:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    metadata: dict[str, Any] = {}
    consumed: tuple[str, ...]
    others: tuple[str, ...] = ()
    authors = all(k in obj for k in _AUTHORS_KEYS) and as_state_dict(obj["state_dict"]) is not None
    ours = obj.get("format") == FORMAT_NAME
    if key is not None and not (key == "state_dict" and (ours or authors)):
        top, state_dict, others = select_key(path, obj, key)
        container, consumed = f"wrapped:{key}", (top,)
    elif ours:
        if obj.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: ssc checkpoint format version {obj.get('format_version')!r}; "
                f"this ssc reads version {FORMAT_VERSION}"
            )
        container, consumed, state_dict = "ssc", _OURS_KEYS, as_state_dict(obj.get("state_dict"))
        if state_dict is None:
            raise CheckpointError(f"{path}: an ssc checkpoint without a tensor state_dict")
        arch, arch_kwargs, metadata = typed_header(path, obj)
    elif authors:
        container, consumed = "authors-training", _AUTHORS_KEYS
        state_dict = as_state_dict(obj["state_dict"])
        arch = obj["arch"] if isinstance(obj["arch"], str) else None
        metadata = {"epoch": obj["epoch"]}
        best = best_val_accuracy(obj.get("recorder"))
        if best is not None:
            metadata["best_val_accuracy"] = best
    elif (state_dict := as_state_dict(obj)) is not None:
        container, consumed = "state_dict", tuple(obj)
    else:
        name, top, state_dict, others = find_wrapped(path, obj)
        container, consumed = f"wrapped:{name}", (top,)
    assert state_dict is not None
    limits.check_keys(len(state_dict), str(path))
    limits.check_nesting(obj, f"{path}: its pickled data")  # the scan bounds it; memo tricks
    state_dict, stripped = strip_prefixes(state_dict)
    used = set(consumed)  # a set: a state dict's own keys are consumed, 50k of them
    extras = {k: v for k, v in obj.items() if k not in used}
    return LoadedCheckpoint(
        path, file_format, container, state_dict, stripped, arch, arch_kwargs, metadata,
        placeholders, extras, others,
    )  # fmt: skip
