"""The trace of one forward pass (analysis/trace.py) and its shared groups (trace_groups.py).

Small networks of our own, one per way of sharing; what each call's weight is computed from is
known by construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from soft_share_cli.analysis.trace import probe_shape, trace_network
from soft_share_cli.analysis.trace_groups import BASIS, HARD_TIE, SOFT, call_names, shared_groups
from soft_share_cli.errors import InputError

W = 6  # channels


class Mixed(nn.Module):
    """Authors-style layers (a bank mixed by alpha), a hard tie, M_i @ B inline, a flat store
    cut into overlapping windows (a conv and a linear from it), and a hypernetwork."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, W, 3, padding=1)
        self.templates = nn.Parameter(torch.randn(2, W, W, 3, 3))
        self.alpha = nn.ParameterList([nn.Parameter(torch.randn(2)) for _ in range(2)])
        self.tie = nn.Conv2d(W, W, 3, padding=1)
        self.bns = nn.ModuleList([nn.BatchNorm2d(W) for _ in range(2)])
        self.basis = nn.Parameter(torch.randn(3, W * 9))
        self.m = nn.ParameterList([nn.Parameter(torch.randn(W, 3)) for _ in range(2)])
        self.store = nn.Parameter(torch.randn(W * W * 9 + 40))
        self.hyper = nn.Linear(W, W * W)
        self.fc_bias = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # call 0
        for a in self.alpha:  # calls 1, 2
            x = F.conv2d(x, torch.tensordot(a, self.templates, 1), padding=1)
        for bn in self.bns:  # calls 3, 4
            x = bn(F.relu(self.tie(x)))
        for m in self.m:  # calls 5, 6
            x = F.conv2d(x, (m @ self.basis).view(W, W, 3, 3), padding=1)
        n = W * W * 9
        x = F.conv2d(x, (self.store[:n] + self.store[40 : 40 + n]).view(W, W, 3, 3), padding=1)
        h = self.hyper(x.mean((0, 2, 3)))  # call 8
        x = F.conv2d(x, h.view(W, W, 1, 1))  # call 9: input-dependent
        fc = self.store[10 : 10 + 4 * W].view(4, W)
        return F.linear(x.mean((2, 3)), fc, self.fc_bias)  # call 10


@pytest.fixture(scope="module")
def mixed() -> tuple[Mixed, object]:
    torch.manual_seed(0)
    model = Mixed()
    return model, trace_network(model, torch.randn(2, 3, 8, 8))


def test_every_call_with_what_its_weight_is_computed_from(mixed) -> None:
    model, trace = mixed
    ops = [c.op for c in trace.calls]
    assert ops == ["conv2d"] * 8 + ["linear", "conv2d", "linear"]
    sources = [set(c.sources) for c in trace.calls]
    assert sources[0] == {"stem.weight"}
    assert sources[1] == {"templates", "alpha.0"} and sources[2] == {"templates", "alpha.1"}
    assert sources[3] == sources[4] == {"tie.weight"}
    assert sources[5] == {"basis", "m.0"} and sources[6] == {"basis", "m.1"}
    assert sources[7] == {"store"} and sources[10] == {"store"}
    assert {"hyper.weight", "hyper.bias"} <= sources[9]
    direct = [c.direct for c in trace.calls]
    assert direct[0] == "stem.weight" and direct[3] == direct[4] == "tie.weight"
    assert direct[8] == "hyper.weight"
    assert all(direct[i] is None for i in (1, 2, 5, 6, 7, 9, 10))
    assert [c.dynamic for c in trace.calls] == [False] * 9 + [True, False]
    # the weight used is recorded: the mix of the templates, exactly
    expected = torch.tensordot(model.alpha[1].detach(), model.templates.detach(), 1)
    assert torch.equal(trace.calls[2].weight, expected)
    assert trace.calls[10].weight_shape == (4, W)
    assert trace.calls[0].bias == "stem.bias" and trace.calls[1].bias is None
    assert trace.calls[10].bias == "fc_bias"
    assert dict(trace.calls[3].geometry)["padding"] == (1, 1)  # as nn.Conv2d passes it
    assert dict(trace.calls[1].geometry)["padding"] == 1
    # storages once: the parameter count is the model's
    assert sum(trace.parameters.values()) == sum(p.numel() for p in model.parameters())


def test_layers_and_what_feeds_each_call(mixed) -> None:
    _, trace = mixed
    layers = [c.layer for c in trace.calls]
    assert layers[0] == "stem" and layers[3] == layers[4] == "tie" and layers[8] == "hyper"
    assert all(layers[i] is None for i in (1, 2, 5, 6, 7, 9, 10))  # inline calls
    # through relu and BatchNorm, each call reads the previous one's output
    assert [c.inputs_from for c in trace.calls[1:8]] == [(i,) for i in range(7)]
    names = call_names(trace)
    assert names[0] == "stem" and names[3:5] == ["tie[0]", "tie[1]"]
    assert names[1] == "<network>:conv2d#1" and len(set(names)) == len(names)


def test_groups_and_their_kinds(mixed) -> None:
    _, trace = mixed
    groups = {g.name: g for g in shared_groups(trace)}
    assert set(groups) == {"templates", "tie.weight", "basis"}
    assert (groups["templates"].kind, groups["templates"].calls) == (SOFT, (1, 2))
    assert (groups["tie.weight"].kind, groups["tie.weight"].calls) == (HARD_TIE, (3, 4))
    assert (groups["basis"].kind, groups["basis"].calls) == (SOFT, (5, 6))
    # the store feeds a conv and a linear: weights of two shapes never merge; the hypernetwork's
    # input-dependent conv is never grouped
    grouped = {i for g in groups.values() for i in g.calls}
    assert not grouped & {7, 8, 9, 10}
    assert "2 calls" in groups["tie.weight"].rule


class BasisConv(nn.Module):
    """A hard-tied basis conv -> a BatchNorm -> a per-layer 1x1 conv, three times."""

    def __init__(self) -> None:
        super().__init__()
        self.basis = nn.Conv2d(W, 4, 3, padding=1, bias=False)
        self.bns = nn.ModuleList([nn.BatchNorm2d(4) for _ in range(3)])
        self.mix = nn.ModuleList([nn.Conv2d(4, W, 1) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for bn, mix in zip(self.bns, self.mix, strict=True):
            x = F.relu(mix(bn(self.basis(x))))
        return x


def test_a_basis_conv_feeding_per_layer_convs_is_a_basis_group() -> None:
    trace = trace_network(BasisConv(), torch.randn(2, W, 5, 5))
    groups = shared_groups(trace)
    assert [(g.kind, g.calls) for g in groups] == [(HARD_TIE, (0, 2, 4)), (BASIS, (1, 3, 5))]
    assert groups[1].shared == ("basis.weight",) and groups[1].weight_shape == (W, 4, 1, 1)
    assert [trace.calls[i].inputs_from for i in (1, 3, 5)] == [(0,), (2,), (4,)]
    assert call_names(trace) == ["basis[0]", "mix.0", "basis[1]", "mix.1", "basis[2]", "mix.2"]


class Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(W, W, 3, padding=1)
        self.blocks = nn.ModuleList([conv, conv, conv])  # one module, three places

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def test_a_module_reused_is_one_layer_used_again() -> None:
    model = Reused()
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    trace = trace_network(model, torch.randn(1, W, 4, 4))
    assert [c.layer for c in trace.calls] == ["blocks.0"] * 3
    (group,) = shared_groups(trace)
    assert group.kind == HARD_TIE and group.calls == (0, 1, 2)
    assert trace.parameters == {"blocks.0.weight": W * W * 9, "blocks.0.bias": W}
    # the pass leaves the network as it was
    assert model.training and [p.requires_grad for p in model.parameters()] == flags


class NoGrad(nn.Module):
    """Weights made under no_grad: their graph is cut, so they show as unshared (documented)."""

    def __init__(self) -> None:
        super().__init__()
        self.templates = nn.Parameter(torch.randn(2, W, W))
        self.alpha = nn.Parameter(torch.randn(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for a in self.alpha:
            with torch.no_grad():
                w = torch.tensordot(a, self.templates, 1)
            x = F.linear(x, w)
        return x


def test_weights_made_without_gradients_are_not_traced_to_parameters() -> None:
    trace = trace_network(NoGrad(), torch.randn(2, W))
    assert [c.sources for c in trace.calls] == [(), ()]
    assert shared_groups(trace) == []


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom\nsecond line")


def test_a_network_that_fails_on_the_probe_is_one_line_input_error() -> None:
    with pytest.raises(InputError) as info:
        trace_network(Broken(), torch.randn(1, 3, 8, 8))
    assert "RuntimeError: boom" in str(info.value) and "\n" not in str(info.value)


class OnlyEight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_probe_shape_finds_the_input_the_network_takes() -> None:
    assert probe_shape(OnlyEight(), size=8) == (1, 8, 8)
    assert probe_shape(nn.Linear(5, 2)) == (5,)
    with pytest.raises(InputError, match="none of the probe inputs"):
        probe_shape(OnlyEight(), size=32)


class StoreTwoShapes(nn.Module):
    """One flat store feeding two convs and two linear layers, in place on its input."""

    def __init__(self) -> None:
        super().__init__()
        self.store = nn.Parameter(torch.randn(W * W * 9 + 50))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)  # in place on the network's input
        n = W * W * 9
        for offset in (0, 50):
            x = F.conv2d(x, self.store[offset : offset + n].view(W, W, 3, 3), padding=1)
        y = x.mean((2, 3))
        for offset in (7, 9):
            y = F.linear(y, self.store[offset : offset + W * W].view(W, W))
        return y


def test_one_store_feeding_two_shapes_is_two_groups_with_distinct_names() -> None:
    trace = trace_network(StoreTwoShapes(), torch.randn(2, W, 5, 5))
    groups = shared_groups(trace)
    assert [(g.kind, g.calls, g.shared) for g in groups] == [
        (SOFT, (0, 1), ("store",)),
        (SOFT, (2, 3), ("store",)),
    ]
    assert groups[0].name == "store" and groups[1].name == f"store@{W}x{W}"
