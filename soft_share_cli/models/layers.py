"""Soft parameter sharing layers: a bank of weight templates and convolutions that mix them.

Parameter names and shapes follow the authors' public code so that state dicts move between the
two codebases unchanged: a bank holds ``templates`` of shape ``(K, O, I, k, k)``; a shared conv
holds ``coefficients`` of shape ``(K, 1, 1, 1, 1)`` and registers its bank as the submodule
``bank`` (which is why one template tensor appears under several state-dict keys).

A bank of 1-d kernels (``dims=1``: templates ``(K, O, I, k)``, coefficients ``(K, 1, 1, 1)``)
serves 1-d convolutions, e.g. the prefix-sum networks; :func:`conv` picks the convolution from
the weight's rank, so :class:`SConv2d` runs either.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TemplateBank(nn.Module):
    """K convolution weight templates shared by several :class:`SConv2d` layers.

    Args:
        num_templates: K, the number of templates.
        in_planes: input channels of every layer that uses the bank.
        out_planes: output channels of every layer that uses the bank.
        kernel_size: spatial size k of the square kernels.
        dims: 2 (``k x k`` kernels, the default) or 1 (kernels of ``k`` taps, for 1-d data).
    """

    def __init__(
        self, num_templates: int, in_planes: int, out_planes: int, kernel_size: int, dims: int = 2
    ):
        super().__init__()
        if num_templates < 1:
            raise ValueError(f"a template bank needs at least one template, got {num_templates}")
        if dims not in CONVS:
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        self.coefficient_shape = (num_templates,) + (1,) * (dims + 2)
        templates = torch.empty(num_templates, out_planes, in_planes, *(kernel_size,) * dims)
        if not templates.is_meta:  # a skeleton for loading weights into has nothing to draw
            for template in templates:
                # Each template is initialised like an ordinary conv weight would be.
                nn.init.kaiming_normal_(template)
        self.templates = nn.Parameter(templates)

    @property
    def num_templates(self) -> int:
        return int(self.templates.shape[0])

    def forward(self, coefficients: Tensor) -> Tensor:
        """Return the weight ``sum_k coefficients[k] * templates[k]``."""
        return torch.tensordot(coefficients.reshape(-1), self.templates, dims=1)

    @property
    def dims(self) -> int:
        """1 or 2: the spatial rank of the kernels."""
        return int(self.templates.dim()) - 3

    def extra_repr(self) -> str:
        k, o, i, kh = self.templates.shape[:4]
        one = ", dims=1" if self.dims == 1 else ""
        return f"templates={k}, out={o}, in={i}, kernel={kh}{one}"


#: The convolution module of each spatial rank a task network or bank can have.
CONVS: dict[int, type[nn.Conv1d] | type[nn.Conv2d]] = {1: nn.Conv1d, 2: nn.Conv2d}


def conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, *args: Any) -> Tensor:
    """``F.conv1d`` for a 3-d weight ``(O, I, k)``, ``F.conv2d`` otherwise (``args``: stride,
    padding, dilation, groups, as both take them)."""
    if weight.dim() == 3:
        return F.conv1d(x, weight, bias, *args)
    return F.conv2d(x, weight, bias, *args)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def allocate(module: ModuleT, device: torch.device | str) -> ModuleT:
    """Give a skeleton built on the meta device real, uninitialised storage on ``device``.

    ``nn.Module.to_empty`` does the same through ``empty_like`` of meta tensors, whose Python
    decomposition imports sympy: 0.6 s, more than building and folding a WRN-28-10 takes.
    The caller must write every parameter and buffer.
    """
    module._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
    return module


class SConv2d(nn.Module):
    """A bias-free convolution whose weight is a learned mix of a bank's templates (2-d, or
    1-d with a bank of 1-d kernels).

    Args:
        bank: the :class:`TemplateBank` to draw the weight from (registered as ``bank``).
        stride: convolution stride.
        padding: zero padding on each side.
    """

    def __init__(self, bank: TemplateBank, stride: int = 1, padding: int = 1):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.bank = bank
        self.coefficients = nn.Parameter(torch.zeros(bank.coefficient_shape))

    def weight(self) -> Tensor:
        """The generated convolution weight ``(O, I, k, k)`` (``(O, I, k)`` for 1-d)."""
        return self.bank(self.coefficients)

    def forward(self, x: Tensor) -> Tensor:
        return conv(x, self.weight(), None, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, padding={self.padding}"


class SharedConv2d(SConv2d):
    """An :class:`SConv2d` that keeps everything else of the ``nn.Conv2d`` it replaces.

    ``ssc share`` puts one in place of each conv of a group: the weight comes from the group's
    bank, while stride, padding, dilation, groups and the layer's own bias stay as they were
    (``bias`` keeps its state-dict key). Only zero padding is supported, like ``F.conv2d``.
    """

    def __init__(
        self,
        bank: TemplateBank,
        stride: int | tuple[int, ...] = 1,
        padding: int | str | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = False,
    ):
        super().__init__(bank, stride=1, padding=0)
        self.stride = stride  # type: ignore[assignment]
        self.padding = padding  # type: ignore[assignment]
        self.dilation = dilation
        self.groups = groups
        out_planes = bank.templates.shape[1]
        self.bias = nn.Parameter(torch.zeros(out_planes)) if bias else None

    @classmethod
    def like(cls, conv: nn.Conv2d, bank: TemplateBank) -> SharedConv2d:
        """A shared conv with ``conv``'s geometry (and a bias exactly when it has one)."""
        return cls(
            bank,
            stride=conv.stride,
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return (
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )
