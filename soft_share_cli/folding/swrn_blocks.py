"""The building blocks of a folded SWRN: a pre-activation block run in a real loop, and where
each layer's scale goes.

:func:`place_scales`: where each layer's least-squares scale goes when an SWRN is folded
(:func:`soft_share_cli.folding.swrn.fold_swrn`). Each shared layer ``i`` of cluster ``c`` is
``s_i W(u_c)``; the block computes with ``W(u_c)`` and puts ``s_i`` where that is exact in eval
mode: conv1's scale into its iteration's bn2 running statistics, a positive conv2 scale into
that bn2's weight and bias, any other scale into an explicit gain; a layer whose cluster is its
own coefficients (``Absorb.UNIT``, scale 1) needs none of these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.analysis.plan import Absorb, LayerFold
from soft_share_cli.folding.bank import FoldedBank


class LoopedBlock(nn.Module):
    """A pre-activation block run ``iterations`` times with the same two weights.

    Each iteration ``t`` has its own ``bn1[t]`` and ``bn2[t]``; iterations listed in
    ``conv1_gain_iterations`` / ``gain_iterations`` multiply that conv's output by an explicit
    gain (``conv1_gains`` / ``conv2_gains``, one entry per listed iteration, in order).
    """

    conv1_gains: nn.Parameter | None
    conv2_gains: nn.Parameter | None

    def __init__(
        self,
        planes: int,
        conv1_cluster: int,
        conv2_cluster: int,
        iterations: int,
        gain_iterations: Sequence[int] = (),
        conv1_gain_iterations: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"a looped block needs at least one iteration, got {iterations}")
        for listed in (gain_iterations, conv1_gain_iterations):
            if sorted(set(listed)) != list(listed) or not all(0 <= t < iterations for t in listed):
                raise ValueError(f"gain iterations {list(listed)} must be sorted, unique, valid")
        self.conv1_cluster = conv1_cluster
        self.conv2_cluster = conv2_cluster
        self.iterations = iterations
        self.gain_iterations = tuple(gain_iterations)
        self.conv1_gain_iterations = tuple(conv1_gain_iterations)
        self.bn1 = nn.ModuleList(nn.BatchNorm2d(planes) for _ in range(iterations))
        self.bn2 = nn.ModuleList(nn.BatchNorm2d(planes) for _ in range(iterations))
        # Only the listed iterations carry a gain, so the parameter count matches the plan's.
        for name, listed in (
            ("conv1_gains", conv1_gain_iterations),
            ("conv2_gains", gain_iterations),
        ):
            param = nn.Parameter(torch.ones(len(listed))) if listed else None
            self.register_parameter(name, param)
        self._slot1 = {t: j for j, t in enumerate(self.conv1_gain_iterations)}
        self._slot2 = {t: j for j, t in enumerate(self.gain_iterations)}

    def gain(self, conv: int, t: int) -> Tensor | None:
        """The explicit gain of conv ``conv`` (1 or 2) at iteration ``t``, or None (absorbed)."""
        slot, gains = (
            (self._slot1, self.conv1_gains) if conv == 1 else (self._slot2, self.conv2_gains)
        )
        j = slot.get(t)
        return None if j is None or gains is None else gains[j]

    def forward(self, x: Tensor, bank: FoldedBank) -> Tensor:
        # Weights in the activations' layout: oneDNN then reorders neither on every call.
        layout = (
            torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format
        )
        w1 = bank.weight(self.conv1_cluster, layout)
        w2 = bank.weight(self.conv2_cluster, layout)
        for t in range(self.iterations):  # the real loop: same weights, per-iteration BNs
            # In place where autograd allows it, as the original block's ReLU(inplace=True):
            # a BatchNorm's and a convolution's backward never read their own output.
            out = F.conv2d(F.relu(self.bn1[t](x), inplace=True), w1, padding=1)
            if (g1 := self.gain(1, t)) is not None:
                out = out * g1
            out = F.conv2d(F.relu(self.bn2[t](out), inplace=True), w2, padding=1)
            if (g2 := self.gain(2, t)) is not None:
                out = out * g2
            x = out.add_(x)
        return x

    def extra_repr(self) -> str:
        gains = "".join(
            f", conv{r}_gains_at={list(listed)}"
            for r, listed in ((1, self.conv1_gain_iterations), (2, self.gain_iterations))
            if listed
        )
        return (
            f"conv1_cluster={self.conv1_cluster}, conv2_cluster={self.conv2_cluster}, "
            f"iterations={self.iterations}{gains}"
        )


def place_scales(segment: LoopedBlock, t: int, conv1: LayerFold, conv2: LayerFold) -> None:
    """Put iteration ``t``'s two layer scales where the plan says (exact in eval mode)."""
    bn = segment.bn2[t]
    assert isinstance(bn, nn.BatchNorm2d)
    if bn.weight is None or bn.running_mean is None or bn.running_var is None:
        raise ValueError("scales fold only into BatchNorms with affine parameters and statistics")
    s = conv1.scale
    if conv1.absorb is Absorb.BN_STATS and s != 0:
        # bn2 used to see s*z and now sees z: scale its statistics so it computes the same.
        mean, var, gamma = (_f64(x) for x in (bn.running_mean, bn.running_var, bn.weight))
        new_var = (var + bn.eps) / s**2 - bn.eps  # keeps var' + eps = (var + eps) / s^2
        fits = new_var >= 0
        # Where that would go negative, move |s| into gamma instead (also exact in eval).
        bn.running_var.copy_(torch.where(fits, new_var, var))
        bn.weight.copy_(torch.where(fits, gamma * math.copysign(1.0, s), gamma * s))
        bn.running_mean.copy_(mean / s)
    elif conv1.absorb is Absorb.GAIN:
        _set_gain(segment, 1, t, s)
    elif conv1.absorb is not Absorb.UNIT:
        raise ValueError(f"{conv1.name}: conv1's scale cannot go to {conv1.absorb.value}")
    s = conv2.scale
    if conv2.absorb is Absorb.BN_AFFINE and s > 0:
        # s * conv(relu(y)) == conv(relu(s * y)) for s > 0: scale bn2's output instead.
        assert bn.bias is not None
        bn.weight.copy_(_f64(bn.weight) * s)
        bn.bias.copy_(_f64(bn.bias) * s)
    elif conv2.absorb is Absorb.GAIN:
        _set_gain(segment, 2, t, s)
    elif conv2.absorb is not Absorb.UNIT:
        raise ValueError(f"{conv2.name}: conv2's scale cannot go to {conv2.absorb.value}")


def _f64(x: Tensor) -> Tensor:
    # The folding arithmetic runs in float64 on the CPU (MPS has no float64); copy_ casts back.
    return x.detach().to(device="cpu", dtype=torch.float64)


def _set_gain(segment: LoopedBlock, conv: int, t: int, value: float) -> None:
    gain = segment.gain(conv, t)
    assert gain is not None  # _segments gave every GAIN layer a slot
    gain.fill_(value)
