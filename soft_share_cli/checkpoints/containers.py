"""What a checkpoint's top-level object holds: its tensor state dict, prefixes, header fields.

:func:`as_state_dict` recognises a state dict (a non-empty ``str -> tensor`` mapping), also under
one of :data:`WRAPPER_KEYS`; :func:`strip_prefixes` removes what DataParallel/DDP and
``torch.compile`` add to every key; :func:`typed_header` and :func:`best_val_accuracy` read the
fields ssc reports (``arch``, ``arch_kwargs``, ``metadata``, the authors' recorded accuracy);
:func:`check_plain` keeps what ssc writes loadable without any custom global.
:func:`soft_share_cli.checkpoints.load.load_checkpoint` puts them together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soft_share_cli import limits
from soft_share_cli.checkpoints.arrays import is_tensor
from soft_share_cli.checkpoints.policy import InertObject
from soft_share_cli.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported where tensors are made: analysis can do without it
    from torch import Tensor

#: Keys under which a wrapped state dict is looked for, in this order (timm's order, plus ``net``).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
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


def no_state_dict(path: Path, obj: Mapping[Any, Any]) -> str:
    """The error for a dict that holds no tensor state dict, naming its first keys."""
    keys = [repr(k) for k in list(obj)[:10]] + (["..."] if len(obj) > 10 else [])
    return (
        f"{path}: no tensor state dict found; top-level keys: {', '.join(keys) or '(none)'}. "
        f"ssc looks for a dict of tensors, or one under {', '.join(map(repr, WRAPPER_KEYS))}"
    )


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
