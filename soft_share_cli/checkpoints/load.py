"""Load any checkpoint ssc meets without running code from it; save our own atomically.

Every command reads weights through :func:`load_checkpoint`. It accepts torch zip files, the
legacy pre-1.6 torch format and ``.safetensors``, and unwraps the containers met in practice:

* ``"ssc"``: our own files, ``{"format": "ssc-checkpoint", "format_version": 1, "arch",
  "arch_kwargs", "state_dict", "metadata"}`` (see :func:`save_checkpoint`);
* ``"authors-training"``: the authors' ``{"epoch", "arch", "state_dict", "recorder",
  "optimizer"}``, whose ``recorder`` is a pickled ``utils.RecorderMeter``;
* ``"ssc-folded"``: a folded network (safetensors; see :mod:`soft_share_cli.folding.swrn`);
* ``"state_dict"``: a bare dict of tensors;
* ``"wrapped:<key>"``: a dict holding one under the first of :data:`WRAPPER_KEYS` that does.

Safety comes in two gates. First the pickle is scanned without being run
(:mod:`soft_share_cli.checkpoints.scan`) and refused if it names the standard library, unlisted
torch/numpy globals or code-running packages; user classes such as ``utils.RecorderMeter`` are
swapped for inert placeholders. Then ``torch.load(weights_only=True)`` does the loading, so even a
global the scan missed is never imported.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soft_share_cli import limits
from soft_share_cli.checkpoints import scan
from soft_share_cli.checkpoints.arrays import is_tensor
from soft_share_cli.errors import CheckpointError, UnsafeCheckpointError
from soft_share_cli.files import atomic_write as atomic_write  # re-exported: moved to files
from soft_share_cli.files import require_regular_file, save_torch

if TYPE_CHECKING:  # torch is imported where tensors are made: analysis can do without it
    from torch import Tensor

FORMAT_NAME = "ssc-checkpoint"
FORMAT_VERSION = 1
#: Keys under which a wrapped state dict is looked for, in this order (timm's order, plus ``net``).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
#: Prefixes added by DataParallel/DDP and torch.compile; stripped only when every key has one.
STRIPPABLE_PREFIXES = ("module.", "_orig_mod.")

_OURS_KEYS = ("format", "format_version", "arch", "arch_kwargs", "state_dict", "metadata")
_AUTHORS_KEYS = ("epoch", "arch", "state_dict")
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read by :func:`load_checkpoint`; only ``state_dict`` holds tensors.

    ``state_dict`` is a plain dict (an ``OrderedDict``'s ``_metadata`` attribute is not kept);
    tensors that shared storage in the file still share it. ``extras`` holds the other top-level
    entries of the file (e.g. ``recorder``, ``optimizer``) and is never used for anything.
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
    path: str | os.PathLike[str], *, mmap: bool = True, arrays: bool = False
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

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or holds no tensor state dict.
        UnsafeCheckpointError: the file references code that could run or touch the system.
    """
    path = Path(path)
    head, size = _read_head(path)
    opcodes: set[str] = set()  # what the scan saw, so the reader need not walk them again
    if head.startswith(_ZIP_MAGIC):
        file_format, names = "zip", scan.scan_zip(path, opcodes)
    elif path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        return _load_safetensors(path)
    else:
        file_format, names = "legacy", scan.scan_legacy(path, opcodes)
    from soft_share_cli.checkpoints.mapped import MODELLED_GLOBALS, read_arrays

    # Judged without importing torch when the file names only what the reader models.
    modelled = scan.classify(names, allowed=MODELLED_GLOBALS)
    verdict = modelled if not modelled.refused else scan.classify(names)
    if verdict.refused:
        raise UnsafeCheckpointError(_refusal(path, verdict.refused))
    if not modelled.refused:
        # The torch-free reader proves every storage inside the file and every view inside its
        # storage, and names the forged record; torch's loader would allocate what a record
        # declares first and fail with an allocator message (or a garbled size check).
        obj = read_arrays(path, file_format, verdict.placeholders, frozenset(opcodes))
        if arrays and obj is not None:
            return _interpret(path, file_format, obj, verdict.placeholders)
    from soft_share_cli.checkpoints.mapped import (
        safe_numpy_globals,  # checking numpy reconstructors
    )

    safe = [*safe_numpy_globals(), *scan.make_placeholders(verdict.placeholders)]
    obj = _torch_load(path, safe, mmap=mmap and file_format == "zip")
    return _interpret(path, file_format, obj, verdict.placeholders)


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
    _check_plain(dict(arch_kwargs), "arch_kwargs")
    _check_plain(dict(metadata), "metadata")
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
        raise CheckpointError(f"{path}: unreadable checkpoint ({scan.one_line(exc)})") from None


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
            f"{path}: not a readable safetensors file ({scan.one_line(exc)})"
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
        arch, arch_kwargs, metadata = _typed_header(path, info)
        container = "ssc"
    elif header.get("format") == "ssc-folded":
        from soft_share_cli.folding.swrn import (
            folded_metadata,  # lazy: folded.py builds on this module
        )

        container, metadata = "ssc-folded", folded_metadata(path, header)  # program and report
    state_dict, stripped = _strip_prefixes(state_dict)
    return LoadedCheckpoint(
        path, "safetensors", container, state_dict, stripped, arch, arch_kwargs, metadata, (),
        dict(header),
    )  # fmt: skip


def _typed_header(
    path: Path, info: Mapping[str, Any]
) -> tuple[str | None, dict[str, Any] | None, dict[str, Any]]:
    arch, arch_kwargs, metadata = info.get("arch"), info.get("arch_kwargs"), info.get("metadata")
    if arch is not None and not isinstance(arch, str):
        raise CheckpointError(f"{path}: 'arch' should be a string, got {type(arch).__name__}")
    for name, value in (("arch_kwargs", arch_kwargs), ("metadata", metadata)):
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{path}: '{name}' should be a dict, got {type(value).__name__}")
        limits.check_nesting(value, f"{path}: its '{name}'")
    return arch, arch_kwargs, metadata or {}


def _interpret(
    path: Path, file_format: str, obj: Any, placeholders: tuple[str, ...]
) -> LoadedCheckpoint:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    metadata: dict[str, Any] = {}
    consumed: tuple[str, ...]
    if obj.get("format") == FORMAT_NAME:
        if obj.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: ssc checkpoint format version {obj.get('format_version')!r}; "
                f"this ssc reads version {FORMAT_VERSION}"
            )
        container, consumed, state_dict = "ssc", _OURS_KEYS, _as_state_dict(obj.get("state_dict"))
        if state_dict is None:
            raise CheckpointError(f"{path}: an ssc checkpoint without a tensor state_dict")
        arch, arch_kwargs, metadata = _typed_header(path, obj)
    elif all(k in obj for k in _AUTHORS_KEYS) and _as_state_dict(obj["state_dict"]) is not None:
        container, consumed = "authors-training", _AUTHORS_KEYS
        state_dict = _as_state_dict(obj["state_dict"])
        arch = obj["arch"] if isinstance(obj["arch"], str) else None
        metadata = {"epoch": obj["epoch"]}
        best = _best_val_accuracy(obj.get("recorder"))
        if best is not None:
            metadata["best_val_accuracy"] = best
    elif (state_dict := _as_state_dict(obj)) is not None:
        container, consumed = "state_dict", tuple(obj)
    else:
        key = next((k for k in WRAPPER_KEYS if _as_state_dict(obj.get(k)) is not None), None)
        if key is None:
            raise CheckpointError(_no_state_dict(path, obj))
        container, consumed, state_dict = f"wrapped:{key}", (key,), _as_state_dict(obj[key])
    assert state_dict is not None
    limits.check_keys(len(state_dict), str(path))
    limits.check_nesting(obj, f"{path}: its pickled data")  # the scan bounds it; memo tricks
    state_dict, stripped = _strip_prefixes(state_dict)
    used = set(consumed)  # a set: a state dict's own keys are consumed, 50k of them
    extras = {k: v for k, v in obj.items() if k not in used}
    return LoadedCheckpoint(
        path, file_format, container, state_dict, stripped, arch, arch_kwargs, metadata,
        placeholders, extras,
    )  # fmt: skip


def _as_state_dict(value: Any) -> dict[str, Tensor] | None:
    """``value`` as a plain dict when it is a non-empty str -> Tensor mapping, else None.

    Tensors are torch tensors, or :class:`~soft_share_cli.checkpoints.arrays.StoredArray` for files
    read
    with ``arrays=True`` (plain numpy arrays are not tensors).
    """
    if not isinstance(value, Mapping) or not value:
        return None
    if all(isinstance(k, str) and is_tensor(v) for k, v in value.items()):
        return dict(value)  # same tensor objects: no copies, shared storage kept
    return None


def _no_state_dict(path: Path, obj: Mapping[Any, Any]) -> str:
    keys = [repr(k) for k in list(obj)[:10]] + (["..."] if len(obj) > 10 else [])
    return (
        f"{path}: no tensor state dict found; top-level keys: {', '.join(keys) or '(none)'}. "
        f"ssc looks for a dict of tensors, or one under {', '.join(map(repr, WRAPPER_KEYS))}"
    )


def _strip_prefixes(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
    stripped = ""
    changed = True
    while changed:  # repeatedly, for stacks such as "_orig_mod.module."
        changed = False
        for prefix in STRIPPABLE_PREFIXES:
            if all(k.startswith(prefix) and len(k) > len(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                stripped += prefix
                changed = True
    return state_dict, stripped or None


def _best_val_accuracy(recorder: Any) -> float | None:
    """Best validation accuracy in the authors' RecorderMeter placeholder, when it has one."""
    if not isinstance(recorder, scan.InertObject):
        return None
    accuracy, epochs = vars(recorder).get("epoch_accuracy"), vars(recorder).get("current_epoch")
    if not isinstance(accuracy, np.ndarray) or accuracy.ndim != 2 or accuracy.shape[1] < 2:
        return None
    if not isinstance(epochs, int | np.integer) or epochs <= 0:
        return None
    best = float(accuracy[: int(epochs), 1].max())  # column 1 holds validation accuracy
    return best if math.isfinite(best) else None


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is built from plain Python values only."""
    # Exact types: numpy scalars subclass float/int but would need numpy globals to load.
    if value is None or type(value) in (str, int, float, bool):
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
    else:
        raise TypeError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__}; checkpoints store "
            "only str, int, float, bool, None, lists and dicts"
        )
