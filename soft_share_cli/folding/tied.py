"""The tied conv of a folded user network: a cluster's weight from a shared bank, times a gain.

A folded bank keeps its C distinct weights once (a :class:`~soft_share_cli.folding.bank.
FoldedBank`, as in every folded kind); each shared conv that drew on the bank becomes a
:class:`TiedConv2d`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.folding.bank import FoldedBank


class TiedConv2d(nn.Module):
    """A folded shared conv: ``gain * conv2d(x, shared.weight(cluster))``, no bias; without the
    gain (``gained=False``: the cluster's weight is the layer's own, ``Absorb.UNIT``) when the
    plan stores none.

    ``shared`` is owned (registered) by the network's top level; here it is a plain reference,
    so parameters are counted once and the state dict has one key per tensor. The geometry
    (stride, padding, dilation, groups) is that of ``replaced``, the layer it stands in for
    (conv2d's defaults where that layer has none).
    """

    shared: FoldedBank

    gain: nn.Parameter | None

    def __init__(
        self, shared: FoldedBank, cluster: int, scale: float, replaced: Any, gained: bool = True
    ) -> None:
        super().__init__()
        object.__setattr__(self, "shared", shared)  # bypasses nn.Module's submodule registration
        self.cluster = cluster
        self.stride = getattr(replaced, "stride", 1)
        self.padding = getattr(replaced, "padding", 0)
        self.dilation = getattr(replaced, "dilation", 1)
        self.groups = getattr(replaced, "groups", 1)
        like = next(shared.parameters())
        gain = torch.tensor(float(scale), dtype=like.dtype, device=like.device)
        self.register_parameter("gain", nn.Parameter(gain) if gained else None)

    def forward(self, x: Tensor) -> Tensor:
        w = self.shared.weight(self.cluster)
        out = F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)
        return out if self.gain is None else self.gain * out

    def extra_repr(self) -> str:
        return f"cluster={self.cluster}, stride={self.stride}, padding={self.padding}"
