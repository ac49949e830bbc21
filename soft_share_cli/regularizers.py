"""An optional training regulariser that makes soft-shared networks fold well.

The paper mentions a regulariser that raises layer similarity; its exact form could not be
confirmed, so this one is ours. For each bank ``b`` serving layers ``i = 1..L`` (``L >= 2``)
with coefficient vectors ``a_i``::

    c_ij = <a_i, a_j> / (||a_i|| * ||a_j|| + eps)
    R_b  = (1 / L) * sum_i (1 - max_{j != i} c_ij ** 2)
    R    = mean of R_b over the banks with L >= 2   (0 when there is none)

Each layer is pulled toward its nearest neighbour only, and the square makes the pull
sign-agnostic (``s * W`` and ``-s * W`` are the same filter up to a scale, which folding keeps as
an explicit gain). That creates clusters of near-parallel layers without forcing a whole bank
into one direction, so the network keeps as many distinct filters as it needs.

``R`` lies in ``[0, 1]``: 0 when every layer has an exactly (anti)parallel partner, 1 when every
layer is orthogonal to all others. Note that ``c_ij ** 2`` has zero gradient at ``c_ij = 0``: an
exactly orthogonal start (the paper's initialisation when ``L <= K``) is a stationary point of
``R`` alone; the task loss moves the coefficients off it within the first steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from soft_share_cli.layers import SConv2d

EPS = 1e-8
"""Keeps the cosine finite for an all-zero coefficient vector (which then counts as orthogonal)."""


def coefficient_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """The coefficients of ``model``'s :class:`SConv2d` layers, one list per bank.

    Layers are grouped by the identity of their bank's ``templates`` tensor (two bank modules
    holding the same tensor are one bank), banks and layers in module order. A module reached
    twice (a looped network) contributes once, as :meth:`nn.Module.modules` deduplicates.
    """
    groups: dict[int, list[nn.Parameter]] = {}
    for module in model.modules():
        if isinstance(module, SConv2d):
            groups.setdefault(id(module.bank.templates), []).append(module.coefficients)
    return list(groups.values())


def _nearest(coefficients: list[nn.Parameter], square: bool) -> Tensor:
    """Per layer of one bank, ``max_{j != i}`` of ``c_ij ** 2`` (or ``|c_ij|``), shape ``(L,)``."""
    a = torch.stack([c.reshape(-1) for c in coefficients])  # (L, K)
    norms = a.norm(dim=1)
    cos = (a @ a.T) / (norms[:, None] * norms[None, :] + EPS)
    sim = cos.square() if square else cos.abs()
    # Both are >= 0, so -1 on the diagonal removes each layer from its own max without an
    # in-place write on a tensor autograd still needs.
    eye = torch.eye(len(coefficients), dtype=torch.bool, device=a.device)
    return sim.masked_fill(eye, -1.0).amax(dim=1)


def alignment_penalty(groups: list[list[nn.Parameter]]) -> Tensor:
    """The alignment regulariser ``R`` (see the module docstring) as a differentiable 0-dim tensor.

    Args:
        groups: coefficient vectors per bank, as returned by :func:`coefficient_groups`.
            Banks with fewer than two layers have no neighbour to align with and are skipped.

    Returns:
        ``R`` in ``[0, 1]`` on the device of the coefficients; a constant 0 (CPU, no grad)
        when no bank has two layers.
    """
    penalties = [(1.0 - _nearest(g, square=True)).mean() for g in groups if len(g) >= 2]
    if not penalties:
        return torch.zeros(())
    return torch.stack(penalties).mean()


def nearest_neighbour_similarity(groups: list[list[nn.Parameter]]) -> float:
    """Mean over layers of ``max_{j != i} |c_ij|``, for reporting how foldable a network is.

    1 means every layer has an exactly (anti)parallel partner in its bank. Banks with fewer than
    two layers are skipped; with none left the result is ``nan``.
    """
    with torch.no_grad():
        values = [_nearest(g, square=False).cpu() for g in groups if len(g) >= 2]
    if not values:
        return float("nan")
    return float(torch.cat(values).mean())
