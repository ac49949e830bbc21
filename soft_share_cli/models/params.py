"""Parameter counting by tensor identity.

One template tensor appears under several state-dict keys (every SConv2d and Block registers its
bank), and a module reused by several blocks (a hard tie) appears under one key per use, so
summing ``numel()`` over keys overcounts. We count each underlying storage region once; only the
unshared equivalent counts a hard-tied conv or linear layer once per use
(:func:`repeated_layer_parameters`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from soft_share_cli.checkpoints import arrays

if TYPE_CHECKING:
    from torch import nn

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def storage_id(tensor: Any) -> tuple[Any, ...]:
    """Equal for two tensors exactly when they are one parameter (the same bytes, viewed alike).

    Empty tensors may share a null data pointer without being the same parameter: each is its own.
    """
    return arrays.storage_key(tensor) if arrays.numel(tensor) else ("empty", id(tensor))


def unique_tensors(tensors: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Keep the first ``(name, tensor)`` of every distinct storage region, in order.

    Tensors are torch tensors or :class:`~soft_share_cli.checkpoints.arrays.StoredArray`; none is
    read.
    """
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for name, tensor in tensors:
        key = storage_id(tensor)
        if key not in seen:
            seen.add(key)
            kept.append((name, tensor))
    return kept


def count_state_dict_parameters(state_dict: Mapping[str, Any]) -> int:
    """Unique learnable numbers in a state dict: shared storage once, BN buffers excluded."""
    learnable = ((k, v) for k, v in state_dict.items() if not k.endswith(_BUFFER_SUFFIXES))
    return sum(arrays.numel(t) for _, t in unique_tensors(learnable))


def is_layer_weight(key: str, tensor: Any) -> bool:
    """A conv or linear weight: a floating ``...weight`` of two or more dimensions."""
    return (
        key.rsplit(".", 1)[-1] == "weight"
        and arrays.is_tensor(tensor)
        and arrays.is_floating(tensor)
        and len(arrays.shape(tensor)) >= 2
    )


def repeated_layer_parameters(state_dict: Mapping[str, Any]) -> int:
    """Numbers of the conv and linear layers (weight and bias) used again under another key.

    A hard tie (one module reused by several blocks) stores its weight once; its unshared
    equivalent has a weight per use. This is what the uses after the first would add.
    """
    layers = {k.rsplit(".", 1)[0] for k, v in state_dict.items() if is_layer_weight(k, v)}
    seen: set[tuple[Any, ...]] = set()
    repeated = 0
    for key, tensor in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "bias") or module not in layers or not arrays.is_tensor(tensor):
            continue
        storage = storage_id(tensor)
        if storage in seen:
            repeated += arrays.numel(tensor)
        seen.add(storage)
    return repeated


def count_parameters(model: nn.Module) -> int:
    """Unique parameters of a module (``nn.Module.parameters`` already deduplicates ties)."""
    return sum(p.numel() for p in model.parameters())
