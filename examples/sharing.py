"""Five small CNNs that share parameters across layers in the ways ``ssc`` reads (issue 13).

Plain torch, no ssc import: this is "your own code", the file ``--model`` names, e.g.
``ssc analyze sample_checkpoints/sharing/basis.pt --model examples/sharing.py:basis``. Each
zero-argument factory builds one network for scikit-learn's digits (``--data digits``: 1×8×8
images, 10 classes); ``scripts/make_sharing_samples.py`` trains each briefly and saves its state
dict as ``sample_checkpoints/sharing/<name>.pt``.

Every network is a stem conv (``1 → WIDTH``), a body of shared layers (3×3 convs on ``WIDTH``
channels, each followed by its own BatchNorm and a ReLU), a 2×2 average pool and a linear head:

* :func:`soft` — soft sharing under other names: one bank ``w_bank`` ``(K, W, W, 3, 3)`` held by
  the top module, per-layer coefficients ``blocks.<i>.conv.alpha`` shaped ``(K,)``, ``(1, K)`` or
  ``(K, 1, 1, 1, 1)``; ``W_i = Σ_k alpha_ik · bank_k``.
* :func:`tied` — hard ties: one conv module reused by consecutive blocks (``blocks.0-2.conv`` is
  one module, ``blocks.3-4.conv`` another), every block with its own BatchNorm.
* :func:`basis` — a shared basis: ``basis`` ``(R, W, 3, 3)``, per-layer ``layers.<i>.conv.m``
  ``(W, R)``, ``W_i = M_i · B`` computed in ``forward``.
* :func:`basis_bn` — a shared basis conv ``basis`` (``W → R``, 3×3), then per layer a BatchNorm
  ``layers.<i>.basis_bn`` and a 1×1 conv ``layers.<i>.proj`` (``R → W``).
* :func:`store` — a flat store: one 1-d ``store``; each conv layer mixes ``K_i`` overlapping
  windows of it with its own ``coef``, and so does the linear head ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTH = 8
CLASSES = 10
POOL = 2  # the body's output is average-pooled to POOL×POOL before the head


class _Net(nn.Module):
    """Stem conv ``1 → WIDTH``, :meth:`body`, a 2×2 average pool, a linear head."""

    def __init__(self, width: int = WIDTH, classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Linear(width * POOL * POOL, classes)

    def body(self, x: Tensor) -> Tensor:  # pragma: no cover - every network has its own
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.body(F.relu(self.stem(x))), POOL).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def mixing(self) -> list[nn.Parameter]:
        """The coefficients that make each shared layer's weight, in forward order."""
        return []


# --- 1. soft sharing under other names and shapes ------------------------------------------------
#
# Every shared conv is a module of its own (it takes ``x`` and the bank, returns the conv): that is
# what ``ssc fold --model`` replaces. A conv called inline in a bigger module's forward is found
# by ``analyze --model`` too, but cannot be folded.


class MixedConv(nn.Module):
    """``conv2d(x, Σ_k alpha_k · bank_k)``; the bank is passed in by the module that holds it."""

    def __init__(self, k: int, shape: tuple[int, ...]):
        super().__init__()
        self.alpha = nn.Parameter(torch.randn(shape) / k**0.5)

    def forward(self, x: Tensor, bank: Tensor) -> Tensor:
        w = torch.einsum("k,koihw->oihw", self.alpha.reshape(-1), bank)
        return F.conv2d(x, w, padding=1)


class SoftBankNet(_Net):
    def __init__(self, k: int = 4, layers: int = 5, width: int = WIDTH):
        super().__init__(width)
        self.w_bank = nn.Parameter(torch.randn(k, width, width, 3, 3) / (3 * width**0.5))
        shapes = [(k,), (1, k), (k, 1, 1, 1, 1)]
        self.blocks = nn.ModuleList()
        for i in range(layers):
            block = nn.Module()
            block.conv = MixedConv(k, shapes[i % 3])
            block.bn = nn.BatchNorm2d(width)
            self.blocks.append(block)

    def body(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = F.relu(block.bn(block.conv(x, self.w_bank)))
        return x

    def mixing(self) -> list[nn.Parameter]:
        return [block.conv.alpha for block in self.blocks]


# --- 2. hard ties ---------------------------------------------------------------------------------


class TiedBlocksNet(_Net):
    def __init__(self, runs: tuple[int, ...] = (3, 2), width: int = WIDTH):
        super().__init__(width)
        self.blocks = nn.ModuleList()
        for length in runs:
            conv = nn.Conv2d(width, width, 3, padding=1, bias=False)  # one module per run
            for _ in range(length):
                block = nn.Module()
                block.conv = conv
                block.bn = nn.BatchNorm2d(width)
                self.blocks.append(block)

    def body(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = F.relu(block.bn(block.conv(x)))
        return x


# --- 3. shared bases ------------------------------------------------------------------------------


class BasisConv(nn.Module):
    """``conv2d(x, M · B)``: its own ``m`` ``(W, R)`` times the shared basis ``B`` passed in."""

    def __init__(self, width: int, rank: int):
        super().__init__()
        self.m = nn.Parameter(torch.randn(width, rank) / rank**0.5)

    def forward(self, x: Tensor, basis: Tensor) -> Tensor:
        return F.conv2d(x, torch.einsum("or,rihw->oihw", self.m, basis), padding=1)


class BasisNet(_Net):
    def __init__(self, rank: int = 4, layers: int = 4, width: int = WIDTH):
        super().__init__(width)
        self.basis = nn.Parameter(torch.randn(rank, width, 3, 3) / (3 * width**0.5))
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.conv = BasisConv(width, rank)
            layer.bn = nn.BatchNorm2d(width)
            self.layers.append(layer)

    def body(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = F.relu(layer.bn(layer.conv(x, self.basis)))
        return x

    def mixing(self) -> list[nn.Parameter]:
        return [layer.conv.m for layer in self.layers]


class BasisBNNet(_Net):
    def __init__(self, rank: int = 4, layers: int = 4, width: int = WIDTH):
        super().__init__(width)
        self.basis = nn.Conv2d(width, rank, 3, padding=1, bias=False)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.basis_bn = nn.BatchNorm2d(rank)  # its own: one BatchNorm for every call would
            # keep running statistics of all the layers' inputs mixed together
            layer.proj = nn.Conv2d(rank, width, 1, bias=False)
            layer.bn = nn.BatchNorm2d(width)
            self.layers.append(layer)

    def body(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = F.relu(layer.bn(layer.proj(layer.basis_bn(self.basis(x)))))
        return x

    def mixing(self) -> list[nn.Parameter]:
        return [layer.proj.weight for layer in self.layers]


# --- 4. a flat parameter store --------------------------------------------------------------------


def windows(store: Tensor, coef: Tensor, start: int, step: int, size: int) -> Tensor:
    """``Σ_j coef_j · store[start + j·step : start + j·step + size]``."""
    cut = [store[start + j * step : start + j * step + size] for j in range(len(coef))]
    return torch.einsum("k,kd->d", coef, torch.stack(cut))


class StoreConv(nn.Module):
    """A 3×3 conv whose weight mixes ``k`` windows of the store passed in, ``step`` apart."""

    def __init__(self, width: int, k: int, start: int, step: int):
        super().__init__()
        self.width, self.start, self.step = width, start, step
        self.coef = nn.Parameter(torch.randn(k) / k**0.5)

    def forward(self, x: Tensor, store: Tensor) -> Tensor:
        w = windows(store, self.coef, self.start, self.step, self.width * self.width * 9)
        return F.conv2d(x, w.reshape(self.width, self.width, 3, 3), padding=1)


class StoreLinear(nn.Module):
    """A linear layer whose weight mixes ``k`` windows of the store, with its own bias."""

    def __init__(self, features: int, classes: int, k: int, start: int, step: int):
        super().__init__()
        self.features, self.classes, self.start, self.step = features, classes, start, step
        self.coef = nn.Parameter(torch.randn(k) / k**0.5)
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x: Tensor, store: Tensor) -> Tensor:
        w = windows(store, self.coef, self.start, self.step, self.classes * self.features)
        return F.linear(x, w.reshape(self.classes, self.features), self.bias)


class StoreNet(_Net):
    """Conv layer i mixes ``K_i`` windows of ``d = W·W·9`` numbers of ``store``, starting at
    ``offset_i · d/2`` and ``d/2`` apart (windows overlap within and across layers); the head
    ``fc`` mixes ``fc_k`` windows of ``classes · W · 4`` numbers, the first overlapping the last
    conv windows. Layers with one offset draw the same first windows."""

    def __init__(
        self,
        layout: tuple[tuple[int, int], ...] = ((0, 2), (2, 3), (0, 3), (2, 2)),
        fc_k: int = 2,
        width: int = WIDTH,
        classes: int = CLASSES,
    ):
        super().__init__(width, classes)
        del self.head
        d = width * width * 9
        step = d // 2
        conv_end = max((o + k - 1) * step + d for o, k in layout)
        features = width * POOL * POOL
        fc_step = classes * features // 2
        end = max(conv_end, conv_end - step + (fc_k - 1) * fc_step + classes * features)
        self.store = nn.Parameter(torch.randn(end) / (3 * width**0.5))
        self.layers = nn.ModuleList()
        for offset, k in layout:
            layer = nn.Module()
            layer.conv = StoreConv(width, k, offset * step, step)
            layer.bn = nn.BatchNorm2d(width)
            self.layers.append(layer)
        self.fc = StoreLinear(features, classes, fc_k, conv_end - step, fc_step)

    def body(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = F.relu(layer.bn(layer.conv(x, self.store)))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x), self.store)

    def mixing(self) -> list[nn.Parameter]:
        return [layer.conv.coef for layer in self.layers]


# --- the factories --model names --------------------------------------------------------------


def soft() -> nn.Module:
    return SoftBankNet()


def tied() -> nn.Module:
    return TiedBlocksNet()


def basis() -> nn.Module:
    return BasisNet()


def basis_bn() -> nn.Module:
    return BasisBNNet()


def store() -> nn.Module:
    return StoreNet()


FACTORIES = {"soft": soft, "tied": tied, "basis": basis, "basis_bn": basis_bn, "store": store}
