"""Keys that name one tensor of a network must hold one set of values in a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from soft_share_cli.errors import CheckpointError

if TYPE_CHECKING:
    from torch import Tensor, nn


def check_aliases_agree(model: nn.Module, state_dict: Mapping[str, Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` when keys that name ONE tensor of ``model`` (a bank seen
    from every layer that uses it, a hard-tied weight) hold different values in the file.

    ``load_state_dict`` copies every key into that one tensor, so the last copy would win
    silently and the file would say two things at once. Copies that are one storage in the file
    (what torch.save writes for a shared tensor) are not compared.
    """
    import torch

    holders: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        holders.setdefault(id(tensor), []).append(key)
    for keys in holders.values():
        present = [k for k in keys if k in state_dict]
        if len(present) < 2:
            continue
        first = state_dict[present[0]]
        for key in present[1:]:
            other = state_dict[key]
            if (
                other.device == first.device
                and other.dtype == first.dtype
                and other.shape == first.shape
                and other.stride() == first.stride()
                and (other.device.type == "meta" or other.data_ptr() == first.data_ptr())
            ):
                continue  # one storage, one set of values
            same = other.shape == first.shape and torch.equal(
                other.detach().to("cpu", torch.float64), first.detach().to("cpu", torch.float64)
            )
            if not same:
                raise CheckpointError(
                    f"the weights do not fit {what}: {present[0]} and {key} are one tensor in "
                    "the network, but the file holds different values under them"
                )
