"""A fold never stores more unique parameters than the checkpoint, on every fold path.

Property-style: random banks (K, layers, width) with a random number of planted clusters of
exactly parallel coefficients, folded by each path (a user network by surgery, an SFCN into a
looped FCN, an SWRN into loops). The file written (or the folded network's state dict, counted
by storage as ``ssc info`` counts a file) never holds more than the checkpoint, and its logits
equal the original's (relative 1e-5). The rule that makes it so (:mod:`soft_share_cli.analysis.
plan`): a cluster of one coefficient storage keeps its own coefficients and stores no gain
(``Absorb.UNIT``); a plan that would still grow keeps the bank as it is (``kept_as_is``).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.analysis.banks import find_banks
from soft_share_cli.analysis.clustering import cluster_layers
from soft_share_cli.analysis.plan import Absorb, as_is_plan, plan_bank
from soft_share_cli.analysis.similarity import Metric, bank_similarity, gram_matrix
from soft_share_cli.errors import CheckpointError
from soft_share_cli.folding.looped import (
    LoopedFCN,
    check_program,
    fold_sfcn,
    load_looped,
    save_looped,
)
from soft_share_cli.folding.surgery import (
    fold_user_model,
    folded_user_view,
    load_folded_user_model,
    save_folded_user_model,
    user_fold_program,
)
from soft_share_cli.folding.swrn import fold_swrn
from soft_share_cli.models.layers import SConv2d
from soft_share_cli.models.params import count_state_dict_parameters
from soft_share_cli.models.recurrent import SFCN
from soft_share_cli.models.user import load_factory
from soft_share_cli.models.wrn import SWRN

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"

EXACT = 0.9999  # planted clusters are exactly parallel; random directions are not

# (K, layers, width, planted clusters, zero layer?) per case; drawn once, seeded.
_rng = np.random.default_rng(13)
CASES = [
    (int(k), int(n), int(w), int(_rng.integers(1, n + 1)), False)
    for k, n, w in zip(
        _rng.integers(1, 6, 10), _rng.integers(2, 7, 10), _rng.integers(2, 6, 10), strict=True
    )
] + [
    (1, 4, 3, 1, True),  # K = 1 and a zero layer: merging would store more; kept as it is
    (2, 4, 4, 3, False),  # the brief's K = 2 in 3 clusters: used to add 2
    (1, 3, 3, 1, False),  # K = 1, all parallel: one weight
    (4, 5, 3, 5, False),  # nothing merges: every layer alone
]

NET_CODE = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from soft_share_cli.models.layers import SConv2d, TemplateBank


    class BankNet(nn.Module):
        def __init__(self, k, layers, width):
            super().__init__()
            self.stem = nn.Conv2d(1, width, 3, padding=1)
            self.bank = TemplateBank(k, width, width, 3)
            convs = [SConv2d(self.bank, stride=1, padding=1) for _ in range(layers)]
            self.convs = nn.ModuleList(convs)
            self.head = nn.Linear(width, 3)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            for conv in self.convs:
                h = h + torch.relu(conv(h))
            return self.head(h.mean(dim=(2, 3)))
    """
)


def _plant(convs: list[nn.Module], k: int, clusters: int, zero: bool, seed: int) -> list[int]:
    """Coefficients: layer i is a random multiple of its cluster's direction; clusters are
    dealt round-robin so that each has a member. Returns each layer's planted cluster."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(clusters, k, generator=g)
    planted = [i % clusters for i in range(len(convs))]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            sign = 1.0 if torch.rand((), generator=g) < 0.5 else -1.0
            scale = sign * (0.5 + torch.rand((), generator=g))
            a = scale * directions[planted[i]]
            if zero and i == len(convs) - 1:
                a = torch.zeros(k)
            conv.coefficients.copy_(a.reshape(conv.coefficients.shape))
    return planted


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def _analysed(state: dict, threshold: float = EXACT):
    results, _, counts, _ = analyze_state_dict(state, AnalysisOptions(threshold=threshold))
    return results, counts


# --- the plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("metric", list(Metric))
def test_no_plan_stores_more_than_the_checkpoint(case, metric) -> None:
    k, n, width, clusters, zero = case
    torch.manual_seed(0)
    model = SFCN(blocks=(n + 1) // 2, width=width, num_templates=k)
    convs = [m for m in model.modules() if isinstance(m, SConv2d)]
    _plant(convs, k, clusters, zero, seed=n * 10 + k)
    (bank,) = find_banks(model.state_dict()).banks
    for threshold in (0.0, 0.5, EXACT, 1.0):  # from everything merged to nothing merged
        sim = bank_similarity(bank, metric, False)
        grouping = cluster_layers(sim.matrix, threshold)
        gram = gram_matrix(bank.templates) if metric is Metric.WEIGHT else None
        for state_dict in (None, model.state_dict()):  # unknown network, and an SFCN
            plan = plan_bank(bank, grouping, gram=gram, state_dict=state_dict)
            assert plan.parameters <= plan.shared_parameters
            assert plan.shared_parameters == k * bank.weight_numel + len(bank.layers) * k
            alone = [c for c in plan.clusters if len(c) == 1]
            for (i,) in alone:  # a layer alone stores no gain: it is its own direction
                layer = plan.layers[i]
                assert layer.absorb is Absorb.UNIT and layer.scale == 1.0
                np.testing.assert_array_equal(
                    plan.directions[layer.cluster], bank.layers[i].coefficients
                )
            assert plan.gains == sum(x.absorb is Absorb.GAIN for x in plan.layers)


def test_a_plan_that_would_grow_keeps_the_bank_as_it_is() -> None:
    torch.manual_seed(0)
    model = SFCN(blocks=2, width=3, num_templates=1)  # K = 1: every nonzero layer parallel
    convs = [m for m in model.modules() if isinstance(m, SConv2d)]
    _plant(convs, 1, 1, zero=True, seed=1)
    (bank,) = find_banks(model.state_dict()).banks
    d = bank.weight_numel
    # three parallel layers and a zero one: one weight + 3 gains for them, the zero alone:
    # 2 clusters as templates (d + 2) + 3 gains = d + 5 > the checkpoint's d + 4
    grouping = ((0, 1, 2), (3,))
    plan = plan_bank(bank, grouping, state_dict=None)
    assert plan.kept_as_is and plan == as_is_plan(bank)
    assert plan.clusters == ((0,), (1,), (2,), (3,))
    assert plan.parameters == plan.shared_parameters == d + 4  # the checkpoint's, exactly
    assert plan.gains == 0 and {x.absorb for x in plan.layers} == {Absorb.UNIT}
    assert plan.to_dict()["kept_as_is"] is True
    merged = plan_bank(bank, ((0, 1, 2, 3),), state_dict=None)  # one cluster: d + 4, no growth
    assert not merged.kept_as_is and "kept_as_is" not in merged.to_dict()
    assert merged.parameters == d + 4


# --- every fold path --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nets") / "bank_net.py"
    factories = "".join(
        f"\n\ndef case_{i}():\n    return BankNet({k}, {n}, {w})\n"
        for i, (k, n, w, _, _) in enumerate(CASES)
    )
    path.write_text(NET_CODE + factories)
    return path


def _user_case(net_file: Path, index: int) -> tuple[str, nn.Module]:
    k, _, _, clusters, zero = CASES[index]
    spec = f"{net_file}:case_{index}"
    torch.manual_seed(index)
    model = load_factory(spec)().eval()
    _plant(list(model.convs), k, clusters, zero, seed=index)
    return spec, model


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("threshold", [EXACT, 1.0])
def test_user_network_surgery_never_grows(ssc, net_file, tmp_path, index, threshold) -> None:
    """The surgery of :mod:`soft_share_cli.folding.surgery` (``fold_user_model``): its file."""
    spec, model = _user_case(net_file, index)
    state = model.state_dict()
    (bank,) = find_banks(state).banks
    grouping = cluster_layers(bank_similarity(bank).matrix, threshold)
    plan = plan_bank(bank, grouping, state_dict=None)  # an unknown network: gains explicit
    folded = fold_user_model(model, {bank.name: plan}, [bank])
    out = tmp_path / "folded.safetensors"
    save_folded_user_model(folded, out, spec, user_fold_program({bank.name: plan}, [bank]))
    stored = ssc("info", str(out), "--json").json()["unique_parameters"]
    unique = count_state_dict_parameters(state)
    rest = unique - plan.shared_parameters
    assert stored == rest + plan.parameters <= unique
    assert stored == count_state_dict_parameters(folded.state_dict())
    alone = sum(len(c) == 1 for c in plan.clusters)
    assert sum(getattr(c, "gain", None) is None for c in folded.convs) >= alone
    if CASES[index] == (1, 4, 3, 1, True):  # K = 1: parallel at any threshold; merging grows
        assert plan.kept_as_is and stored == unique  # the checkpoint's own count, exactly
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(index))
    with torch.no_grad():
        want = model(x)
        assert _close(folded(x), want)
        assert _close(load_folded_user_model(out, spec)(x), want)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_user_network_cli_fold_never_grows(ssc, net_file, tmp_path, index) -> None:
    """``ssc fold --model``: a smaller file, or nothing written (exit 2), never a larger one;
    ``ssc analyze`` says which banks a fold keeps as they are."""
    spec, model = _user_case(net_file, index)
    ckpt = tmp_path / "net.pt"
    torch.save(model.state_dict(), ckpt)
    unique = count_state_dict_parameters(model.state_dict())
    out = tmp_path / "folded.safetensors"
    run = ssc("fold", str(ckpt), "-o", str(out), "--model", spec, "--threshold", "0.9999", "--json")
    if run.code == 2:
        assert "nothing to fold" in run.err and not out.exists()
    else:
        assert run.code == 0, run.err
        stored = ssc("info", str(out), "--json").json()["unique_parameters"]
        assert stored == run.json()["params"]["folded"] < unique
    analysis = ssc("analyze", str(ckpt), "--threshold", "0.9999", "--json").json()
    (bank,) = analysis["banks"]
    assert analysis["params"]["folded"] <= unique == analysis["params"]["checkpoint_unique"]
    if CASES[index] == (1, 4, 3, 1, True):
        assert bank["kept_as_is"] is True
        # the analysis still reports what the layers are (2 distinct up to scale); a fold keeps 4
        assert bank["distinct_weights"] == {"before": 4, "after": 2}
        text = ssc("analyze", str(ckpt), "--threshold", "0.9999").out
        assert "a fold keeps it as it is" in " ".join(text.split())
    else:
        assert "kept_as_is" not in bank


@pytest.mark.parametrize("index", range(len(CASES)))
def test_sfcn_fold_never_grows(tmp_path, index) -> None:
    k, n, width, clusters, zero = CASES[index]
    torch.manual_seed(index)
    model = SFCN(blocks=(n + 1) // 2, width=width, num_templates=k).eval()
    convs = [m for m in model.modules() if isinstance(m, SConv2d)]
    _plant(convs, k, clusters, zero, seed=index)
    state = model.state_dict()
    for threshold in (EXACT, 1.0):
        (r,), counts = _analysed(state, threshold)
        looped = fold_sfcn(model, r.fold)
        path = tmp_path / f"looped_{threshold}.safetensors"
        save_looped(looped, path)
        stored = count_state_dict_parameters(load_looped(path).state_dict())
        assert stored == count_state_dict_parameters(looped.state_dict()) == counts.folded
        assert stored <= count_state_dict_parameters(state)
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(index))
        with torch.no_grad():
            assert _close(load_looped(path)(x), model(x))


@pytest.mark.parametrize("index", [0, 3, 6, 9, 10, 13])
def test_swrn_fold_never_grows(index) -> None:
    k, _, _, clusters, zero = CASES[index]
    torch.manual_seed(index)
    model = SWRN(depth=16, width=1, num_templates=k, num_classes=4, in_channels=1)
    g = torch.Generator().manual_seed(index)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
    for stage in (1, 2, 3):
        convs = [m for m in getattr(model, f"stage_{stage}").modules() if isinstance(m, SConv2d)]
        _plant(convs, k, min(clusters, len(convs)), zero, seed=index + stage)
    model.eval()
    state = model.state_dict()
    for threshold in (EXACT, 1.0):
        results, counts = _analysed(state, threshold)
        folded = fold_swrn(model, {r.bank.name: r.fold for r in results})
        stored = count_state_dict_parameters(folded.state_dict())
        assert stored == counts.folded <= count_state_dict_parameters(state)
        x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(index))
        with torch.no_grad():
            assert _close(folded(x), model(x))


def test_the_maze_sample_no_longer_grows(ssc, tmp_path) -> None:
    ckpt = SAMPLES / "tasks" / "maze_shared.pt"
    out = tmp_path / "maze.safetensors"
    run = ssc("fold", str(ckpt), "-o", str(out), "--json")
    assert run.code == 0, run.err
    params = run.json()["params"]
    stored = ssc("info", str(out), "--json").json()["unique_parameters"]
    checkpoint = ssc("info", str(ckpt), "--json").json()["unique_parameters"]
    assert stored == params["folded"] and params["checkpoint_unique"] == checkpoint
    assert stored <= checkpoint  # it used to fold to 47,118 against 47,106


# --- files --------------------------------------------------------------------------------------


def test_a_looped_program_without_gain_lists_has_a_gain_at_every_iteration() -> None:
    torch.manual_seed(0)
    model = SFCN(blocks=3, width=3, num_templates=2).eval()
    (r,), _ = _analysed(model.state_dict(), 0.0)  # one cluster of six: every layer a gain
    program = fold_sfcn(model, r.fold).program()
    assert all(
        s["conv1_gain_iterations"] == list(range(s["iterations"])) for s in program["segments"]
    )
    for s in program["segments"]:  # as files written before the lists were
        del s["conv1_gain_iterations"], s["conv2_gain_iterations"]
    old = LoopedFCN(program)
    assert [s.conv1_gains.numel() for s in old.loop_segments()] == [3]
    for bad in ([0, 0], [5], [-1], "0", [0.0]):
        forged = fold_sfcn(model, r.fold).program()
        forged["segments"][0]["conv2_gain_iterations"] = bad
        with pytest.raises(ValueError, match="gain iterations"):
            check_program(forged)


def test_a_forged_gain_flag_in_a_user_fold_program_is_refused(net_file, tmp_path) -> None:
    spec, model = _user_case(net_file, 13)  # nothing merges: every layer UNIT, "gain": false
    (bank,) = find_banks(model.state_dict()).banks
    plan = plan_bank(bank, tuple((i,) for i in range(len(bank.layers))), state_dict=None)
    folded = fold_user_model(model, {bank.name: plan}, [bank])
    out = tmp_path / "folded.safetensors"
    save_folded_user_model(folded, out, spec, user_fold_program({bank.name: plan}, [bank]))
    tensors = load_file(str(out))
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    program = json.loads(meta["program"])
    assert all(x.get("gain") is False for x in program["banks"][0]["layers"])
    assert not any(k.endswith(".gain") for k in tensors)
    view = folded_user_view(program, tensors)  # the analysis view: each layer its coefficients
    for i, conv in enumerate(model.convs):
        got = view[f"convs.{i}.coefficients"].reshape(-1)
        torch.testing.assert_close(got, conv.coefficients.detach().reshape(-1))
    program["banks"][0]["layers"][0]["gain"] = "no"
    forged = tmp_path / "forged.safetensors"
    save_file(tensors, str(forged), {**meta, "program": json.dumps(program)})
    with pytest.raises(CheckpointError, match="gain flag"):
        load_folded_user_model(forged, spec)
