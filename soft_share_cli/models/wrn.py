"""Wide ResNets, shared (SWRN d-w-K) and plain (WRN d-w), with the authors' module names.

Layout (pre-activation blocks ``relu(bn1(x)) -> conv1 -> relu(bn2) -> conv2 (+ shortcut)``):
``conv_3x3`` stem, ``stage_1..3`` of ``n = (depth - 4) / 6`` blocks with 16w, 32w, 64w channels,
``lastact`` (BatchNorm + ReLU), global average pooling and a linear ``classifier``. In the SWRN
one :class:`TemplateBank` per stage (``bank_1..3``) serves conv1 and conv2 of every block but the
first, so each bank serves ``2 (n - 1)`` layers.

One documented difference from the authors' code: their ``avgpool`` is ``AvgPool2d(8)``, which is
global pooling only for 32x32 inputs. We pool adaptively to 1x1 — identical on CIFAR, and correct
on other input sizes such as the 8x8 digits. Pooling has no parameters, so state dicts are
unaffected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from soft_share_cli.models.layers import SConv2d, TemplateBank


class Block(nn.Module):
    """Pre-activation residual block; its two 3x3 convs come from ``bank`` when one is given."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, bank: TemplateBank | None = None
    ):
        super().__init__()
        # Registered as a submodule exactly like the authors' Block, so the same keys appear.
        self.bank = bank
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1: nn.Module
        self.conv2: nn.Module
        if bank is not None:
            self.conv1 = SConv2d(bank, stride=stride, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        if bank is not None:
            self.conv2 = SConv2d(bank, stride=1, padding=1)
        else:
            self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        # Without an identity path, the shortcut sees the pre-activated input.
        residual = x if self.convShortcut is None else self.convShortcut(out)
        out = self.conv2(self.relu(self.bn2(self.conv1(out))))
        return out + residual


class _WideResNet(nn.Module):
    """Shared skeleton of WRN and SWRN; ``num_templates=None`` builds the plain network."""

    # registered with add_module in __init__ (names fixed by the authors' layout)
    stage_1: nn.Sequential
    stage_2: nn.Sequential
    stage_3: nn.Sequential

    def __init__(
        self,
        depth: int,
        width: int,
        num_templates: int | None,
        num_classes: int,
        in_channels: int,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError("width, num_classes and in_channels must be positive")
        self.depth = depth
        self.width = width
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.num_blocks = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]

        self.conv_3x3 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        for i, stride in zip((1, 2, 3), (1, 2, 2), strict=True):
            bank = None
            if num_templates is not None:
                bank = TemplateBank(num_templates, channels[i], channels[i], 3)
                self.add_module(f"bank_{i}", bank)
            stage = nn.Sequential(
                Block(channels[i - 1], channels[i], stride),
                *(Block(channels[i], channels[i], 1, bank) for _ in range(1, self.num_blocks)),
            )
            self.add_module(f"stage_{i}", stage)
        self.lastact = nn.Sequential(nn.BatchNorm2d(channels[3]), nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.conv_3x3.weight.is_meta:
            return  # built on the meta device to receive a checkpoint's weights: nothing to draw
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for i in (1, 2, 3):
            stage = getattr(self, f"stage_{i}")
            group = [m for m in stage.modules() if isinstance(m, SConv2d)]
            if not group:
                continue
            # Orthogonal rows over the (layers x K) matrix: layers start as dissimilar as
            # possible (exactly orthogonal when layers <= K), as in the paper's setup.
            init = torch.empty(len(group), group[0].coefficients.numel())
            nn.init.orthogonal_(init)
            with torch.no_grad():
                for conv, row in zip(group, init, strict=True):
                    conv.coefficients.copy_(row.view_as(conv.coefficients))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_3x3(x)
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        x = self.avgpool(self.lastact(x))
        return self.classifier(torch.flatten(x, 1))


class SWRN(_WideResNet):
    """Shared wide ResNet SWRN d-w-K: one bank of ``num_templates`` templates per stage."""

    def __init__(
        self,
        depth: int,
        width: int,
        num_templates: int,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        if num_templates < 1:
            raise ValueError(f"num_templates must be >= 1, got {num_templates}")
        super().__init__(depth, width, num_templates, num_classes, in_channels)
        self.num_templates = num_templates


class WRN(_WideResNet):
    """Plain wide ResNet WRN d-w, the unshared counterpart of :class:`SWRN`."""

    def __init__(self, depth: int, width: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__(depth, width, None, num_classes, in_channels)
