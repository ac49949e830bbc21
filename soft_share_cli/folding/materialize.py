"""The numbers of a folded network: modules that hold and materialise weights, and conversions.

* :class:`FoldedBank` stores a bank's C distinct weights (or templates plus directions) and
  materialises them; :class:`LoopedBlock` runs one pre-activation block in a real loop.
* :func:`place_scales`: where each layer's least-squares scale goes when an SWRN is folded
  (:func:`soft_share_cli.folding.swrn.fold_swrn`). Each shared layer ``i`` of cluster ``c`` is
  ``s_i W(u_c)``; the block computes with ``W(u_c)`` and puts ``s_i`` where that is exact in eval
  mode: conv1's scale into its iteration's bn2 running statistics, a positive conv2 scale into
  that bn2's weight and bias, any other scale into an explicit gain.
* :func:`materialize`: the folded network as an ordinary WRN (one conv weight per layer).
* :func:`folded_state_dict_view`: the folded network as a soft-shared state dict whose C
  "templates" are the distinct weights, so ``find_banks`` and the analysis read it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.analysis.plan import Absorb, LayerFold
from soft_share_cli.models.wrn import WRN

if TYPE_CHECKING:  # folded.py imports this module; the type is needed for annotations only
    from soft_share_cli.folding.swrn import FoldedSWRN

STORAGES = ("weights", "templates")
COPIED = ("conv_3x3", "lastact", "classifier")  # modules the SWRN, folded net and WRN share


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
        return direction.reshape(-1, 1, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"storage={self.storage}, clusters={self.clusters}, shape={self.shape}"


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
    else:
        raise ValueError(f"{conv1.name}: conv1's scale cannot go to {conv1.absorb.value}")
    s = conv2.scale
    if conv2.absorb is Absorb.BN_AFFINE and s > 0:
        # s * conv(relu(y)) == conv(relu(s * y)) for s > 0: scale bn2's output instead.
        assert bn.bias is not None
        bn.weight.copy_(_f64(bn.weight) * s)
        bn.bias.copy_(_f64(bn.bias) * s)
    elif conv2.absorb is Absorb.GAIN:
        _set_gain(segment, 2, t, s)
    else:
        raise ValueError(f"{conv2.name}: conv2's scale cannot go to {conv2.absorb.value}")


def _f64(x: Tensor) -> Tensor:
    # The folding arithmetic runs in float64 on the CPU (MPS has no float64); copy_ casts back.
    return x.detach().to(device="cpu", dtype=torch.float64)


def _set_gain(segment: LoopedBlock, conv: int, t: int, value: float) -> None:
    gain = segment.gain(conv, t)
    assert gain is not None  # _segments gave every GAIN layer a slot
    gain.fill_(value)


def materialize(folded: FoldedSWRN) -> WRN:
    """The folded network as an ordinary WRN with the same eval-mode logits, in eval mode.

    Each shared layer gets its cluster's weight (times its explicit gain: conv is linear) and
    its iteration's BatchNorms; everything else is copied.
    """
    p = folded.program()
    reference = folded.conv_3x3.weight
    wrn = WRN(p["depth"], p["width"], p["num_classes"], p["in_channels"])
    wrn = wrn.to(device=reference.device, dtype=reference.dtype)
    for m in wrn.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = p["batchnorm"]["eps"], p["batchnorm"]["momentum"]
    with torch.no_grad():
        for name in COPIED:
            getattr(wrn, name).load_state_dict(getattr(folded, name).state_dict())
        for i in (1, 2, 3):
            first = getattr(folded, f"stage_{i}_first")
            getattr(wrn, f"stage_{i}")[0].load_state_dict(first.state_dict())
        for stage, b, segment, t in folded.iterations():
            block, bank = getattr(wrn, f"stage_{stage}")[b], folded.bank(stage)
            assert bank is not None
            block.bn1.load_state_dict(segment.bn1[t].state_dict())
            block.bn2.load_state_dict(segment.bn2[t].state_dict())
            for conv, c in ((1, segment.conv1_cluster), (2, segment.conv2_cluster)):
                weight, gain = bank.weight(c), segment.gain(conv, t)
                target = cast(nn.Conv2d, getattr(block, f"conv{conv}"))
                target.weight.copy_(weight if gain is None else weight * gain)
    return wrn.eval()


def folded_state_dict_view(folded: FoldedSWRN) -> dict[str, Tensor]:
    """A soft-shared view of ``folded`` for analysis (``find_banks``, ``ssc analyze``).

    The view is laid out as the original SWRN's state dict, in execution order: per bank,
    ``bank_<i>.templates`` holds what the bank stores as templates
    (:meth:`FoldedBank.view_templates`: its K templates, or its C distinct weights); every
    shared layer keeps its original name with ``stage_<s>.<b>.conv<r>.coefficients``, its
    cluster's direction (one-hot for stored weights) times its explicit gain (1 where the scale
    was absorbed); its iteration's BatchNorms appear as ``stage_<s>.<b>.bn<r>.*``, so a re-fold
    of the view sees where scales can be absorbed exactly, as the fold of the original did. Each
    stage's first block is ``stage_<s>.0``. Gains are left out: the coefficients hold them. Each
    block also names its bank's templates as an SWRN does (one tensor, aliased), so the view
    rebuilds as an SWRN: that is how a folded file is folded again.
    """
    view: dict[str, Tensor] = {}

    def put(prefix: str, module: nn.Module) -> None:
        for key, value in module.state_dict().items():
            view[f"{prefix}.{key}"] = value.detach()

    shared: dict[int, list[tuple[int, LoopedBlock, int]]] = {1: [], 2: [], 3: []}
    for stage, b, segment, t in folded.iterations():
        shared[stage].append((b, segment, t))
    put("conv_3x3", folded.conv_3x3)
    with torch.no_grad():
        for stage in (1, 2, 3):
            put(f"stage_{stage}.0", getattr(folded, f"stage_{stage}_first"))
            bank = folded.bank(stage)
            if bank is None:
                continue
            templates = view[f"bank_{stage}.templates"] = bank.view_templates()
            for b, segment, t in shared[stage]:
                for alias in ("bank", "conv1.bank", "conv2.bank"):  # as an SWRN's state dict
                    view[f"stage_{stage}.{b}.{alias}.templates"] = templates
                for conv, c in ((1, segment.conv1_cluster), (2, segment.conv2_cluster)):
                    bn = segment.bn1[t] if conv == 1 else segment.bn2[t]
                    put(f"stage_{stage}.{b}.bn{conv}", bn)
                    view[f"stage_{stage}.{b}.conv{conv}.coefficients"] = bank.view_coefficients(
                        c, segment.gain(conv, t)
                    )
        put("lastact", folded.lastact)
        put("classifier", folded.classifier)
    return view
