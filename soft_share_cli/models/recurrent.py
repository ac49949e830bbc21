"""Fully convolutional residual networks for per-pixel algorithmic tasks, plain and soft-shared.

Size independent: no pooling, no linear layer, stride 1 everywhere, so one network runs on a
maze of any size and answers per pixel (``(N, classes, H, W)`` logits). ``dims=1`` builds the
same networks from 1-d convolutions (kernels of 3 taps) for sequences such as prefix sums:
``(N, C, L)`` in, ``(N, classes, L)`` out. Layout::

    stem    conv3x3(in -> w)
    body    `blocks` residual blocks   h + conv2(relu(conv1(relu(h))))      (w -> w)
    head    relu, conv3x3(w -> w), relu, conv1x1(w -> classes, with bias)

* :class:`FCN` — plain: every body conv has its own weight.
* :class:`SFCN` — soft-shared (the paper's scheme): ONE :class:`TemplateBank` of K templates,
  registered as ``bank``, serves all ``2 * blocks`` body convs, each an :class:`SConv2d` holding
  only its ``coefficients``; the stem and the head stay unshared. Keys follow the authors'
  naming (``bank.templates``, ``body.<b>.conv<r>.coefficients``), so ``ssc analyze`` finds the
  bank and reads the blocks as loop units.

There is no BatchNorm: a normalisation with statistics per layer would tie each block to its
position, and the point of these networks is that a folded one can run its block more times
than it was trained with (:mod:`soft_share_cli.folding.looped`). Without BatchNorm the scale of the
initial weights matters, so every conv weight starts with PyTorch's default spread
(``std = 1 / sqrt(3 fan_in)``, small residual branches keep a deep body stable), and in the
shared net the coefficient rows (orthogonal over the layers x K matrix, as in the paper) are
scaled to unit norm, so each generated weight starts with the plain conv's spread too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.models.layers import CONVS, SConv2d, TemplateBank
from soft_share_cli.models.names import RFCN_BLOCKS


def init_conv_(weight: Tensor) -> None:
    """PyTorch's default conv spread, ``std = 1 / sqrt(3 fan_in)``, drawn from a normal (every
    task network's convs: these, and :class:`~.recurrent_net.RecurrentFCN`'s)."""
    fan_in = weight[0].numel()
    nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(3 * fan_in))


class ResidualBlock(nn.Module):
    """``h + conv2(relu(conv1(relu(h))))``; the convs come from ``bank`` when one is given."""

    def __init__(self, width: int, bank: TemplateBank | None = None, dims: int = 2) -> None:
        super().__init__()
        self.conv1: nn.Module
        self.conv2: nn.Module
        if bank is None:
            self.conv1 = CONVS[dims](width, width, 3, padding=1, bias=False)
            self.conv2 = CONVS[dims](width, width, 3, padding=1, bias=False)
        else:
            self.conv1 = SConv2d(bank, stride=1, padding=1)
            self.conv2 = SConv2d(bank, stride=1, padding=1)

    def forward(self, h: Tensor, recall: Tensor | None = None) -> Tensor:
        z = h if recall is None else h + recall
        return h + self.conv2(F.relu(self.conv1(F.relu(z))))


class Head(nn.Module):
    """Per-pixel read-out: ``relu, conv3x3(w -> w), relu, conv1x1(w -> classes)`` (1-d
    convolutions of 3 and 1 taps when ``dims`` is 1)."""

    def __init__(self, width: int, num_classes: int, dims: int = 2) -> None:
        super().__init__()
        self.conv = CONVS[dims](width, width, 3, padding=1, bias=False)
        self.classifier = CONVS[dims](width, num_classes, 1, bias=True)

    def forward(self, h: Tensor) -> Tensor:
        return self.classifier(F.relu(self.conv(F.relu(h))))


class _FullyConvolutional(nn.Module):
    """Shared skeleton of :class:`FCN` and :class:`SFCN`; ``num_templates=None`` is plain."""

    def __init__(
        self,
        blocks: int,
        width: int,
        num_templates: int | None,
        num_classes: int,
        in_channels: int,
        recall: bool,
        dims: int = 2,
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        if min(width, num_classes, in_channels) < 1:
            raise ValueError("width, num_classes and in_channels must be positive")
        check_dims(dims)
        self.dims = dims
        self.blocks = blocks
        self.width = width
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.recall = recall
        self.stem = CONVS[dims](in_channels, width, 3, padding=1, bias=False)
        bank = None
        if num_templates is not None:
            bank = TemplateBank(num_templates, width, width, 3, dims=dims)
            self.bank = bank
        self.body = nn.ModuleList(ResidualBlock(width, bank, dims) for _ in range(blocks))
        self.head = Head(width, num_classes, dims)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.stem.weight.is_meta:
            return  # built on the meta device to receive a checkpoint's weights: nothing to draw
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                init_conv_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, TemplateBank):
                for template in m.templates.data:
                    init_conv_(template)
        group = [m for m in self.body.modules() if isinstance(m, SConv2d)]
        if group:
            init = torch.empty(len(group), group[0].coefficients.numel())
            nn.init.orthogonal_(init)
            init /= init.norm(dim=1, keepdim=True).clamp_min(1e-12)
            with torch.no_grad():
                for conv, row in zip(group, init, strict=True):
                    conv.coefficients.copy_(row.view_as(conv.coefficients))

    def states(self, x: Tensor) -> Iterator[Tensor]:
        """The state ``(N, w, H, W)`` after each block of the body, in order."""
        e = self.stem(x)
        h = e
        for block in self.body:
            h = block(h, e if self.recall else None)
            yield h

    def advance(self, h: Tensor, e: Tensor, start: int, stop: int) -> Tensor:
        """The state after blocks ``start .. stop - 1`` (from 0) applied in order to ``h``, the
        state before block ``start`` (``e``, the stem's output, when ``start`` is 0); ``e`` is
        the recall. The progressive loss runs a network part by part with it."""
        recall = e if self.recall else None
        for block in self.body[start:stop]:
            h = block(h, recall)
        return h

    def features(self, x: Tensor) -> Tensor:
        """The body's output state ``(N, w, H, W)``."""
        *_, h = self.states(x)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class FCN(_FullyConvolutional):
    """Plain fully convolutional residual net: ``blocks`` blocks of width ``width``, unshared."""

    def __init__(
        self,
        blocks: int,
        width: int,
        num_classes: int = 2,
        in_channels: int = 3,
        recall: bool = True,
        dims: int = 2,
    ):
        super().__init__(blocks, width, None, num_classes, in_channels, recall, dims)


class SFCN(_FullyConvolutional):
    """Soft-shared fully convolutional residual net: one bank of ``num_templates`` templates."""

    def __init__(
        self,
        blocks: int,
        width: int,
        num_templates: int,
        num_classes: int = 2,
        in_channels: int = 3,
        recall: bool = True,
        dims: int = 2,
    ):
        if num_templates < 1:
            raise ValueError(f"num_templates must be >= 1, got {num_templates}")
        super().__init__(blocks, width, num_templates, num_classes, in_channels, recall, dims)
        self.num_templates = num_templates


def describe_fcn(arch: str, kwargs: dict) -> str:
    """Human name, e.g. ``SFCN 12x32, K=4 (2 classes, 3 input channels)``; an rfcn (one block
    looped) ``RFCN 1x32 looped 12 times (...)``."""
    name = f"{arch.upper()} {kwargs.get('blocks')}x{kwargs.get('width')}"
    if arch == "rfcn":
        name = f"RFCN 1x{kwargs.get('width')} looped {kwargs.get('iterations')} times"
        if kwargs.get("block") in RFCN_BLOCKS:  # older files: residual, unnamed
            name += f", {kwargs['block']} block"
    if arch == "sfcn":
        name += f", K={kwargs.get('num_templates')}"
    channels = kwargs.get("in_channels", 3)
    plural = "s" if channels != 1 else ""
    one = ", 1-d" if kwargs.get("dims", 2) == 1 else ""
    return f"{name} ({kwargs.get('num_classes', 2)} classes, {channels} input channel{plural}{one})"


def check_dims(dims: object) -> None:
    """Raise ValueError unless ``dims`` is 1 (sequences: Conv1d) or 2 (images: Conv2d)."""
    if type(dims) is not int or dims not in CONVS:
        raise ValueError(f"dims must be 1 (sequences) or 2 (images), got {dims!r}")
