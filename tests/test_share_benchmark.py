"""benchmarks/share.py: its baselines hit their budgets, its measures are right, and its quick
mode measures what the table claims (share at K = group size is exact, pruning keeps dense MACs).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import share  # noqa: E402  (benchmarks/share.py)
import share_baselines as base  # noqa: E402

from soft_share_cli.models.params import count_parameters  # noqa: E402
from soft_share_cli.models.wrn import WRN  # noqa: E402
from soft_share_cli.sharing.convert import share_wrn  # noqa: E402
from soft_share_cli.sharing.groups import wrn_groups  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread, as the benchmark's jobs run (and fast on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wrn(seed: int = 0) -> tuple[WRN, list]:
    torch.manual_seed(seed)
    model = WRN(16, 1, num_classes=10, in_channels=1).eval()
    shapes = [tuple(model.get_submodule(f"stage_{s}.1.conv1").weight.shape) for s in (1, 2, 3)]
    return model, wrn_groups(model.num_blocks, shapes)


def test_macs_of_one_conv_is_the_textbook_count() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    assert base.macs(conv, (3, 8, 8)) == 5 * 3 * 9 * 8 * 8


def test_pruning_stores_the_budget_and_keeps_dense_macs() -> None:
    model, groups = _wrn()
    layers = [n for g in groups for n in g.layers]
    dense = count_parameters(model)
    budget = dense - base.group_weights(model, groups) // 3
    pruned = copy.deepcopy(model)
    removed = base.prune_layers(pruned, layers, budget)
    assert base.stored_parameters(pruned) == budget
    assert removed == dense - budget
    base.finish_pruning(pruned)
    assert base.stored_parameters(pruned) == budget  # the zeros stay after the masks go
    assert not any(n.endswith("_orig") for n, _ in pruned.named_parameters())
    weights = torch.cat([pruned.get_submodule(n).weight.flatten() for n in layers])
    kept = torch.cat([model.get_submodule(n).weight.flatten() for n in layers])[weights != 0]
    dropped = torch.cat([model.get_submodule(n).weight.flatten() for n in layers])[weights == 0]
    assert kept.abs().min() >= dropped.abs().max()  # global magnitude: the largest survive
    assert base.macs(pruned, (1, 8, 8)) == base.macs(model, (1, 8, 8))


def test_a_factored_conv_is_the_best_rank_r_fit() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 4, 9, 9)
    full = base.factored_conv(conv, 6)
    torch.testing.assert_close(full(x), conv(x), atol=1e-5, rtol=1e-5)
    factored = base.factored_conv(conv, 2)
    composed = (factored[1].weight[:, :, 0, 0] @ factored[0].weight.reshape(2, -1)).detach()
    u, s, vh = np.linalg.svd(conv.weight.detach().double().reshape(6, -1).numpy())
    best = (u[:, :2] * s[:2]) @ vh[:2]
    np.testing.assert_allclose(composed.double().numpy(), best, atol=1e-5)
    assert count_parameters(factored) == 2 * (4 * 9 + 6) + 6
    assert base.macs(factored, (4, 9, 9)) == 25 * (2 * 4 * 9 + 6 * 2)


def test_per_layer_ranks_spend_what_sharing_spends() -> None:
    model, groups = _wrn()
    for k in (1, 2):
        shared, _ = share_wrn(copy.deepcopy(model), groups, [k] * len(groups))
        ranks = base.ranks_for(model, groups, [k] * len(groups))
        factored = base.factor_layers(copy.deepcopy(model), ranks)
        slack = sum(
            (g.shape[1] * 9 + g.shape[0]) / 2 * len(g.layers) for g in groups
        )  # rounding each layer's rank to the nearest
        assert abs(base.stored_parameters(factored) - count_parameters(shared)) <= slack
        assert base.macs(factored, (1, 8, 8)) < base.macs(model, (1, 8, 8))


def test_quick_wrn_run_measures_what_the_table_says(tmp_path: Path) -> None:
    rows = share.wrn_seed(share.QUICK, 0, tmp_path, lambda _: None)
    plain = next(r for r in rows if r["method"] == "plain")
    by = {(r["method"], r["k"]): r for r in rows if r["method"] != "plain"}
    exact = by["share+fold", 2]  # depth 16: groups of 2 layers, so K = 2 is exact
    assert exact["converted_top1"] == plain["top1"]
    assert exact["params"] == plain["params"]  # K = group size: no saving
    assert by["prune", 1]["params"] == by["prune", 1]["budget"]
    assert by["prune", 1]["budget"] == by["share+fold", 1]["shared_params"]  # the SWRN's count
    assert by["share+fold", 1]["params"] <= by["share+fold", 1]["shared_params"]
    assert by["prune", 1]["macs"] == plain["macs"]
    assert by["svd", 1]["macs"] < plain["macs"]
    assert by["share+fold", 1]["shared_params"] < plain["params"]
    result = {
        "command": "python benchmarks/share.py --quick",
        "machine": {"cpu": "x", "cores": 2, "torch_threads": 1, "torch": "t", "python": "p",
                    "load_average_before": [0.0], "load_average_after": [0.0]},
        "setup": share.QUICK.to_dict(), "quick": True, "wall_seconds": 1.0, "rows": rows,
    }  # fmt: skip
    share._write(tmp_path, result)
    written = json.loads((tmp_path / "share.json").read_text())
    exact_line = next(s for s in written["summary"] if s["setting"] == "K=2")
    assert (
        exact_line["params_pct"] == 100.0 and exact_line["delta"] == exact["top1"] - plain["top1"]
    )
    assert {t["target"] for t in written["targets"]} >= {
        "share reaches <= 50 % of the parameters within 1 point",
        "share at least as accurate as svd",
        "share at least as accurate as prune",
    }
    text = (tmp_path / "share.md").read_text()
    assert "| plain | - | " + f"{plain['params']:,}" in text
    assert "quick mode" in text and "## Targets" in text


def test_quick_resnet_run_spends_the_budget_of_share() -> None:
    pytest.importorskip("pytorchcv")
    rows = share.resnet_seed(share.QUICK, 0, lambda _: None)
    plain, shared, svd = rows
    assert (plain["method"], shared["method"], svd["method"]) == ("plain", "share", "svd")
    assert shared["params"] == svd["budget"] < plain["params"]
    assert abs(svd["params"] - shared["params"]) < 0.02 * plain["params"]
    assert svd["macs"] < plain["macs"]


def test_share_at_group_size_reproduces_a_third_party_resnet() -> None:
    pytest.importorskip("pytorchcv")
    from pytorchcv.models.resnet_cifar import resnet20_cifar10

    from soft_share_cli.sharing.convert import share_network
    from soft_share_cli.sharing.groups import find_groups

    torch.manual_seed(0)
    model = resnet20_cifar10().eval()
    x = torch.randn(2, 3, 32, 32)
    groups = find_groups(model)
    assert [len(g.layers) for g in groups] == [6, 5, 5]
    shared = copy.deepcopy(model)
    share_network(shared, groups, [len(g.layers) for g in groups])
    with torch.no_grad():
        torch.testing.assert_close(shared(x), model(x), atol=1e-4, rtol=1e-4)
    ranks = base.ranks_for(model, groups, [1] * len(groups))
    assert sorted(set(ranks.values())) == [2, 6, 12]  # 2304/6/160, 9216/5/320, 36864/5/640
