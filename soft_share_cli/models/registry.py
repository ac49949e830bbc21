"""Architecture name -> constructor. Checkpoints store the name and the constructor's kwargs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from soft_share_cli.errors import ArchitectureError
from soft_share_cli.models.recurrent import FCN, SFCN
from soft_share_cli.models.recurrent_net import RecurrentFCN
from soft_share_cli.models.wrn import SWRN, WRN

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "swrn": SWRN,
    "wrn": WRN,
    "sfcn": SFCN,  # fully convolutional, one template bank: per-pixel algorithmic tasks
    "fcn": FCN,  # its plain counterpart
    "rfcn": RecurrentFCN,  # one block looped, tied by construction, with recall
}


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Make ``constructor`` buildable by name (for checkpoints that store ``arch=name``)."""
    ARCHITECTURES[name] = constructor


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``arch`` with constructor arguments ``kwargs``."""
    try:
        constructor = ARCHITECTURES[arch]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ArchitectureError(f"unknown architecture {arch!r} (known: {known})") from None
    try:
        return constructor(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"cannot build {arch} with {kwargs}: {exc}") from None
