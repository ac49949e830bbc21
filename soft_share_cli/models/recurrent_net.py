"""A truly recurrent task network: ONE residual block applied ``iterations`` times, with recall.

The recurrent network of Bansal et al. (NeurIPS 2022, "End-to-end Algorithm Synthesis with
Recurrent Networks: Logical Extrapolation Without Overthinking"), in the layout of
:mod:`soft_share_cli.models.recurrent`::

    stem    conv3x3(in -> w)                                   e = stem(x)
    body    h_0 = e;  h_t = block(h_(t-1), recall=e)            t = 1 .. iterations
    head    relu, conv3x3(w -> w), relu, conv1x1(w -> classes)

The block is one module called at every iteration: the weights are tied by construction, so
the parameter count does not depend on the iteration count. Two blocks (``block=``):

* ``"residual"`` — the FCN's :class:`~soft_share_cli.models.recurrent.ResidualBlock` (two 3x3
  convs, ``block.conv1.weight``, ``block.conv2.weight``): ``h + conv2(relu(conv1(relu(h + e))))``,
  recall *added* to the state. Every iteration adds to the state, so it can drift.
* ``"projection"`` — the recurrent block of Bansal et al.: a conv projects the concatenation
  ``[h, e]`` (2w channels) back to w, then two residual blocks (``block.project.weight``,
  ``block.inner.<i>.conv<r>.weight``): ``h' = R2(R1(project([h, e])))``. The state is
  recomputed from itself and the problem at every step instead of accumulated, which is what
  lets it hold a solved answer for hundreds of iterations (measured: README, "Thinking longer").

Either way recall gives the stem's encoding ``e`` of the input to every iteration, so the state
never loses sight of the problem however long the loop runs. Without recall the projection
block projects ``h`` alone. Checkpoints without ``block`` in their arguments are residual.

**Thinking longer.** ``trained_iterations`` is the count it was built (and trained) with;
``iterations`` (settable) is how many a forward pass runs. :meth:`RecurrentFCN.trajectory`
yields the output after every iteration in one pass, and ``begin``/``step``/``read`` make it a
:class:`~soft_share_cli.evaluation.iterations.Stepper` as it is, for ``--iterations auto``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from soft_share_cli.models.layers import CONVS
from soft_share_cli.models.names import RFCN_BLOCKS
from soft_share_cli.models.recurrent import (
    Head,
    ResidualBlock,
    check_dims,
    describe_fcn,
    init_conv_,
)

State = tuple[Tensor, ...]  # (h, e) with recall, (h,) without: the batch is the first dimension


BLOCKS = RFCN_BLOCKS


class ProjectionBlock(nn.Module):
    """``R2(R1(project([h, recall])))``: Bansal et al.'s recurrent block (see the module doc)."""

    def __init__(self, width: int, recall: bool = True, dims: int = 2) -> None:
        super().__init__()
        inputs = 2 * width if recall else width
        self.project = CONVS[dims](inputs, width, 3, padding=1, bias=False)
        self.inner = nn.ModuleList(ResidualBlock(width, dims=dims) for _ in range(2))

    def forward(self, h: Tensor, recall: Tensor | None = None) -> Tensor:
        z = self.project(h if recall is None else torch.cat([h, recall], dim=1))
        for block in self.inner:
            z = block(z)
        return z


class RecurrentFCN(nn.Module):
    """Stem, one block looped ``iterations`` times (recall of the stem), head."""

    def __init__(
        self,
        iterations: int,
        width: int,
        num_classes: int = 2,
        in_channels: int = 3,
        recall: bool = True,
        dims: int = 2,
        block: str = "residual",
    ) -> None:
        super().__init__()
        if type(iterations) is not int or iterations < 1:
            raise ValueError(f"iterations must be a whole number >= 1, got {iterations!r}")
        if min(width, num_classes, in_channels) < 1:
            raise ValueError("width, num_classes and in_channels must be positive")
        check_dims(dims)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")
        self.dims = dims
        self.block_kind = block
        self.width = width
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.recall = recall
        self.trained_iterations = iterations
        self._iterations = iterations
        self.stem = CONVS[dims](in_channels, width, 3, padding=1, bias=False)
        self.block: nn.Module = (
            ProjectionBlock(width, recall, dims) if block == "projection"
            else ResidualBlock(width, dims=dims)
        )  # fmt: skip
        self.head = Head(width, num_classes, dims)
        if not self.stem.weight.is_meta:  # a meta skeleton receives a checkpoint's weights
            for m in self.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    init_conv_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    @property
    def iterations(self) -> int:
        """Block applications of a forward pass (default: ``trained_iterations``)."""
        return self._iterations

    @iterations.setter
    def iterations(self, value: int) -> None:
        if type(value) is not int or value < 1:
            raise ValueError(f"iterations must be a whole number >= 1, got {value!r}")
        self._iterations = value

    def advance(self, h: Tensor, e: Tensor, start: int, stop: int) -> Tensor:
        """The state after iterations ``start + 1 .. stop`` applied to ``h``, the state after
        ``start`` (``e``, the stem's output, when ``start`` is 0); ``e`` is the recall.

        The same signature as the block-by-block ``advance`` of FCN and SFCN, so the
        progressive loss (:mod:`soft_share_cli.training.progressive`) runs all three alike.
        """
        recall = e if self.recall else None
        for _ in range(stop - start):
            h = self.block(h, recall)
        return h

    def states(self, x: Tensor, iterations: int | None = None) -> Iterator[Tensor]:
        """The state ``(N, w, H, W)`` after each iteration, in order (``iterations``: its
        count, default :attr:`iterations`)."""
        e = self.stem(x)
        h = e
        recall = e if self.recall else None
        for _ in range(self.iterations if iterations is None else iterations):
            h = self.block(h, recall)
            yield h

    def trajectory(self, x: Tensor, iterations: int) -> Iterator[Tensor]:
        """The logits after each of ``iterations`` iterations, in one pass: the n-th equals
        ``forward`` with ``self.iterations = n``."""
        for h in self.states(x, iterations):
            yield self.head(h)

    def forward(self, x: Tensor) -> Tensor:
        e = self.stem(x)
        return self.head(self.advance(e, e, 0, self.iterations))

    # The Stepper protocol of soft_share_cli.evaluation.iterations (--iterations auto).
    def begin(self, x: Tensor) -> State:
        """The state before the first iteration: the stem's output (and the recall)."""
        e = self.stem(x)
        return (e, e) if self.recall else (e,)

    def step(self, state: State, n: int) -> State:
        """The state after iteration ``n``: every iteration applies the same block."""
        recall = state[1] if len(state) > 1 else None
        return (self.block(state[0], recall), *state[1:])

    def read(self, state: State) -> Tensor:
        """The logits ``(N, classes, H, W)`` of a state."""
        return self.head(state[0])

    def describe(self) -> str:
        """E.g. ``RFCN 1x32 looped 12 times (2 classes, 3 input channels)``."""
        kwargs: dict[str, Any] = {
            "iterations": self.trained_iterations,
            "width": self.width,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "dims": self.dims,
            "block": self.block_kind,
        }
        text = describe_fcn("rfcn", kwargs)
        if self.iterations != self.trained_iterations:
            text += f", run for {self.iterations} iterations"
        return text
