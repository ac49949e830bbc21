"""Parameter counting by tensor identity.

One template tensor appears under several state-dict keys (every SConv2d and Block registers its
bank), so summing ``numel()`` over keys overcounts. We count each underlying storage region once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _storage_key(tensor: Tensor) -> tuple[int, int, int, tuple[int, ...]]:
    # Two keys name the same parameter when they view the same bytes the same way.
    return (
        tensor.untyped_storage().data_ptr(),
        int(tensor.storage_offset()),
        tensor.numel(),
        tuple(tensor.stride()),
    )


def unique_tensors(tensors: Iterable[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """Keep the first ``(name, tensor)`` of every distinct storage region, in order."""
    seen: set[tuple[int, int, int, tuple[int, ...]]] = set()
    kept = []
    for name, tensor in tensors:
        # Empty tensors may share a null data pointer without being the same parameter.
        key = _storage_key(tensor) if tensor.numel() else (id(tensor), 0, 0, ())
        if key not in seen:
            seen.add(key)
            kept.append((name, tensor))
    return kept


def count_state_dict_parameters(state_dict: Mapping[str, Tensor]) -> int:
    """Unique learnable numbers in a state dict: shared storage once, BN buffers excluded."""
    learnable = ((k, v) for k, v in state_dict.items() if not k.endswith(_BUFFER_SUFFIXES))
    return sum(t.numel() for _, t in unique_tensors(learnable))


def count_parameters(model: nn.Module) -> int:
    """Unique parameters of a module (``nn.Module.parameters`` already deduplicates ties)."""
    return sum(p.numel() for p in model.parameters())
