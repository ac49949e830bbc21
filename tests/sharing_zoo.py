"""A zoo of small CNNs that share parameters across layers in every way issue 13 names.

Plain torch, no ssc import: the tests copy this file to ``tmp_path/zoo.py`` and append factories,
so ``ssc ... --model tmp_path/zoo.py:factory`` runs it as a user's own code would be run.

Every network takes ``in_channels`` (1 or 3) images of 8×8, ends in logits ``(batch, classes)``,
is built deterministically from ``seed`` (the global RNG is left as it was), and lists the
coefficients that make its shared layers' weights in :meth:`mixing` (one entry per layer, in
forward order; tied layers give the same Parameter). :func:`plant` makes chosen layers exactly
parallel (coefficients proportional), so the right answer of an analysis is known. The kinds:

a. soft sharing under other names and shapes: :class:`SoftBankNet` (a bank ``w_bank`` held by the
   top module only, per-layer ``alpha`` shaped ``(K,)``, ``(1, K)`` or ``(K, 1, 1, 1, 1)``,
   optionally with its layers deep in nested containers), :class:`TwoBankNet` (two banks of
   different widths), :class:`LinearBankNet` (a linear bank ``(K, O, I)`` with ``mix``);
b. hard ties: :class:`TiedBlocksNet` (one conv module reused by consecutive blocks that keep
   their own BatchNorms), :class:`SoftBankNet` with ``tied`` (layers sharing one ``alpha``);
c. shared bases: :class:`BasisNet` (``W_i = M_i · B`` computed in forward, then ``F.conv2d``)
   and :class:`BasisBNNet` (basis conv → BatchNorm → per-layer 1×1 conv ``M_i``);
d. a flat store: :class:`StoreNet` (one 1-d ``store``; each layer mixes ``K_i`` overlapping
   windows of it, and so does the final linear layer).

Every network whose shared weights are computed makes its conv/linear calls inline in a parent's
``forward`` (``ssc fold --model`` refuses those: no module stands for the call alone); with
``wrap=True`` each such call is a module of its own (:class:`MixConv`, :class:`BankLinear`,
:class:`BasisConv`, :class:`WindowOp`) that takes the input and the parameters its weight is made
of, and returns the call's output: what ``ssc fold --model`` replaces. The state dict (its keys and
values for a seed) is the same either way. :class:`TiedBlocksNet` and :class:`BasisBNNet` call
``nn.Conv2d`` modules already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALPHA_SHAPES = {"k": lambda k: (k,), "1k": lambda k: (1, k), "k1111": lambda k: (k, 1, 1, 1, 1)}


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, the global RNG restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)  # eval-mode BatchNorms that are not identities
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


class _Net(nn.Module):
    """Stem conv ``in_channels → width``, the body, global average pool, linear head."""

    def __init__(self, in_channels: int, width: int, classes: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = nn.Linear(width, classes)

    def body(self, x: Tensor) -> Tensor:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(F.relu(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))

    def mixing(self) -> list[nn.Parameter]:  # pragma: no cover
        raise NotImplementedError


# --- a. soft sharing under other names and shapes ------------------------------------------------


def mix(alpha: Tensor, bank: Tensor) -> Tensor:
    """``Σ_k alpha_k · bank_k`` for a bank ``(K, *weight)``."""
    return torch.tensordot(alpha.reshape(-1), bank, 1)


class MixConv(nn.Module):
    """``conv2d(x, Σ_k alpha_k · bank_k, padding=1)`` as a module of its own (``wrap=True``): the
    parent passes the coefficients and the bank."""

    def forward(self, x: Tensor, alpha: Tensor, bank: Tensor) -> Tensor:
        return F.conv2d(x, mix(alpha, bank), padding=1)


class BankConv(nn.Module):
    """``conv2d(x, Σ_k alpha_k · bank_k)`` then its own BatchNorm; the bank is not registered here
    (the module holding the bank passes it in, or a tuple keeps a reference to it). With ``wrap``
    the conv is the child module ``conv`` (:class:`MixConv`), else it is called inline."""

    def __init__(
        self, k: int, width: int, alpha_shape: str, bank: nn.Parameter | None = None,
        wrap: bool = False,
    ):  # fmt: skip
        super().__init__()
        self.alpha = nn.Parameter(torch.randn(ALPHA_SHAPES[alpha_shape](k)))
        self.bn = nn.BatchNorm2d(width)
        self._bank = (bank,)  # a tuple: not a registration
        self.conv = MixConv() if wrap else None

    def forward(self, x: Tensor, bank: Tensor | None = None) -> Tensor:
        bank = self._bank[0] if bank is None else bank
        if self.conv is not None:
            return F.relu(self.bn(self.conv(x, self.alpha, bank)))
        return F.relu(self.bn(F.conv2d(x, mix(self.alpha, bank), padding=1)))


class SoftBankNet(_Net):
    """One bank ``w_bank`` ``(K, W, W, 3, 3)`` at the top; ``layers`` BankConvs.

    ``alpha_shapes`` cycles over the layers (``"k"``, ``"1k"``, ``"k1111"``). ``nested`` puts the
    layers in ``stages.<s>.<j>.<a|b>`` (a ModuleList of Sequentials of ModuleDicts) instead of
    ``blocks.<i>``. ``tied`` pairs ``(i, j)``: layer j uses layer i's ``alpha`` Parameter.
    """

    def __init__(
        self,
        k: int = 3,
        width: int = 4,
        layers: int = 4,
        alpha_shapes: Sequence[str] = ("k",),
        nested: bool = False,
        tied: Sequence[tuple[int, int]] = (),
        in_channels: int = 1,
        classes: int = 10,
        wrap: bool = False,
    ):
        super().__init__(in_channels, width, classes)
        self.w_bank = nn.Parameter(torch.randn(k, width, width, 3, 3) / (3 * width**0.5))
        convs = [
            BankConv(k, width, alpha_shapes[i % len(alpha_shapes)], self.w_bank, wrap)
            for i in range(layers)
        ]
        for i, j in tied:
            convs[j].alpha = convs[i].alpha
        self._order = convs  # forward order (a list: no registration)
        if nested:
            self.stages = nn.ModuleList()
            for s in range(0, layers, 4):
                pairs = [convs[t : t + 2] for t in range(s, min(s + 4, layers), 2)]
                self.stages.append(
                    nn.Sequential(*(nn.ModuleDict(dict(zip("ab", p, strict=False))) for p in pairs))
                )
        else:
            self.blocks = nn.ModuleList(convs)

    def body(self, x: Tensor) -> Tensor:
        for conv in self._order:
            x = conv(x, self.w_bank)
        return x

    def mixing(self) -> list[nn.Parameter]:
        return [conv.alpha for conv in self._order]

    def layer_names(self) -> list[str]:
        """The module path of every layer, in forward order."""
        ids = {id(m): n for n, m in self.named_modules(remove_duplicate=False)}
        return [ids[id(conv)] for conv in self._order]


class BankStage(nn.Module):
    """A stage holding its own bank ``w_bank`` and the BankConvs drawing from it."""

    def __init__(self, k: int, width: int, layers: int, wrap: bool = False):
        super().__init__()
        self.w_bank = nn.Parameter(torch.randn(k, width, width, 3, 3) / (3 * width**0.5))
        self.layers = nn.ModuleList(BankConv(k, width, "k", wrap=wrap) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.layers:
            x = conv(x, self.w_bank)
        return x


class TwoBankNet(_Net):
    """Two stages of widths ``width`` and ``2 * width``, each with its bank; a plain 1×1 conv
    ``widen`` between them."""

    def __init__(
        self, k: tuple[int, int] = (3, 3), width: int = 4, layers: tuple[int, int] = (3, 3),
        in_channels: int = 1, classes: int = 10, wrap: bool = False,
    ):  # fmt: skip
        super().__init__(in_channels, width, classes)
        self.stage1 = BankStage(k[0], width, layers[0], wrap)
        self.widen = nn.Conv2d(width, 2 * width, 1)
        self.stage2 = BankStage(k[1], 2 * width, layers[1], wrap)
        self.head = nn.Linear(2 * width, classes)

    def body(self, x: Tensor) -> Tensor:
        return self.stage2(F.relu(self.widen(self.stage1(x))))

    def mixing(self) -> list[nn.Parameter]:
        return [c.alpha for s in (self.stage1, self.stage2) for c in s.layers]


class BankLinear(nn.Module):
    """``linear(x, Σ_k mix_k · bank_k, bias)`` as a module of its own (``wrap=True``)."""

    def forward(self, x: Tensor, coefficients: Tensor, bank: Tensor, bias: Tensor) -> Tensor:
        return F.linear(x, mix(coefficients, bank), bias)


class MixLinear(nn.Module):
    """``linear(x, Σ_k mix_k · bank_k) + bias``: ``mix`` shaped ``(K, 1)``; with ``wrap`` the call
    is the child ``linear`` (:class:`BankLinear`)."""

    def __init__(self, k: int, width: int, wrap: bool = False):
        super().__init__()
        self.mix = nn.Parameter(torch.randn(k, 1))
        self.bias = nn.Parameter(torch.zeros(width))
        self.linear = BankLinear() if wrap else None

    def forward(self, x: Tensor, bank: Tensor) -> Tensor:
        if self.linear is not None:
            return F.relu(self.linear(x, self.mix, bank, self.bias))
        return F.relu(F.linear(x, mix(self.mix, bank), self.bias))


class LinearBankNet(_Net):
    """Conv stem, pool, then ``layers`` linear layers from one bank ``lin_bank`` ``(K, W, W)``."""

    def __init__(
        self, k: int = 3, width: int = 4, layers: int = 4, in_channels: int = 1,
        classes: int = 10, wrap: bool = False,
    ):  # fmt: skip
        super().__init__(in_channels, width, classes)
        self.lin_bank = nn.Parameter(torch.randn(k, width, width) / width**0.5)
        self.mlp = nn.ModuleList(MixLinear(k, width, wrap) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x)).mean(dim=(2, 3))
        for layer in self.mlp:
            x = layer(x, self.lin_bank)
        return self.head(x)

    def mixing(self) -> list[nn.Parameter]:
        return [layer.mix for layer in self.mlp]


# --- b. hard ties ------------------------------------------------------------------------------


class TiedBlocksNet(_Net):
    """``runs`` of consecutive blocks: each run reuses one conv module, every block keeps its own
    BatchNorm (``blocks.<i>.bn``). With ``holder`` the network also registers the shared convs
    as ``shared.<r>`` (a key that is not a use: the module is only called through the blocks)."""

    def __init__(
        self, width: int = 4, runs: Sequence[int] = (3,), holder: bool = False,
        in_channels: int = 1, classes: int = 10,
    ):  # fmt: skip
        super().__init__(in_channels, width, classes)
        shared = [nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in runs]
        if holder:
            self.shared = nn.ModuleList(shared)
        self.blocks = nn.ModuleList()
        for r, length in enumerate(runs):
            for _ in range(length):
                block = nn.Module()
                block.conv = shared[r]
                block.bn = nn.BatchNorm2d(width)
                self.blocks.append(block)

    def body(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = F.relu(block.bn(block.conv(x)))
        return x

    def mixing(self) -> list[nn.Parameter]:
        return []  # nothing to plant: the tie is exact by construction


# --- c. shared bases ---------------------------------------------------------------------------


def basis_weight(m: Tensor, basis: Tensor, matmul: bool) -> Tensor:
    """``M · B``: ``(O, R)`` times a basis ``(R, I, kh, kw)``, by einsum or by a matmul."""
    r, i, kh, kw = basis.shape
    if matmul:
        return (m @ basis.reshape(r, -1)).reshape(-1, i, kh, kw)
    return torch.einsum("or,rihw->oihw", m, basis)


class BasisConv(nn.Module):
    """``conv2d(x, M · B, padding=1)`` as a module of its own (``wrap=True``)."""

    def __init__(self, matmul: bool):
        super().__init__()
        self.matmul = matmul

    def forward(self, x: Tensor, m: Tensor, basis: Tensor) -> Tensor:
        return F.conv2d(x, basis_weight(m, basis, self.matmul), padding=1)


class BasisNet(_Net):
    """A shared basis ``basis`` ``(R, W, 3, 3)``; layer i's weight is ``M_i · B`` with its own
    ``layers.<i>.m`` ``(W, R)``, computed in forward; its own BatchNorm after each conv."""

    def __init__(
        self, rank: int = 3, width: int = 4, layers: int = 4, in_channels: int = 1,
        classes: int = 10, matmul: bool = False, wrap: bool = False,
    ):  # fmt: skip
        super().__init__(in_channels, width, classes)
        self.basis = nn.Parameter(torch.randn(rank, width, 3, 3) / (3 * width**0.5))
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.m = nn.Parameter(torch.randn(width, rank))
            layer.bn = nn.BatchNorm2d(width)
            if wrap:
                layer.conv = BasisConv(matmul)
            self.layers.append(layer)
        self.matmul, self.wrap = matmul, wrap

    def body(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            if self.wrap:
                y = layer.conv(x, layer.m, self.basis)
            else:
                y = F.conv2d(x, basis_weight(layer.m, self.basis, self.matmul), padding=1)
            x = F.relu(layer.bn(y))
        return x

    def mixing(self) -> list[nn.Parameter]:
        return [layer.m for layer in self.layers]


class BasisBNNet(_Net):
    """A shared basis conv ``basis`` (``W → R``, 3×3) and its BatchNorm ``basis_bn``, then per
    layer a 1×1 conv ``layers.<i>.proj`` (``R → W``, the ``M_i``) and its own BatchNorm."""

    def __init__(
        self, rank: int = 3, width: int = 4, layers: int = 4, in_channels: int = 1,
        classes: int = 10,
    ):  # fmt: skip
        super().__init__(in_channels, width, classes)
        self.basis = nn.Conv2d(width, rank, 3, padding=1, bias=False)
        self.basis_bn = nn.BatchNorm2d(rank)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.proj = nn.Conv2d(rank, width, 1, bias=False)
            layer.bn = nn.BatchNorm2d(width)
            self.layers.append(layer)

    def body(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = F.relu(layer.bn(layer.proj(self.basis_bn(self.basis(x)))))
        return x

    def mixing(self) -> list[nn.Parameter]:
        return [layer.proj.weight for layer in self.layers]


# --- d. a flat parameter store -------------------------------------------------------------------


def windows(store: Tensor, coef: Tensor, start: int, step: int, size: int) -> Tensor:
    """``Σ_j coef_j · store[start + j·step : start + j·step + size]``."""
    cut = [store[start + j * step : start + j * step + size] for j in range(len(coef))]
    return torch.einsum("k,kd->d", coef, torch.stack(cut))


class WindowOp(nn.Module):
    """A conv (``padding=1``) or linear call whose weight mixes windows of a flat store, as a
    module of its own (``wrap=True``): ``forward(x, coef, store[, bias])``."""

    def __init__(self, shape: tuple[int, ...], start: int, step: int):
        super().__init__()
        self.shape, self.start, self.step = shape, start, step

    def forward(self, x: Tensor, coef: Tensor, store: Tensor, bias: Tensor | None = None) -> Tensor:
        size = 1
        for n in self.shape:
            size *= n
        weight = windows(store, coef, self.start, self.step, size).reshape(self.shape)
        if len(self.shape) == 2:
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, padding=1)


class StoreNet(_Net):
    """One 1-d Parameter ``store``. Conv layer i mixes ``K_i`` windows of ``d = W·W·9`` numbers
    starting at ``offset_i · d/2`` and ``d/2`` apart (so windows overlap, within a layer and
    across layers) with its own ``coef`` ``(K_i,)``; the final layer ``fc`` mixes ``K_fc`` windows
    of ``classes·W`` numbers the same way (``F.linear``, its own ``bias``).

    ``layout``: ``(offset_i, K_i)`` per conv layer. Layers with one offset draw from the same
    windows, the first ``min(K)`` of them: that is where :func:`plant` can make them parallel.
    With ``wrap`` each call is a :class:`WindowOp` (``layers.<i>.conv``, ``fc.op``).
    """

    def __init__(
        self, width: int = 4, layout: Sequence[tuple[int, int]] = ((0, 2), (1, 3), (0, 3), (2, 2)),
        fc_k: int = 2, in_channels: int = 1, classes: int = 10, wrap: bool = False,
    ):  # fmt: skip
        super().__init__(in_channels, width, classes)
        del self.head
        self.width, self.classes = width, classes
        d = width * width * 9
        self.step = d // 2
        self.layout = [tuple(x) for x in layout]
        conv_end = max(o * self.step + (k - 1) * self.step + d for o, k in self.layout)
        self.fc_offset = conv_end - self.step  # the fc's windows overlap the last conv windows
        fc_d = classes * width
        self.fc_step = max(1, fc_d // 2)
        end = max(conv_end, self.fc_offset + (fc_k - 1) * self.fc_step + fc_d)
        self.store = nn.Parameter(torch.randn(end) / (3 * width**0.5))
        self.layers = nn.ModuleList()
        for offset, k in self.layout:
            layer = nn.Module()
            layer.coef = nn.Parameter(torch.randn(k))
            layer.bn = nn.BatchNorm2d(width)
            if wrap:
                layer.conv = WindowOp((width, width, 3, 3), offset * self.step, self.step)
            self.layers.append(layer)
        self.fc = nn.Module()
        self.fc.coef = nn.Parameter(torch.randn(fc_k))
        self.fc.bias = nn.Parameter(torch.zeros(classes))
        if wrap:
            self.fc.op = WindowOp((classes, width), self.fc_offset, self.fc_step)
        self.wrap = wrap

    def body(self, x: Tensor) -> Tensor:
        w, d = self.width, self.width * self.width * 9
        for (offset, _), layer in zip(self.layout, self.layers, strict=True):
            if self.wrap:
                y = layer.conv(x, layer.coef, self.store)
            else:
                weight = windows(self.store, layer.coef, offset * self.step, self.step, d)
                y = F.conv2d(x, weight.reshape(w, w, 3, 3), padding=1)
            x = F.relu(layer.bn(y))
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(F.relu(self.stem(x))).mean(dim=(2, 3))
        if self.wrap:
            return self.fc.op(x, self.fc.coef, self.store, self.fc.bias)
        fc_d = self.classes * self.width
        weight = windows(self.store, self.fc.coef, self.fc_offset, self.fc_step, fc_d)
        return F.linear(x, weight.reshape(self.classes, self.width), self.fc.bias)

    def mixing(self) -> list[nn.Parameter]:
        return [layer.coef for layer in self.layers]


# --- planting ----------------------------------------------------------------------------------

SCALES = (-1.5, 0.5, 2.0, -0.75)


def plant(model: nn.Module, groups: Sequence[Sequence[int]]) -> nn.Module:
    """Make the layers of every group exactly parallel: each member's coefficients are a scale
    (from :data:`SCALES`) times the first member's, zero-padded where its K is larger (a
    :class:`StoreNet` layer with the same offset draws the same first windows). Layers sharing a
    coefficient Parameter need not be planted (they already are one vector)."""
    params = model.mixing()
    with torch.no_grad():
        for group in groups:
            first = params[group[0]]
            for n, member in enumerate(group[1:]):
                target = params[member]
                if target is first:
                    continue
                if target.numel() < first.numel():
                    raise ValueError(
                        f"plant: layer {member} has fewer coefficients than {group[0]}"
                    )
                if (
                    isinstance(model, StoreNet)
                    and model.layout[member][0] != model.layout[group[0]][0]
                ):
                    raise ValueError(f"plant: layers {group[0]} and {member} draw other windows")
                flat = torch.zeros(target.numel())
                flat[: first.numel()] = first.reshape(-1)[: target.numel()]
                target.copy_((SCALES[n % len(SCALES)] * flat).reshape(target.shape))
    return model
