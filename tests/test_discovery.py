"""Discovery from the state dict alone: soft sharing under other names and shapes, hard ties.

Small networks of our own with planted structure (layers 0 and 2 exactly parallel, the rest
random), in several sizes: a bank registered again by every layer (``layers.<i>.bank``) with
``alpha`` vectors, a bank deep in a side module with ``(1, K)`` ``coeffs`` found by K, a linear bank
``(K, O, I)`` with ``(K, 1)`` ``mix`` vectors, several banks, overrides, and one conv (or linear)
module reused by consecutive blocks that keep their own BatchNorms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.analysis.banks import AUTHORS_RULE, find_banks
from soft_share_cli.models.params import count_state_dict_parameters
from soft_share_cli.models.wrn import SWRN


class MixConv(nn.Module):
    """A conv drawing from a shared bank that it registers again as its own ``bank``."""

    def __init__(self, bank: nn.Parameter, coefficient_shape: tuple[int, ...]):
        super().__init__()
        self.bank = bank
        self.alpha = nn.Parameter(torch.randn(coefficient_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.einsum("k,koihw->oihw", self.alpha.reshape(-1), self.bank)
        return F.conv2d(x, w, padding=1)


class AliasNet(nn.Module):
    """Bank ``weight_bank`` at the root, aliased by every layer; ``alpha`` coefficients."""

    def __init__(self, k: int, width: int, layers: int):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.weight_bank = nn.Parameter(torch.randn(k, width, width, 3, 3))
        self.layers = nn.ModuleList(MixConv(self.weight_bank, (k,)) for _ in range(layers))
        self.fc = nn.Linear(width, 10)


class SideNet(nn.Module):
    """Bank deep in a side module, ``side.mixer.weight_bank``, so only K can map the layers,
    which hold nothing but ``(1, K)`` ``coeffs``."""

    def __init__(self, k: int, width: int, layers: int):
        super().__init__()
        self.side = nn.Module()
        self.side.mixer = nn.Module()
        self.side.mixer.weight_bank = nn.Parameter(torch.randn(k, width, width, 3, 3))
        self.body = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.conv = nn.Module()
            block.conv.coeffs = nn.Parameter(torch.randn(1, k))
            block.bn = nn.BatchNorm2d(width)
            self.body.append(block)
        self.head = nn.Conv1d(width, width, 3)  # 3-d, but no coefficients draw from it


class LinearNet(nn.Module):
    """A linear bank ``head.bank`` ``(K, O, I)``; per-layer ``(K, 1)`` ``mix`` vectors."""

    def __init__(self, k: int, width: int, layers: int):
        super().__init__()
        self.head = nn.Module()
        self.head.bank = nn.Parameter(torch.randn(k, width, width))
        self.head.fc = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.mix = nn.Parameter(torch.randn(k, 1))
            self.head.fc.append(layer)
        self.out = nn.Linear(width, 3)


def _coefficient_params(model: nn.Module) -> list[nn.Parameter]:
    leaves = ("alpha", "coeffs", "mix")
    return [p for n, p in model.named_parameters(remove_duplicate=False) if n.endswith(leaves)]


def _plant(model: nn.Module) -> nn.Module:
    """Layers 0 and 2 exactly parallel (2 = -1.5 x 0); the others random."""
    params = _coefficient_params(model)
    with torch.no_grad():
        params[2].copy_(-1.5 * params[0])
    return model


SIZES = [(2, 4, 3), (3, 8, 4), (5, 6, 6)]  # K, width, layers


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("net", "layer_name", "rule"),
    [
        (
            AliasNet,
            "layers.{i}",
            "bank 'weight_bank' by shape, coefficients 'alpha' by module path",
        ),
        (
            SideNet,
            "body.{i}.conv",
            "bank 'side.mixer.weight_bank' by shape, coefficients 'coeffs' by K",
        ),
        (LinearNet, "head.fc.{i}", "bank 'head.bank' by shape, coefficients 'mix' by module path"),
    ],
)
def test_soft_sharing_under_other_names(
    net: type[nn.Module], layer_name: str, rule: str, size: tuple[int, int, int]
) -> None:
    torch.manual_seed(sum(size))
    k, width, n = size
    model = _plant(net(k, width, n))
    state = model.state_dict()
    found = find_banks(state)
    assert found.issues == ()
    (bank,) = found.banks
    assert bank.rule == rule and bank.kind == "soft"
    assert bank.num_templates == k
    assert [layer.name for layer in bank.layers] == [layer_name.format(i=i) for i in range(n)]
    linear = net is LinearNet
    assert bank.weight_shape == ((width, width) if linear else (width, width, 3, 3))
    assert bank.template_shape == ((width, width, 1, 1) if linear else (width, width, 3, 3))
    if net is AliasNet:  # every registration of the bank, found by storage identity
        assert bank.keys == ("weight_bank", *(f"layers.{i}.bank" for i in range(n)))

    (result,), issues, counts, _ = analyze_state_dict(state, AnalysisOptions(threshold=0.999))
    assert issues == ()
    assert result.clusters == ((0, 2), *((i,) for i in range(1, n) if i != 2))
    assert result.similarity.matrix[0, 2] == pytest.approx(1.0)
    unique = sum(p.numel() for p in model.parameters())
    d = bank.weight_numel
    assert counts.checkpoint_unique == count_state_dict_parameters(state) == unique
    rest = unique - k * d - n * k
    assert counts.unshared_equivalent == rest + n * d
    clusters = n - 1
    # a gain for each of the two parallel layers; the layers alone need none (Absorb.UNIT)
    assert counts.folded == rest + min(clusters * d, k * d + clusters * k) + 2
    report = result.to_dict()
    assert report["rule"] == rule and report["kind"] == "soft"


def test_the_authors_layout_reports_as_ever() -> None:
    state = SWRN(16, 1, 3, in_channels=1).state_dict()
    found = find_banks(state, hard_ties=True)
    assert [b.name for b in found.banks] == ["bank_1", "bank_2", "bank_3"]
    assert {b.rule for b in found.banks} == {AUTHORS_RULE}
    assert all("rule" not in b.to_dict() for b in found.banks)
    results, _, _, _ = analyze_state_dict(state)
    assert all("rule" not in r.to_dict() and "kind" not in r.to_dict() for r in results)
    assert "bank_key" not in AnalysisOptions().to_dict()


def test_several_banks_by_module_path_and_k() -> None:
    torch.manual_seed(1)
    state = {
        # same K, told apart by module path
        "stage_a.bank": torch.randn(3, 4, 4, 3, 3),
        "stage_b.bank": torch.randn(3, 6, 6, 3, 3),
        # another K, deep in a side module: by K
        "side.banks.wide": torch.randn(5, 8, 8, 3, 3),
        **{f"stage_a.{i}.alpha": torch.randn(3) for i in range(3)},
        **{f"stage_b.{i}.conv.lambdas": torch.randn(3, 1, 1, 1, 1) for i in range(2)},
        **{f"tail.{i}.weights_mix": torch.randn(5) for i in range(4)},
    }
    found = find_banks(state)
    assert found.issues == ()
    summary = [(b.name, len(b.layers), b.rule.split(", ")[1]) for b in found.banks]
    assert summary == [
        ("stage_a.bank", 3, "coefficients 'alpha' by module path"),
        ("stage_b.bank", 2, "coefficients 'lambdas' by module path"),
        ("side.banks.wide", 4, "coefficients 'weights_mix' by K"),
    ]


def test_ambiguity_and_overrides() -> None:
    torch.manual_seed(2)
    state = {
        "bank_a": torch.randn(3, 4, 4, 3, 3),
        "bank_b": torch.randn(3, 4, 4, 3, 3),
        **{f"net.{i}.gates": torch.randn(3) for i in range(3)},  # not a coefficient name
        **{f"net.{i}.alpha": torch.randn(3) for i in range(2)},
    }
    found = find_banks(state)
    assert found.banks == ()
    assert [i.kind for i in found.issues] == ["ambiguous-bank"] * 2  # the two alphas
    assert "--bank-key" in found.issues[0].message

    chosen = find_banks(state, bank_key="bank_b")
    (bank,) = chosen.banks
    assert bank.name == "bank_b" and [la.name for la in bank.layers] == ["net.0", "net.1"]
    assert bank.rule == "bank 'bank_b' by pattern 'bank_b', coefficients 'alpha' by module path"

    gates = find_banks(state, bank_key="bank_a", coefficient_key="*.gates")
    (bank,) = gates.banks
    assert [la.key for la in bank.layers] == [f"net.{i}.gates" for i in range(3)]
    options = AnalysisOptions(bank_key="bank_a", coefficient_key="*.gates")
    assert options.to_dict()["coefficient_key"] == "*.gates"
    (result,), _, _, _ = analyze_state_dict(state, options)
    assert len(result.bank.layers) == 3


def test_bank_shaped_tensors_without_coefficients_are_not_banks() -> None:
    state = {
        "conv1d.weight": torch.randn(3, 4, 5),  # a (K, O, I)-shaped Conv1d weight
        "conv3d.weight": torch.randn(2, 4, 4, 3, 3, 3)[..., 0],
        "scale.alpha": torch.randn(7),  # coefficient-like, but no bank has 7 templates
    }
    found = find_banks(state)
    assert found.banks == () and found.issues == ()


def test_a_shared_coefficient_storage_is_one_layer_tied() -> None:
    torch.manual_seed(3)
    model = _plant(AliasNet(3, 4, 4))
    model.layers[3].alpha = model.layers[1].alpha
    (bank,) = find_banks(model.state_dict()).banks
    assert [layer.tied_to for layer in bank.layers] == [None, None, None, 1]
    _, _, counts, _ = analyze_state_dict(model.state_dict())
    assert counts.checkpoint_unique == sum(p.numel() for p in model.parameters())


# --- hard ties -------------------------------------------------------------------------------


class TiedCNN(nn.Module):
    """One conv module reused by consecutive blocks that keep their own BatchNorms."""

    def __init__(self, width: int, blocks: int, holder: bool, linear: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        shared = nn.Conv2d(width, width, 3, padding=1, bias=False)
        if holder:
            self.shared = shared
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            block = nn.Module()
            block.conv = shared
            block.bn = nn.BatchNorm2d(width)
            self.blocks.append(block)
        self.fc = nn.Linear(width, width)
        self.fc_again = self.fc if linear else nn.Linear(width, width)


@pytest.mark.parametrize(
    ("width", "blocks", "holder"), [(4, 2, False), (8, 4, True), (6, 7, False)]
)
def test_a_hard_tie_is_a_loop(width: int, blocks: int, holder: bool) -> None:
    model = TiedCNN(width, blocks, holder)
    state = model.state_dict()
    results, issues, counts, graph = analyze_state_dict(state)
    assert issues == () and graph is not None
    (r,) = results
    uses = blocks + holder
    assert r.bank.kind == "hard-tie" and r.bank.num_templates == 1
    assert r.bank.name == ("shared" if holder else "blocks.0.conv")
    assert r.bank.rule == f"hard tie: one weight storage under {uses} keys"
    assert len(r.bank.layers) == uses
    assert (r.similarity.matrix == 1.0).all()
    assert r.clusters == (tuple(range(uses)),)
    (loop,) = r.loops
    assert loop.iterations == blocks
    report = r.to_dict()
    assert report["distinct_weights"] == {"before": 1, "after": 1}
    assert report["kind"] == "hard-tie" and report["weight_shape"] == [width, width, 3, 3]
    # the tensor counts once; every use a weight of its own when unshared; nothing to fold
    unique = sum(p.numel() for p in model.parameters())
    assert counts.checkpoint_unique == counts.folded == unique
    assert counts.unshared_equivalent == unique + (uses - 1) * width * width * 9
    # the fold's analysis leaves hard ties out (nothing to fold), and so does find_banks
    assert analyze_state_dict(state, with_graph=False)[0] == ()
    assert find_banks(state).banks == ()


def test_a_hard_tied_linear_layer_and_a_bank_beside_it() -> None:
    torch.manual_seed(4)
    model = _plant(AliasNet(3, 4, 4))
    model.fc2 = nn.Linear(4, 4)
    model.fc3 = model.fc2
    state = model.state_dict()
    soft, hard = find_banks(state, hard_ties=True).banks
    assert soft.kind == "soft" and hard.kind == "hard-tie"
    assert (
        hard.name == "fc2" and hard.weight_shape == (4, 4) and hard.template_shape == (4, 4, 1, 1)
    )
    results, _, counts, _ = analyze_state_dict(state)
    assert [r.bank.name for r in results] == ["weight_bank", "fc2"]
    _, _, without, _ = analyze_state_dict(state, hard_ties=False)
    assert counts == without  # a hard tie changes no figure: its tensor is counted by storage


def test_ssc_analyze_reports_a_hard_tie(ssc, tmp_path: Path) -> None:
    ckpt = tmp_path / "tied.pt"
    torch.save(TiedCNN(8, 4, holder=False, linear=True).state_dict(), ckpt)
    run = ssc("analyze", str(ckpt))
    assert run.code == 0, run.err
    assert "blocks 0-3 repeat one block (conv A) 4 times" in run.out
    report = ssc("analyze", str(ckpt), "--json").json()
    assert [b["kind"] for b in report["banks"]] == ["hard-tie", "hard-tie"]
    assert [b["name"] for b in report["banks"]] == ["blocks.0.conv", "fc"]
    params = report["params"]
    assert params["checkpoint_unique"] == params["folded"]
    assert params["unshared_equivalent"] == params["checkpoint_unique"] + 3 * 576 + 72
    assert np.isclose(report["banks"][1]["lsm"][0][1], 1.0)
