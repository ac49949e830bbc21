"""Parameter counting by tensor identity.

One template tensor appears under several state-dict keys (every SConv2d and Block registers its
bank), so summing ``numel()`` over keys overcounts. We count each underlying storage region once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from soft_share_cli.checkpoints import arrays

if TYPE_CHECKING:
    from torch import nn

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def unique_tensors(tensors: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Keep the first ``(name, tensor)`` of every distinct storage region, in order.

    Tensors are torch tensors or :class:`~soft_share_cli.checkpoints.arrays.StoredArray`; none is
    read.
    """
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for name, tensor in tensors:
        # Two keys name the same parameter when they view the same bytes the same way; empty
        # tensors may share a null data pointer without being the same parameter.
        key = arrays.storage_key(tensor) if arrays.numel(tensor) else ("empty", id(tensor))
        if key not in seen:
            seen.add(key)
            kept.append((name, tensor))
    return kept


def count_state_dict_parameters(state_dict: Mapping[str, Any]) -> int:
    """Unique learnable numbers in a state dict: shared storage once, BN buffers excluded."""
    learnable = ((k, v) for k, v in state_dict.items() if not k.endswith(_BUFFER_SUFFIXES))
    return sum(arrays.numel(t) for _, t in unique_tensors(learnable))


def count_parameters(model: nn.Module) -> int:
    """Unique parameters of a module (``nn.Module.parameters`` already deduplicates ties)."""
    return sum(p.numel() for p in model.parameters())
