"""The progressive loss of Bansal et al. (NeurIPS 2022): train a loop to improve ANY state.

Each optimizer step draws ``n ~ U{0, .., T-1}`` and ``k ~ U{1, .., T-n}`` (``T`` the trained
depth: an rfcn's iterations, an fcn's or sfcn's blocks), runs the first ``n`` iterations
*without gradient* from the stem's encoding, then ``k`` more *with* gradient from that
(detached) state, recall included, and scores the head's read-out of the result. The network
cannot learn to rely on its own iteration count: whatever state it starts from, the next
iterations must move it towards the answer, which is what lets it run longer than it was
trained to without drifting ("overthinking"). The loss of a step is

    (1 - alpha) * full-depth loss + alpha * progressive loss

with ``alpha`` in [0, 1] (0: the plain loss, exactly; 1: the progressive loss alone).

FCN and SFCN take it as well: their blocks run in order, so "the first n iterations" are the
first n blocks and the gradient reaches blocks ``n .. n+k-1`` (the generated layers, for an
SFCN) and the stem and head. Both draws come from the run's generator (the one that shuffles),
so a resumed run takes the same draws as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def draw_depths(total: int, generator: torch.Generator) -> tuple[int, int]:
    """``(n, k)``: ``n ~ U{0, .., total-1}`` iterations without gradient, then
    ``k ~ U{1, .., total-n}`` with gradient (so ``n + k <= total``)."""
    if total < 1:
        raise ValueError(f"the trained depth must be >= 1, got {total}")
    n = int(torch.randint(0, total, (1,), generator=generator))
    k = int(torch.randint(1, total - n + 1, (1,), generator=generator))
    return n, k


def progressive_logits(model: nn.Module, x: Tensor, n: int, k: int) -> Tensor:
    """The read-out after ``n`` iterations without gradient, then ``k`` with it.

    ``model`` has ``stem``, ``head`` and ``advance(h, e, start, stop)`` (RecurrentFCN, FCN,
    SFCN). The recall ``e`` keeps its gradient in the last ``k`` iterations, as the input does
    in Bansal et al.; the state entering them is a constant.
    """
    e = model.stem(x)  # type: ignore[operator]
    h = e
    if n > 0:
        with torch.no_grad():
            h = model.advance(e, e, 0, n)  # type: ignore[operator]
    h = model.advance(h, e, n, n + k)  # type: ignore[operator]
    return model.head(h)  # type: ignore[operator]


def mixed_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    alpha: float,
    total: int,
    generator: torch.Generator,
    full: Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """``(full-depth logits, (1 - alpha) * full loss + alpha * progressive loss)``.

    ``full(model, x, y)`` scores the full-depth run (the trainer's loss, ``supervise``
    included); its logits are what the epoch's training accuracy counts. ``alpha`` 0 returns
    ``full``'s result as it is and draws nothing; ``alpha`` 1 runs the full depth without
    gradient (its logits are still counted, its loss does not train).
    """
    if alpha == 0:
        return full(model, x, y)
    if alpha == 1:
        with torch.no_grad():
            logits, _ = full(model, x, y)
    else:
        logits, full_loss = full(model, x, y)
    n, k = draw_depths(total, generator)
    loss = F.cross_entropy(progressive_logits(model, x, n, k), y)
    if alpha == 1:
        return logits, loss
    return logits, (1.0 - alpha) * full_loss + alpha * loss
