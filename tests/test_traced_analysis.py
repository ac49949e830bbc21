"""Exact discovery with ``--model`` (analysis/traced.py, ``ssc analyze|plot-similarity --model``).

One small network of our own per way of sharing (written to ``tmp_path`` and built through
``--model``'s own loader), with exactly parallel or tied structure planted. Every figure the
tests expect is computed here from the networks' sizes, not read back from the analysis."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from soft_share_cli.analysis.analyze import AnalysisOptions
from soft_share_cli.analysis.defaults import Metric
from soft_share_cli.analysis.traced import analyze_traced
from soft_share_cli.models.user import load_factory

NETS = r"""
import torch
import torch.nn.functional as F
from torch import nn


def _stem(width):
    return nn.Conv2d(3, width, 3, padding=1)


class Templates(nn.Module):
    def __init__(self, k, width):
        super().__init__()
        self.weight_bank = nn.Parameter(torch.randn(k, width, width, 3, 3) * 0.1)


class SConv(nn.Module):
    '''Authors-style: a bank of K templates mixed by this layer's alpha.'''

    def __init__(self, bank, k):
        super().__init__()
        self.bank = bank
        self.alpha = nn.Parameter(torch.randn(k))

    def forward(self, x):
        return F.conv2d(x, torch.tensordot(self.alpha, self.bank.weight_bank, 1), padding=1)


class SoftNet(nn.Module):
    def __init__(self, width=8, depth=4, k=3):
        super().__init__()
        self.stem = _stem(width)
        self.bank = Templates(k, width)
        self.layers = nn.ModuleList([SConv(self.bank, k) for _ in range(depth)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(depth)])
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer, bn in zip(self.layers, self.bns):
            x = F.relu(bn(layer(x)))
        return self.fc(x.mean((2, 3)))


class TiedNet(nn.Module):
    '''One conv module reused by consecutive blocks that keep their own BatchNorms.'''

    def __init__(self, width=8, depth=3):
        super().__init__()
        self.stem = _stem(width)
        self.shared = nn.Conv2d(width, width, 3, padding=1)
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(depth)])
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for bn in self.bns:
            x = F.relu(bn(self.shared(x)))
        return self.fc(x.mean((2, 3)))


class Basis(nn.Module):
    def __init__(self, rank, width):
        super().__init__()
        self.filters = nn.Parameter(torch.randn(rank, width * 9) * 0.1)


class BasisLayer(nn.Module):
    '''W_i = M_i @ B, computed inside the layer: M_i is an O x R matrix.'''

    def __init__(self, basis, width, rank):
        super().__init__()
        self.basis = basis
        self.m = nn.Parameter(torch.randn(width, rank))
        self.width = width

    def forward(self, x):
        w = (self.m @ self.basis.filters).view(self.width, -1, 3, 3)
        return F.conv2d(x, w, padding=1)


class MatBasisNet(nn.Module):
    def __init__(self, width=8, depth=4, rank=4):
        super().__init__()
        self.stem = _stem(width)
        self.basis = Basis(rank, width)
        self.layers = nn.ModuleList([BasisLayer(self.basis, width, rank) for _ in range(depth)])
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.fc(x.mean((2, 3)))


class BasisConvNet(nn.Module):
    '''A shared basis conv of R filters -> a per-layer BatchNorm -> a per-layer 1x1 conv.'''

    def __init__(self, width=8, depth=3, rank=4):
        super().__init__()
        self.stem = _stem(width)
        self.basis = nn.Conv2d(width, rank, 3, padding=1, bias=False)
        self.bns = nn.ModuleList([nn.BatchNorm2d(rank) for _ in range(depth)])
        self.mix = nn.ModuleList([nn.Conv2d(rank, width, 1) for _ in range(depth)])
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for bn, mix in zip(self.bns, self.mix):
            x = F.relu(mix(bn(self.basis(x))))
        return self.fc(x.mean((2, 3)))


class StoreNet(nn.Module):
    '''One flat parameter vector; each conv mixes K_i overlapping windows of it (K varies by
    layer) with its own coefficients; the classifier's weight is another window of it.'''

    def __init__(self, width=8, windows=((0, 100), (50, 150, 300), (0, 100)), extra=64):
        super().__init__()
        self.width = width
        self.windows = [tuple(w) for w in windows]
        size = width * width * 9
        top = max(o for w in self.windows for o in w) + size
        self.fc_offset = top - 10 * width - extra  # overlaps the conv windows
        self.store = nn.Parameter(torch.randn(top) * 0.1)
        self.coefficients = nn.ParameterList([nn.Parameter(torch.randn(len(w))) for w in windows])
        self.stem = _stem(width)
        self.fc_bias = nn.Parameter(torch.zeros(10))

    def weight(self, i):
        size = self.width * self.width * 9
        parts = [self.store[o : o + size] for o in self.windows[i]]
        w = sum(c * p for c, p in zip(self.coefficients[i], parts))
        return w.view(self.width, self.width, 3, 3)

    def forward(self, x):
        x = self.stem(x)
        for i in range(len(self.windows)):
            x = F.relu(F.conv2d(x, self.weight(i), padding=1))
        fc = self.store[self.fc_offset : self.fc_offset + 10 * self.width].view(10, self.width)
        return F.linear(x.mean((2, 3)), fc, self.fc_bias)


class HyperNet(nn.Module):
    '''Two convs whose weights a hypernetwork makes from the input: never shared.'''

    def __init__(self, width=8):
        super().__init__()
        self.width = width
        self.stem = _stem(width)
        self.hyper = nn.Linear(width, 2 * width * width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        h = self.hyper(x.mean((0, 2, 3)))
        n = self.width * self.width
        for part in (h[:n], h[n:]):
            x = F.relu(F.conv2d(x, part.view(self.width, self.width, 1, 1)))
        return self.fc(x.mean((2, 3)))


class ReusedSConvNet(nn.Module):
    '''One SConv module used at two places: one coefficient vector, two calls.'''

    def __init__(self, width=8, k=2):
        super().__init__()
        self.stem = _stem(width)
        self.bank = Templates(k, width)
        self.once = SConv(self.bank, k)
        self.twice = SConv(self.bank, k)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in (self.once, self.twice, self.once):
            x = F.relu(layer(x))
        return self.fc(x.mean((2, 3)))


class TiedFlat8(TiedNet):
    '''A tie whose classifier reads 8 x 8 feature maps: only an 8 x 8 probe runs it.'''

    def __init__(self, width=4, depth=2):
        super().__init__(width, depth)
        self.fc = nn.Linear(width * 64, 10)

    def forward(self, x):
        x = self.stem(x)
        for bn in self.bns:
            x = F.relu(bn(self.shared(x)))
        return self.fc(x.flatten(1))


def reused_sconv():
    return ReusedSConvNet()


def tied_flat8():
    return TiedFlat8()


def soft_small():
    return SoftNet(8, 4, 3)


def soft_wide():
    return SoftNet(12, 5, 2)


def tied_small():
    return TiedNet(8, 3)


def tied_wide():
    return TiedNet(16, 4)


def mat_basis():
    return MatBasisNet(8, 4, 4)


def mat_basis_full():
    return MatBasisNet(6, 4, 6)


def basis_conv():
    return BasisConvNet(8, 3, 4)


def store_net():
    return StoreNet()


def hyper_net():
    return HyperNet()


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        raise ValueError("this network is broken\nsecond line")


def broken():
    return Broken()
"""

THRESHOLD = 0.99


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def build(nets: Path, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_factory(f"{nets}:{name}")().eval()


def probe() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def analyze(model: torch.nn.Module, metric: Metric = Metric.COEFFICIENTS):
    return analyze_traced(model, probe(), AnalysisOptions(threshold=THRESHOLD, metric=metric))


def set_(parameter: torch.nn.Parameter, value) -> None:
    with torch.no_grad():
        parameter.copy_(torch.as_tensor(value, dtype=parameter.dtype).reshape(parameter.shape))


def stem(w: int) -> int:
    return 3 * w * 9 + w


def fc(w: int) -> int:
    return 10 * w + 10


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(abs(a @ b) / (a.norm() * b.norm()))


def assert_folded_weights_are_the_traced_ones(traced) -> None:
    """For every kind, cluster c's weight is tensordot(directions[c], templates) and layer j's
    is that times its scale: exactly the weight traced when the cluster is exactly parallel."""
    for group, result in zip(traced.groups, traced.results, strict=True):
        templates = torch.as_tensor(result.bank.templates).double()
        for j, call in enumerate(group.calls):
            layer = result.fold.layers[j]
            direction = torch.as_tensor(result.fold.directions[layer.cluster])
            folded = layer.scale * torch.tensordot(direction, templates, 1)
            traced_weight = traced.trace.calls[call].weight.double()
            assert torch.allclose(folded, traced_weight, rtol=1e-5, atol=1e-6), (group.name, j)


SOFT_CASES = {
    # name: (width, K, alphas) with exactly parallel layers planted
    "soft_small": (8, 3, [[1, 0, 0.5], [2, 0, 1], [0, 1, -1], [0, -3, 3]]),
    "soft_wide": (12, 2, [[1, 0.2], [0.25, 2], [-2, -0.4], [0.75, 6], [0.5, 0.1]]),
}


@pytest.mark.parametrize("name", sorted(SOFT_CASES))
def test_authors_style_bank_mixed_by_alpha(nets: Path, name: str) -> None:
    w, k, alphas = SOFT_CASES[name]
    model = build(nets, name)
    for layer, alpha in zip(model.layers, alphas, strict=True):
        set_(layer.alpha, alpha)
    traced = analyze(model)
    (group,), (result,) = traced.groups, traced.results
    assert group.kind == "soft" and group.calls == tuple(range(1, len(alphas) + 1))
    bank = result.bank
    assert bank.kind == "soft" and bank.rule.startswith("traced:")
    assert bank.keys == ("bank.weight_bank",)
    assert torch.equal(torch.as_tensor(bank.templates), model.bank.weight_bank.detach())
    assert [layer.key for layer in bank.layers] == [f"layers.{i}.alpha" for i in range(len(alphas))]
    assert np.allclose(bank.coefficient_matrix(), np.array(alphas, dtype=np.float64))
    assert not traced.issues  # a true bank: the coefficient metric applies
    a = np.array(alphas, dtype=np.float64)
    lsm = np.abs(a @ a.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(a, axis=1))
    assert np.allclose(result.similarity.matrix, lsm)
    parallel = {i: {j for j in range(len(a)) if lsm[i, j] > 1 - 1e-12} for i in range(len(a))}
    expected = sorted({tuple(sorted(s)) for s in parallel.values()})
    assert sorted(result.clusters) == expected
    assert all(layer.residual == 0.0 for layer in result.fold.layers)
    assert_folded_weights_are_the_traced_ones(traced)
    # counts
    depth, d, c = len(alphas), w * w * 9, len(expected)
    unique = stem(w) + k * d + depth * k + depth * 2 * w + fc(w)
    shared = k * d + depth * k
    gains = sum(len(members) for members in expected if len(members) > 1)
    stored = min(c * d, k * d + c * k) + gains
    assert traced.counts.checkpoint_unique == unique == sum(p.numel() for p in model.parameters())
    assert traced.counts.unshared_equivalent == stem(w) + depth * d + depth * 2 * w + fc(w)
    assert traced.counts.folded == unique - shared + min(stored, shared)
    assert traced.consumed == (shared,)


@pytest.mark.parametrize(("name", "w", "depth"), [("tied_small", 8, 3), ("tied_wide", 16, 4)])
def test_hard_tie_by_module_reuse_is_a_loop(nets: Path, name: str, w: int, depth: int) -> None:
    model = build(nets, name)
    traced = analyze(model)
    (result,) = traced.results
    assert result.bank.kind == "hard-tie" and result.bank.num_templates == 1
    assert [layer.name for layer in result.bank.layers] == [f"shared[{i}]" for i in range(depth)]
    assert [layer.tied_to for layer in result.bank.layers] == [None] + [0] * (depth - 1)
    assert np.array_equal(result.similarity.matrix, np.ones((depth, depth)))
    assert result.clusters == (tuple(range(depth)),)
    (loop,) = result.loops
    assert loop.iterations == depth and loop.period == 1
    assert not traced.issues
    assert_folded_weights_are_the_traced_ones(traced)
    conv = w * w * 9 + w
    unique = stem(w) + conv + depth * 2 * w + fc(w)
    assert traced.counts.checkpoint_unique == unique
    assert traced.counts.unshared_equivalent == stem(w) + depth * conv + depth * 2 * w + fc(w)
    assert traced.counts.folded == unique  # a tie stays one tensor
    bare = analyze_traced(model, probe(), AnalysisOptions(threshold=THRESHOLD), with_graph=False)
    assert bare.graph is None and bare.counts == traced.counts
    assert traced.graph is not None and traced.graph.number_of_nodes() == 1
    assert result.to_dict()["distinct_weights"] == {"before": 1, "after": 1}


def test_basis_matrix_product_inside_a_module(nets: Path) -> None:
    """W_i = M_i @ B computed in each layer: not a bank of K numbers per layer, so the calls'
    weights are compared in weight space, and proportional M_i are one cluster."""
    model = build(nets, "mat_basis")  # width 8, 4 layers, rank 4
    m = [layer.m for layer in model.layers]
    set_(m[1], 3 * m[0].detach())
    set_(m[3], -1 * m[2].detach())
    traced = analyze(model)
    (result,) = traced.results
    assert result.bank.kind == "soft" and result.bank.keys == ("basis.filters",)
    assert result.similarity.metric is Metric.WEIGHT
    (issue,) = traced.issues
    assert issue.kind == "metric-fallback" and issue.key == "basis.filters"
    weights = [(mi.detach() @ model.basis.filters.detach()) for mi in m]
    assert result.similarity.matrix[0, 1] == pytest.approx(1.0)
    assert result.similarity.matrix[2, 3] == pytest.approx(1.0)
    assert result.similarity.matrix[0, 2] == pytest.approx(cosine(weights[0], weights[2]))
    assert result.clusters == ((0, 1), (2, 3))
    assert_folded_weights_are_the_traced_ones(traced)
    w, r, depth = 8, 4, 4
    unique = stem(w) + r * w * 9 + depth * w * r + fc(w)
    consumed = r * w * 9 + depth * w * r
    assert traced.consumed == (consumed,)
    assert traced.counts.checkpoint_unique == unique
    assert traced.counts.unshared_equivalent == stem(w) + depth * w * w * 9 + fc(w)
    # two weights of 576 and four gains are more than the basis and the M_i: kept as they are
    assert traced.counts.folded == unique
    # asked for the weight metric, nothing falls back
    assert not analyze(model, Metric.WEIGHT).issues


def test_basis_folds_smaller_when_every_m_is_proportional(nets: Path) -> None:
    model = build(nets, "mat_basis_full")  # width 6, 4 layers, rank 6
    base = model.layers[0].m.detach().clone()
    for layer, s in zip(model.layers, (1.0, -2.0, 0.5, 4.0), strict=True):
        set_(layer.m, s * base)
    traced = analyze(model)
    (result,) = traced.results
    assert result.clusters == ((0, 1, 2, 3),)
    assert_folded_weights_are_the_traced_ones(traced)
    w, r, depth = 6, 6, 4
    unique = stem(w) + r * w * 9 + depth * w * r + fc(w)
    assert traced.counts.folded == unique - (r * w * 9 + depth * w * r) + (w * w * 9 + depth)


def test_basis_conv_then_batchnorm_then_1x1(nets: Path) -> None:
    model = build(nets, "basis_conv")  # width 8, 3 layers, rank 4
    set_(model.mix[2].weight, 2 * model.mix[0].weight.detach())
    traced = analyze(model)
    tie, basis = traced.results
    assert (tie.bank.kind, basis.bank.kind) == ("hard-tie", "basis")
    assert traced.groups[1].calls == (2, 4, 6)
    assert [layer.name for layer in basis.bank.layers] == ["mix.0", "mix.1", "mix.2"]
    assert tie.clusters == ((0, 1, 2),)
    assert basis.clusters == ((0, 2), (1,))
    mix = [model.mix[i].weight.detach() for i in range(3)]
    assert basis.similarity.matrix[0, 1] == pytest.approx(cosine(mix[0], mix[1]))
    assert_folded_weights_are_the_traced_ones(traced)
    w, r, depth = 8, 4, 3
    unique = stem(w) + r * w * 9 + depth * 2 * r + depth * (w * r + w) + fc(w)
    assert traced.counts.checkpoint_unique == unique
    assert traced.counts.unshared_equivalent == unique + (depth - 1) * r * w * 9
    # the 1x1 weights: two clusters (two weights of 32 and two gains) replace three
    assert traced.counts.folded == unique - depth * w * r + (2 * w * r + 2)


def test_flat_store_with_overlapping_windows_and_a_linear_from_it(nets: Path) -> None:
    model = build(nets, "store_net")  # windows (0, 100), (50, 150, 300), (0, 100)
    set_(model.coefficients[2], -2 * model.coefficients[0].detach())
    traced = analyze(model)
    (group,), (result,) = traced.groups, traced.results
    assert group.calls == (1, 2, 3) and group.shared == ("store",)
    assert traced.trace.calls[4].op == "linear" and traced.trace.calls[4].sources == ("store",)
    w, d = 8, 8 * 8 * 9
    store = model.store.detach()
    windows = ((0, 100), (50, 150, 300), (0, 100))
    own = []
    for coefficients, offsets in zip(model.coefficients, windows, strict=True):
        values = coefficients.detach()
        parts = [float(c) * store[o : o + d] for c, o in zip(values, offsets, strict=True)]
        own.append(sum(parts))
    for call, expected in zip(group.calls, own, strict=True):
        weight = traced.trace.calls[call].weight.flatten()
        assert torch.allclose(weight, expected, rtol=1e-6, atol=1e-6)
    assert result.similarity.metric is Metric.WEIGHT
    assert result.similarity.matrix[0, 1] == pytest.approx(cosine(own[0], own[1]))
    assert result.clusters == ((0, 2), (1,))
    assert_folded_weights_are_the_traced_ones(traced)
    size = 300 + d
    unique = stem(w) + size + (2 + 3 + 2) + 10
    assert traced.counts.checkpoint_unique == unique
    assert traced.counts.unshared_equivalent == stem(w) + 3 * d + 10 * w + 10
    # the linear layer still reads the store: a fold can drop only the coefficients
    assert traced.consumed == (7,)
    assert traced.counts.folded == unique


def test_input_dependent_weights_are_never_grouped(nets: Path) -> None:
    traced = analyze(build(nets, "hyper_net"))
    assert traced.groups == () and traced.results == ()
    assert [c.dynamic for c in traced.trace.calls] == [False, False, True, True, False]
    assert [i.kind for i in traced.issues] == ["dynamic-weight", "dynamic-weight"]


def save(model: torch.nn.Module, path: Path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def test_analyze_json_with_model(ssc, nets: Path, tmp_path: Path) -> None:
    model = build(nets, "basis_conv")
    set_(model.mix[2].weight, 2 * model.mix[0].weight.detach())
    ckpt = save(model, tmp_path / "basis.pt")
    run = ssc("analyze", ckpt, "--model", f"{nets}:basis_conv", "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert report["discovery"] == "traced"
    assert report["trace"]["calls"] == 8 and report["trace"]["probe_shape"] == [2, 3, 32, 32]
    banks = {b["name"]: b for b in report["banks"]}
    assert set(banks) == {"basis.weight", "basis.weight@basis"}
    assert banks["basis.weight"]["kind"] == "hard-tie"
    assert banks["basis.weight@basis"]["kind"] == "basis"
    assert banks["basis.weight@basis"]["rule"].startswith("traced:")
    assert banks["basis.weight@basis"]["clusters"] == [[0, 2], [1]]
    assert [layer["name"] for layer in banks["basis.weight@basis"]["layers"]] == [
        "mix.0",
        "mix.1",
        "mix.2",
    ]
    w, r, depth = 8, 4, 3
    unique = stem(w) + r * w * 9 + depth * 2 * r + depth * (w * r + w) + fc(w)
    assert report["params"]["checkpoint_unique"] == unique
    assert report["params"]["unshared_equivalent"] == unique + (depth - 1) * r * w * 9
    assert report["params"]["folded"] == unique - depth * w * r + 2 * w * r + 2
    assert report["schema_version"] == 1 and report["checkpoint"]["model"].endswith(":basis_conv")
    # the table renders too
    run = ssc("analyze", ckpt, "--model", f"{nets}:basis_conv")
    assert run.code == 0 and "basis.weight@basis" in run.out


def test_traced_and_state_dict_analyses_agree_on_an_authors_style_network(
    ssc, nets: Path, tmp_path: Path
) -> None:
    model = build(nets, "soft_small")
    for layer, alpha in zip(model.layers, SOFT_CASES["soft_small"][2], strict=True):
        set_(layer.alpha, alpha)
    ckpt = save(model, tmp_path / "soft.pt")
    traced = ssc("analyze", ckpt, "--model", f"{nets}:soft_small", "--json")
    plain = ssc("analyze", ckpt, "--json")
    assert traced.code == 0 and plain.code == 0, (traced.err, plain.err)
    t, p = traced.json(), plain.json()
    assert t["params"] == p["params"]
    (tb,), (pb,) = t["banks"], p["banks"]
    assert tb["clusters"] == pb["clusters"] == [[0, 1], [2, 3]]
    assert np.allclose(tb["lsm"], pb["lsm"])


def test_plot_similarity_with_model(ssc, nets: Path, tmp_path: Path) -> None:
    ckpt = save(build(nets, "store_net"), tmp_path / "store.pt")
    out = tmp_path / "lsm.png"
    run = ssc("plot-similarity", ckpt, "--model", f"{nets}:store_net", "-o", str(out))
    assert run.code == 0, run.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def one_line_error(run, *needles: str) -> None:
    assert run.code == 2, (run.code, run.err)
    message = run.err.strip()
    assert "\n" not in message and "Traceback" not in message, message
    for needle in needles:
        assert needle in message, message


def test_model_errors_are_one_line_exit_2(ssc, nets: Path, tmp_path: Path) -> None:
    hyper = save(build(nets, "hyper_net"), tmp_path / "hyper.pt")
    run = ssc("analyze", hyper, "--model", f"{nets}:hyper_net")
    one_line_error(run, "no parameters shared between conv/linear calls (5 calls traced)")
    broken = save(build(nets, "broken"), tmp_path / "broken.pt")
    one_line_error(ssc("analyze", broken, "--model", f"{nets}:broken"), "probe")
    soft = save(build(nets, "soft_small"), tmp_path / "soft.pt")
    run = ssc("analyze", soft, "--model", f"{nets}:soft_small", "--bank-key", "*.weight_bank")
    one_line_error(run, "--bank-key")
    plot = str(tmp_path / "x.png")
    run = ssc("plot-similarity", soft, "--model", f"{nets}:tied_small", "-o", plot)
    one_line_error(run, "tied_small")  # the checkpoint is not that network's
    assert not (tmp_path / "x.png").exists()


def test_model_on_a_folded_file_is_refused(ssc, nets: Path, tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parent.parent / "sample_checkpoints"
    folded = tmp_path / "folded.safetensors"
    run = ssc("fold", str(sample / "swrn28-1-4_digits_align.pt"), "-o", str(folded), "--json")
    assert run.code == 0, run.err
    one_line_error(ssc("analyze", str(folded), "--model", f"{nets}:soft_small"), "folded")


def test_counts_are_whole_numbers_of_the_network(nets: Path) -> None:
    # sanity of the helpers above: the authors-style network's count by hand
    model = build(nets, "soft_small")
    assert sum(p.numel() for p in model.parameters()) == stem(8) + 3 * 576 + 12 + 64 + fc(8)
    assert math.isclose(cosine(torch.ones(3), 2 * torch.ones(3)), 1.0)


def test_a_reused_layer_is_one_layer_per_call_tied_to_its_first(nets: Path) -> None:
    model = build(nets, "reused_sconv")  # calls: once, twice, once
    set_(model.once.alpha, [1.0, 2.0])
    set_(model.twice.alpha, [-0.5, -1.0])
    traced = analyze(model)
    (result,) = traced.results
    layers = result.bank.layers
    assert [layer.key for layer in layers] == ["once.alpha", "twice.alpha", "once.alpha"]
    assert [layer.tied_to for layer in layers] == [None, None, 0]
    assert result.clusters == ((0, 1, 2),)
    assert_folded_weights_are_the_traced_ones(traced)
    w, k, d = 8, 2, 8 * 8 * 9
    unique = stem(w) + k * d + 2 * k + fc(w)
    assert traced.counts.checkpoint_unique == unique
    assert traced.counts.unshared_equivalent == stem(w) + 3 * d + fc(w)  # every call a weight
    # one weight for the cluster and a gain per coefficient storage (the tied use shares one)
    assert traced.counts.folded == unique - (k * d + 2 * k) + (d + 2)


def test_a_network_that_takes_only_8x8_gets_an_8x8_probe(ssc, nets: Path, tmp_path: Path) -> None:
    ckpt = save(build(nets, "tied_flat8"), tmp_path / "flat8.pt")
    run = ssc("analyze", ckpt, "--model", f"{nets}:tied_flat8", "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert report["trace"]["probe_shape"] == [2, 3, 8, 8]
    assert [b["kind"] for b in report["banks"]] == ["hard-tie"]


def test_the_sample_swrn_traced_agrees_with_its_state_dict(ssc, tmp_path: Path) -> None:
    """ssc's own SWRN built through --model: the same banks, clusters, loops and counts as the
    state-dict analysis; only the folded figure may differ (traced scales are explicit gains,
    where the SWRN's own rules absorb some into BatchNorms)."""
    factory = tmp_path / "swrn_factory.py"
    factory.write_text(
        "from soft_share_cli.models.wrn import SWRN\n\n\n"
        "def swrn():\n"
        "    return SWRN(depth=28, width=1, num_templates=4, num_classes=10, in_channels=1)\n"
    )
    sample = Path(__file__).resolve().parent.parent / "sample_checkpoints"
    ckpt = str(sample / "swrn28-1-4_digits_align.pt")
    traced = ssc("analyze", ckpt, "--model", f"{factory}:swrn", "--json")
    plain = ssc("analyze", ckpt, "--json")
    assert traced.code == 0 and plain.code == 0, (traced.err, plain.err)
    t, p = traced.json(), plain.json()
    assert t["trace"]["probe_shape"] == [2, 1, 8, 8]  # digits: the 8 x 8 probe
    assert [b["name"] for b in t["banks"]] == [b["name"] for b in p["banks"]]
    for tb, pb in zip(t["banks"], p["banks"], strict=True):
        assert [la["name"] for la in tb["layers"]] == [la["name"] for la in pb["layers"]]
        assert tb["clusters"] == pb["clusters"]
        assert np.allclose(tb["lsm"], pb["lsm"], atol=1e-12)
    assert t["loops"] == p["loops"]
    for figure in ("checkpoint_unique", "unshared_equivalent"):
        assert t["params"][figure] == p["params"][figure]
    assert p["params"]["folded"] <= t["params"]["folded"] < p["params"]["checkpoint_unique"]


SHARING = Path(__file__).resolve().parent.parent / "sample_checkpoints" / "sharing"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sharing.py"


@pytest.mark.parametrize("name", ["soft", "tied", "basis", "basis_bn", "store"])
def test_analyze_with_model_reports_what_the_fold_writes(ssc, tmp_path: Path, name: str) -> None:
    """Every sample of sample_checkpoints/sharing: ``analyze --model``'s ``folded`` is the fold's
    own figure and ``ssc info`` on the written file; where the fold refuses (exit 2), it is the
    checkpoint's count and the report says why."""
    ckpt, spec = str(SHARING / f"{name}.pt"), f"{EXAMPLES}:{name}"
    analyzed = ssc("analyze", ckpt, "--model", spec, "--json")
    assert analyzed.code == 0, analyzed.err
    report = analyzed.json()
    unique = ssc("info", ckpt, "--json").json()["unique_parameters"]
    assert report["params"]["checkpoint_unique"] == unique
    out = tmp_path / "folded.safetensors"
    fold = ssc("fold", ckpt, "--model", spec, "-o", str(out), "--json")
    if fold.code == 2:
        assert not out.exists() and len(fold.err.strip().splitlines()) == 1
        assert report["params"]["folded"] == unique
        assert "ssc fold would refuse" in report["fold_note"]
        assert name == "tied"  # only hard ties: already one tensor each
        return
    assert fold.code == 0, fold.err
    written = ssc("info", str(out), "--json").json()["unique_parameters"]
    assert report["params"]["folded"] == fold.json()["params"]["folded"] == written < unique
    assert report["fold_note"] is None
    text = ssc("analyze", ckpt, "--model", spec)
    assert text.code == 0 and f"{written:,}" in text.out


def test_the_header_names_the_metric_each_bank_used(ssc) -> None:
    """--metric coefficients on a store (no per-layer coefficient vectors): its group is compared
    by the weight metric, and the header and the norm column say so; a true bank keeps
    coefficients."""
    store = ssc("analyze", str(SHARING / "store.pt"), "--model", f"{EXAMPLES}:store")
    assert store.code == 0, store.err
    header = next(line for line in store.out.splitlines() if line.startswith("similarity"))
    assert "weight metric" in header and "coefficients metric" not in header
    assert "‖W‖" in store.out and "‖α‖" not in store.out
    soft = ssc("analyze", str(SHARING / "soft.pt"), "--model", f"{EXAMPLES}:soft")
    assert soft.code == 0, soft.err
    header = next(line for line in soft.out.splitlines() if line.startswith("similarity"))
    assert "coefficients metric" in header and "‖α‖" in soft.out


def test_the_header_lists_both_metrics_when_banks_differ() -> None:
    from types import SimpleNamespace as NS

    from soft_share_cli.render.tables import _metrics_used

    def bank(name: str, metric: Metric, tie: bool = False) -> NS:
        return NS(bank=NS(name=name), similarity=NS(metric=metric), hard_tie=tie)

    analysis = NS(
        options=NS(metric=Metric.COEFFICIENTS),
        banks=[
            bank("w_bank", Metric.COEFFICIENTS),
            bank("store", Metric.WEIGHT),
            bank("tie", Metric.COEFFICIENTS, tie=True),  # similarity 1: left out
            bank("basis", Metric.WEIGHT),
        ],
    )
    assert _metrics_used(analysis) == "coefficients metric (w_bank); weight metric (store, basis)"
    analysis.banks = [bank("tie", Metric.COEFFICIENTS, tie=True)]
    assert _metrics_used(analysis) == "coefficients metric"
