"""The modules of a folded user network: one bank's distinct weights, and the tied convs using them.

A folded bank keeps its C distinct weights once (:class:`SharedWeights`); each shared conv that
drew on the bank becomes a :class:`TiedConv2d`: its cluster's weight times a gain of its own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SharedWeights(nn.Module):
    """The C distinct weights of one folded bank, stored whichever way is smaller.

    Either ``weights`` ``(C, O, I, k, k)``, or ``templates`` ``(K, O, I, k, k)`` plus
    ``directions`` ``(C, K)`` (``W_c = sum_k directions[c, k] * templates[k]``), as decided by
    :attr:`BankFold.stores_weights`.
    """

    def __init__(
        self,
        weights: Tensor | None = None,
        templates: Tensor | None = None,
        directions: Tensor | None = None,
    ) -> None:
        super().__init__()
        if weights is not None and templates is None and directions is None:
            self.weights = nn.Parameter(weights)
        elif weights is None and templates is not None and directions is not None:
            self.templates = nn.Parameter(templates)
            self.directions = nn.Parameter(directions)
        else:
            raise ValueError("give either weights, or templates and directions")
        self._cache: tuple[tuple[Any, ...], Tensor] | None = None

    @property
    def stores_weights(self) -> bool:
        return "weights" in self._parameters

    def stack(self) -> Tensor:
        """All C weights ``(C, O, I, k, k)``."""
        if self.stores_weights:
            return self.weights
        params = (self.templates, self.directions)
        # Reusing a stack that carries an autograd graph would break a second backward, so only
        # eval mode without gradients caches; data_ptr catches .to() replacing the tensors.
        cacheable = not self.training and not (
            torch.is_grad_enabled() and any(p.requires_grad for p in params)
        )
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        if cacheable and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        stack = torch.tensordot(self.directions, self.templates, dims=1)
        self._cache = (key, stack) if cacheable else None
        return stack

    def weight(self, cluster: int) -> Tensor:
        """The weight of cluster ``cluster``, ``(O, I, k, k)``."""
        return self.stack()[cluster]

    def extra_repr(self) -> str:
        kind = "weights" if self.stores_weights else "templates+directions"
        c = (self.weights if self.stores_weights else self.directions).shape[0]
        return f"clusters={c}, storage={kind}"


class TiedConv2d(nn.Module):
    """A folded shared conv: ``gain * conv2d(x, shared.weight(cluster))``, no bias.

    ``shared`` is owned (registered) by the network's top level; here it is a plain reference,
    so parameters are counted once and the state dict has one key per tensor. The geometry
    (stride, padding, dilation, groups) is that of ``replaced``, the layer it stands in for
    (conv2d's defaults where that layer has none).
    """

    shared: SharedWeights

    def __init__(self, shared: SharedWeights, cluster: int, scale: float, replaced: Any) -> None:
        super().__init__()
        object.__setattr__(self, "shared", shared)  # bypasses nn.Module's submodule registration
        self.cluster = cluster
        self.stride = getattr(replaced, "stride", 1)
        self.padding = getattr(replaced, "padding", 0)
        self.dilation = getattr(replaced, "dilation", 1)
        self.groups = getattr(replaced, "groups", 1)
        like = next(shared.parameters())
        self.gain = nn.Parameter(torch.tensor(float(scale), dtype=like.dtype, device=like.device))

    def forward(self, x: Tensor) -> Tensor:
        w = self.shared.weight(self.cluster)
        return self.gain * F.conv2d(
            x, w, None, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return f"cluster={self.cluster}, stride={self.stride}, padding={self.padding}"
