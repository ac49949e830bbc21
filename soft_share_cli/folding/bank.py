"""The one representation of a folded bank, for every folded kind (SWRN loops, FCN loops).

:class:`FoldedBank` stores a bank's C distinct weights (or, where that is smaller, its K
templates plus one direction per cluster) and materialises them for the loops that use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

STORAGES = ("weights", "templates")


class FoldedBank(nn.Module):
    """The C distinct weights of one bank: stored as they are, or as templates and directions.

    ``storage="weights"`` holds ``weights`` ``(C, O, I, k, k)``; ``storage="templates"`` holds
    ``templates`` ``(K, O, I, k, k)`` and ``directions`` ``(C, K)``, whichever is smaller.
    """

    weights: nn.Parameter | None
    templates: nn.Parameter | None
    directions: nn.Parameter | None

    def __init__(
        self, storage: str, clusters: int, num_templates: int, shape: Sequence[int]
    ) -> None:
        super().__init__()
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.storage = storage
        self.clusters = clusters
        self.num_templates = num_templates
        self.shape = tuple(int(s) for s in shape)
        # Zeros rather than torch.empty: a skeleton run before loading gives zeros, not garbage.
        if storage == "weights":
            self.weights = nn.Parameter(torch.zeros(clusters, *self.shape))
            self.register_parameter("templates", None)
            self.register_parameter("directions", None)
        else:
            self.register_parameter("weights", None)
            self.templates = nn.Parameter(torch.zeros(num_templates, *self.shape))
            self.directions = nn.Parameter(torch.zeros(clusters, num_templates))
        self._cache: tuple[tuple[Any, ...], list[Tensor]] | None = None

    @classmethod
    def holding(
        cls,
        weights: Tensor | None = None,
        templates: Tensor | None = None,
        directions: Tensor | None = None,
    ) -> FoldedBank:
        """A bank holding the given tensors (as parameters, not copies): either ``weights``
        ``(C, O, I, k, k)``, or ``templates`` ``(K, O, I, k, k)`` and ``directions`` ``(C, K)``."""
        if weights is not None and templates is None and directions is None:
            if weights.dim() < 2:
                got = tuple(weights.shape)
                raise ValueError(f"weights must be (C, ...) per-cluster weights, got {got}")
            storage, clusters, k, shape = "weights", weights.shape[0], 0, weights.shape[1:]
        elif weights is None and templates is not None and directions is not None:
            if templates.dim() < 2 or directions.dim() != 2:
                raise ValueError("templates must be (K, ...) and directions (C, K)")
            if directions.shape[1] != templates.shape[0]:
                mix = tuple(directions.shape)
                raise ValueError(f"directions {mix} do not mix {templates.shape[0]} templates")
            storage, clusters, k, shape = "templates", *directions.shape, templates.shape[1:]
        else:
            raise ValueError("give either weights, or templates and directions")
        with torch.device("meta"):  # no storage for the zeros that are replaced right away
            bank = cls(storage, clusters, k, shape)
        given = {"weights": weights, "templates": templates, "directions": directions}
        for name, value in given.items():
            if value is not None:
                setattr(bank, name, nn.Parameter(value))
        return bank

    def _materialise(self) -> Tensor:
        """All C weights ``(C, O, I, k, k)``: ``directions @ templates``, or the stored ones."""
        if self.weights is not None:
            return self.weights
        assert self.templates is not None and self.directions is not None
        return torch.tensordot(self.directions, self.templates, dims=1)

    def weight(
        self, c: int, memory_format: torch.memory_format = torch.contiguous_format
    ) -> Tensor:
        """The weight of cluster ``c``, ``(O, I, k, k)``, laid out in ``memory_format``.

        Whenever no gradient is wanted (``no_grad``/``inference_mode``, or frozen parameters)
        the C weights are computed (templates storage) and laid out once and cached; the cache
        is keyed on the parameters' version counters and storage, so in-place edits and
        ``.to()`` refresh it. When gradients are wanted each call recomputes, so they flow to
        the parameters (a cached graph would break a second backward; a detached one would drop
        gradients).
        """
        params = tuple(p for p in (self.weights, self.templates, self.directions) if p is not None)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            if self.weights is not None:
                w = self.weights[c]
            else:
                assert self.templates is not None and self.directions is not None
                w = torch.tensordot(self.directions[c], self.templates, dims=1)
            return w.contiguous(memory_format=memory_format)
        if any(p.is_inference() for p in params):  # no version counter to key a cache on
            return self._materialise()[c].contiguous(memory_format=memory_format)
        key = (
            memory_format,
            torch.is_inference_mode_enabled(),  # inference tensors must not leak out of it
            *((p.data_ptr(), p._version, p.dtype, p.device) for p in params),
        )
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                stack = self._materialise()
                laid_out = [
                    stack[i].contiguous(memory_format=memory_format) for i in range(len(stack))
                ]
                self._cache = (key, laid_out)
        return self._cache[1][c]

    def all_weights(self) -> Tensor:
        """All C weights ``(C, O, I, k, k)``: a detached copy."""
        with torch.no_grad():
            return torch.stack([self.weight(c) for c in range(self.clusters)])

    def view_templates(self) -> Tensor:
        """The bank seen as soft-shared, for analysis: what it stores as templates, a copy.

        Templates storage gives its K templates, weights storage its C distinct weights (whose
        directions are then one-hot): :meth:`view_coefficients` mixes either into cluster weights.
        """
        stored = self.weights if self.weights is not None else self.templates
        assert stored is not None
        return stored.detach().clone()

    def view_coefficients(self, c: int, gain: Tensor | None = None) -> Tensor:
        """A layer of cluster ``c`` with explicit ``gain`` as coefficients over
        :meth:`view_templates`, ``(T, 1, 1, 1, 1)``: a new tensor (so counting sees each once)."""
        with torch.no_grad():
            if self.directions is not None:
                direction = self.directions[c].detach().clone()
            else:
                assert self.weights is not None
                direction = torch.zeros(
                    self.clusters, dtype=self.weights.dtype, device=self.weights.device
                )
                direction[c] = 1.0
            if gain is not None:
                direction = direction * gain.detach().to(direction.dtype)
        return direction.reshape(-1, *(1,) * len(self.shape))  # (T, 1, 1, 1, 1); 1-d: (T, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"storage={self.storage}, clusters={self.clusters}, shape={self.shape}"
