"""An optional training regulariser that makes soft-shared networks fold well.

The paper mentions a regulariser that raises layer similarity; its exact form could not be
confirmed, so these are ours. For each bank ``b`` serving layers ``i = 1..L`` (``L >= 2``)
with coefficient vectors ``a_i`` and ``c_ij = <a_i, a_j> / (||a_i|| * ||a_j|| + eps)``:

``AlignMode.RECURRENT`` (the default) pulls every layer toward the layer with the same role
in the next unit (block) of the bank, ``next(i)``: conv1 of block b toward conv1 of block b+1,
and so on; in a flat network (all layers under one parent module) ``next(i) = i + 1``::

    R_b = mean over the pairs (i, next(i)) of (1 - c_{i,next(i)} ** 2)

so consecutive blocks converge to the same weights up to a scale: exactly what folding turns
into a loop over one block.

``AlignMode.SIGNED`` pairs the layers like ``RECURRENT`` but keeps the sign: it pulls each
pair to the same direction *with the same sign*::

    R_b = mean over the pairs (i, next(i)) of (1 - c_{i,next(i)}) / 2

A BatchNorm after a conv can absorb a negative scale, a ReLU cannot (``relu(-z) != -relu(z)``):
in a network without BatchNorm (the fully convolutional task nets) two anti-parallel layers
compute different functions, and only same-sign alignment makes consecutive blocks one loop.

``AlignMode.NEAREST`` pulls every layer toward whichever layer is already closest::

    R_b = (1 / L) * sum_i (1 - max_{j != i} c_ij ** 2)

Either way ``R = mean of R_b over the banks with at least one pair`` (0 when there is none).

In nearest mode each layer is pulled toward its nearest neighbour only. The square makes the pull
sign-agnostic (``s * W`` and ``-s * W`` are the same filter up to a scale, which folding keeps as
an explicit gain). That creates clusters of near-parallel layers without forcing a whole bank
into one direction, so the network keeps as many distinct filters as it needs.

``R`` lies in ``[0, 1]``: 0 when every layer has an exactly (anti)parallel partner, 1 when every
layer is orthogonal to all others. Note that ``c_ij ** 2`` has zero gradient at ``c_ij = 0``: an
exactly orthogonal start (the paper's initialisation when ``L <= K``) is a stationary point of
``R`` alone; the task loss moves the coefficients off it within the first steps.
"""

from __future__ import annotations

import enum

import torch
from torch import Tensor, nn

from soft_share_cli.models.layers import SConv2d

EPS = 1e-8
"""Keeps the cosine finite for an all-zero coefficient vector (which then counts as orthogonal)."""


class AlignMode(str, enum.Enum):
    """Which layers the alignment regulariser pulls together (see the module docstring)."""

    RECURRENT = "recurrent"
    SIGNED = "signed"
    NEAREST = "nearest"


def coefficient_names(model: nn.Module) -> list[list[str]]:
    """Module names of the :class:`SConv2d` layers, grouped like :func:`coefficient_groups`."""
    groups: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, SConv2d):
            groups.setdefault(id(module.bank.templates), []).append(name)
    return list(groups.values())


def recurrence_pairs(names: list[str]) -> list[tuple[int, int]]:
    """``(i, next(i))``: each layer and the same-role layer of the bank's next unit (block)."""
    parents = [name.rpartition(".")[0] for name in names]
    roles = [name.rpartition(".")[2] for name in names]
    if len(set(parents)) <= 1:  # a flat network: each layer is its own unit
        return [(i, i + 1) for i in range(len(names) - 1)]
    units = list(dict.fromkeys(parents))
    where = {(parents[i], roles[i]): i for i in range(len(names))}
    pairs = []
    for i in range(len(names)):
        u = units.index(parents[i])
        if u + 1 < len(units) and (units[u + 1], roles[i]) in where:
            pairs.append((i, where[(units[u + 1], roles[i])]))
    return pairs


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


def _paired(
    coefficients: list[nn.Parameter], pairs: list[tuple[int, int]], signed: bool = False
) -> Tensor:
    """``c_{i,j} ** 2`` (or ``(1 + c_{i,j}) / 2`` when ``signed``) for each pair, ``(P,)``."""
    a = torch.stack([c.reshape(-1) for c in coefficients])
    i = torch.tensor([p[0] for p in pairs], device=a.device)
    j = torch.tensor([p[1] for p in pairs], device=a.device)
    cos = (a[i] * a[j]).sum(dim=1) / (a[i].norm(dim=1) * a[j].norm(dim=1) + EPS)
    return (1.0 + cos) / 2.0 if signed else cos.square()


def alignment_penalty(
    groups: list[list[nn.Parameter]],
    mode: AlignMode = AlignMode.NEAREST,
    pairs: list[list[tuple[int, int]]] | None = None,
) -> Tensor:
    """The alignment regulariser ``R`` (see the module docstring) as a differentiable 0-dim tensor.

    Args:
        groups: coefficient vectors per bank, as returned by :func:`coefficient_groups`.
            Banks with fewer than two layers have no neighbour to align with and are skipped.
        mode: which layers are pulled together.
        pairs: for ``AlignMode.RECURRENT`` and ``SIGNED``, :func:`recurrence_pairs` of each
            bank's layer names (required in those modes).

    Returns:
        ``R`` in ``[0, 1]`` on the device of the coefficients; a constant 0 (CPU, no grad)
        when no bank has two layers.
    """
    if AlignMode(mode) in (AlignMode.RECURRENT, AlignMode.SIGNED):
        if pairs is None or len(pairs) != len(groups):
            raise ValueError("recurrent alignment needs the layer pairs of every bank")
        signed = AlignMode(mode) is AlignMode.SIGNED
        penalties = [
            (1.0 - _paired(g, p, signed)).mean() for g, p in zip(groups, pairs, strict=True) if p
        ]
    else:
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
