"""What a checkpoint's top-level object holds: its tensor state dict, prefixes, header fields.

:func:`as_state_dict` recognises a state dict (a non-empty ``str -> tensor`` mapping);
:func:`find_wrapped` finds one under the :data:`WRAPPER_KEYS` training scripts use, nested up to
:data:`MAX_WRAPPER_DEPTH` deep, and :func:`select_key` the one a caller names (``--key``);
:func:`strip_prefixes` removes what DataParallel/DDP and
``torch.compile`` add to every key; :func:`typed_header` and :func:`best_val_accuracy` read the
fields ssc reports (``arch``, ``arch_kwargs``, ``metadata``, the authors' recorded accuracy);
:func:`check_plain` keeps what ssc writes loadable without any custom global.
:func:`soft_share_cli.checkpoints.load.load_checkpoint` puts them together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soft_share_cli import limits
from soft_share_cli.checkpoints.arrays import is_tensor
from soft_share_cli.checkpoints.policy import InertObject
from soft_share_cli.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported where tensors are made: analysis can do without it
    from torch import Tensor

#: Keys under which a wrapped state dict is looked for, in this order: the trained weights, under
#: the names training scripts write (PyTorch's tutorial, timm, Lightning, torchvision's references,
#: DeepSpeed, BasicSR, ...), then their exponential moving averages.
WRAPPER_KEYS = (
    "state_dict", "model", "model_state_dict", "net", "net_state_dict", "network",
    "network_state_dict", "module", "weights", "params",
    "ema", "ema_state_dict", "model_ema", "state_dict_ema", "params_ema",
)  # fmt: skip
#: How many dicts deep a state dict is looked for: ``{"model": {"state_dict": ...}}`` is 2.
MAX_WRAPPER_DEPTH = 3
_LISTED = 10  # keys an error names
_SCANNED = 1000  # entries of one dict looked at for state dicts
#: Prefixes added by DataParallel/DDP and torch.compile; stripped only when every key has one.
STRIPPABLE_PREFIXES = ("module.", "_orig_mod.")


def typed_header(
    path: Path, info: Mapping[str, Any]
) -> tuple[str | None, dict[str, Any] | None, dict[str, Any]]:
    """``arch``, ``arch_kwargs`` and ``metadata`` of an ssc header, type-checked and bounded."""
    arch, arch_kwargs, metadata = info.get("arch"), info.get("arch_kwargs"), info.get("metadata")
    if arch is not None and not isinstance(arch, str):
        raise CheckpointError(f"{path}: 'arch' should be a string, got {type(arch).__name__}")
    for name, value in (("arch_kwargs", arch_kwargs), ("metadata", metadata)):
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{path}: '{name}' should be a dict, got {type(value).__name__}")
        limits.check_nesting(value, f"{path}: its '{name}'")
    return arch, arch_kwargs, metadata or {}


def as_state_dict(value: Any) -> dict[str, Tensor] | None:
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


def listed_keys(obj: Mapping[Any, Any]) -> str:
    """The first keys of ``obj``, quoted (they are file data: ``repr`` escapes controls)."""
    keys = [repr(k) for k in islice(obj, _LISTED)] + (["..."] if len(obj) > _LISTED else [])
    return ", ".join(keys) or "(none)"


def no_state_dict(path: Path, obj: Mapping[Any, Any], found: list[str] | None = None) -> str:
    """The error for a dict that holds no tensor state dict where ssc looks, naming its keys.

    ``found``: the (dotted) keys that do hold one, outside the wrapper keys: choose with --key.
    """
    where = (
        f"state dicts found under {', '.join(map(repr, found[:_LISTED]))}: choose one with "
        "--key NAME"
        if found
        else f"ssc looks for a dict of tensors, or one under {', '.join(map(repr, WRAPPER_KEYS))} "
        f"(nested up to {MAX_WRAPPER_DEPTH} deep), or under the entry --key NAME names"
    )
    return f"{path}: no tensor state dict found; top-level keys: {listed_keys(obj)}. {where}"


def _state_dicts_within(obj: Mapping[Any, Any]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, value)`` of every state dict up to :data:`MAX_WRAPPER_DEPTH` dicts deep in
    ``obj`` (a dict's own first, then those inside its other entries); none is looked into."""
    stack: list[tuple[tuple[str, ...], Mapping[Any, Any]]] = [((), obj)]
    while stack:
        path, value = stack.pop()
        inner = []
        for key, item in islice(value.items(), _SCANNED):
            if not isinstance(key, str) or not isinstance(item, Mapping):
                continue
            if as_state_dict(item) is not None:
                yield (*path, key), item
            elif len(path) + 1 < MAX_WRAPPER_DEPTH:
                inner.append(((*path, key), item))
        stack.extend(reversed(inner))


def _wrapper_rank(path: tuple[str, ...]) -> tuple[int, ...] | None:
    """Where ``path`` comes in the documented order (None: not a path of wrapper keys)."""
    if all(key in WRAPPER_KEYS for key in path):
        return tuple(WRAPPER_KEYS.index(key) for key in path)
    return None


def find_wrapped(
    path: Path, obj: Mapping[Any, Any]
) -> tuple[str, str, dict[str, Tensor], tuple[str, ...]]:
    """The state dict under the first path of :data:`WRAPPER_KEYS` that holds one.

    Paths are tried in the order of :data:`WRAPPER_KEYS`, looking inside a wrapper before the
    next key (``model.state_dict`` comes before ``net``). Returns the dotted key, its top-level
    key, the state dict and the dotted keys of the other state dicts the file holds (an EMA
    copy, a teacher, ...: ``--key`` picks one of those instead).

    Raises:
        CheckpointError: no wrapper key holds a state dict (the keys that do are named).
    """
    found = list(_state_dicts_within(obj))
    ranked = [(rank, p, value) for p, value in found if (rank := _wrapper_rank(p)) is not None]
    if not ranked:
        raise CheckpointError(no_state_dict(path, obj, [".".join(p) for p, _ in found]))
    _, chosen, value = min(ranked, key=lambda item: item[0])
    state_dict = as_state_dict(value)
    assert state_dict is not None
    others = tuple(".".join(p) for p, item in found if item is not value)
    return ".".join(chosen), chosen[0], state_dict, others


def select_key(
    path: Path, obj: Mapping[Any, Any], key: str
) -> tuple[str, dict[str, Tensor], tuple[str, ...]]:
    """The state dict under ``key`` (dotted for nesting: ``model.state_dict``), its top-level key
    and the dotted keys of the other state dicts in ``obj``.

    At each level the longest run of dotted parts that is an entry is taken, so keys that hold
    dots themselves can be named too.

    Raises:
        CheckpointError: no such entry (the keys present are listed, quoted), or what it holds
            is not a dict of tensors.
    """
    value: Any = obj
    walked: list[str] = []
    rest = key
    while True:
        where = f"under {'.'.join(walked)!r}" if walked else "at the top level"
        if not isinstance(value, Mapping):
            raise CheckpointError(
                f"{path}: --key {key!r}: {'.'.join(walked)!r} holds {_kind(value)}, not a dict"
            )
        parts = rest.split(".")
        # The longest run of parts that is a key: keys that hold dots can be named too.
        taken = next((n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in value), 1)
        part, rest = ".".join(parts[:taken]), ".".join(parts[taken:])
        if part not in value:
            raise CheckpointError(
                f"{path}: --key {key!r}: no entry {part!r} {where}; its keys: {listed_keys(value)}"
            )
        value = value[part]
        walked.append(part)
        if not rest:
            break
    state_dict = as_state_dict(value)
    if state_dict is None:
        raise CheckpointError(f"{path}: --key {key!r} {_not_a_state_dict(value)}")
    others = tuple(".".join(p) for p, item in _state_dicts_within(obj) if item is not value)
    return walked[0], state_dict, others


def _kind(value: Any) -> str:
    if is_tensor(value):
        return "a tensor"
    if isinstance(value, Mapping):
        return "an empty dict" if not value else "a dict"
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiouAEIOU' else 'a'} {name}"


def _not_a_state_dict(value: Any) -> str:
    """Why ``value`` is no state dict: what it holds, or its first entry that is no tensor."""
    if isinstance(value, Mapping) and value:
        for name, item in value.items():
            if not isinstance(name, str):
                return f"holds a dict with the key {name!r}, not a string"
            if not is_tensor(item):
                return f"holds a dict whose entry {name!r} is {_kind(item)}, not a tensor"
    return f"holds {_kind(value)}, not a dict of tensors"


def strip_prefixes(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
    """``state_dict`` without the :data:`STRIPPABLE_PREFIXES` all its keys have, and those."""
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


def best_val_accuracy(recorder: Any) -> float | None:
    """Best validation accuracy in the authors' RecorderMeter placeholder, when it has one."""
    if not isinstance(recorder, InertObject):
        return None
    accuracy, epochs = vars(recorder).get("epoch_accuracy"), vars(recorder).get("current_epoch")
    if not isinstance(accuracy, np.ndarray) or accuracy.ndim != 2 or accuracy.shape[1] < 2:
        return None
    if not isinstance(epochs, int | np.integer) or epochs <= 0:
        return None
    best = float(accuracy[: int(epochs), 1].max())  # column 1 holds validation accuracy
    return best if math.isfinite(best) else None


def check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is built from plain Python values only."""
    # Exact types: numpy scalars subclass float/int but would need numpy globals to load.
    if value is None or type(value) in (str, int, float, bool):
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
    elif type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}")
            check_plain(item, f"{where}[{key!r}]")
    else:
        raise TypeError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__}; checkpoints store "
            "only str, int, float, bool, None, lists and dicts"
        )
