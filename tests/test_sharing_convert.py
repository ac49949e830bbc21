"""Rewriting networks into template banks (sharing.convert) and fine-tuning them (finetune)."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint
from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import CheckpointError, InputError
from soft_share_cli.models.builder import rebuild_model
from soft_share_cli.models.layers import SConv2d, SharedConv2d
from soft_share_cli.models.wrn import SWRN, WRN
from soft_share_cli.sharing import convert
from soft_share_cli.sharing import finetune as finetune_module
from soft_share_cli.sharing.convert import (
    RECORD_KEY,
    apply_record,
    share_network,
    share_wrn,
    sharing_record,
)
from soft_share_cli.sharing.finetune import finetune
from soft_share_cli.sharing.groups import ShareGroup, find_groups, wrn_groups
from soft_share_cli.training.classification import TrainConfig, make_optimizer
from soft_share_cli.training.fit import TrainState

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_sharing_groups as nets  # noqa: E402

BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "basic_resnet": nets.basic_resnet,
    "bottleneck_resnet": nets.bottleneck_resnet,
    "vgg": nets.vgg,
    "dict_stages": nets.DictStagesNet,
    "odd": nets.OddNet,
    "geometry": nets.geometry,
    "pytorchcv_resnet20": nets.pytorchcv_resnet20,
    "wrn": lambda: WRN(16, 1, num_classes=10, in_channels=3),  # find_groups' layout, 4/3/3
}


def _input(name: str, batch: int = 4) -> torch.Tensor:
    size = 32 if name == "pytorchcv_resnet20" else 16  # pytorchcv pools 8x8 at the end
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(7))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _outside(model: nn.Module, groups: list[ShareGroup]) -> dict[str, Any]:
    """Every module, parameter and buffer outside the groups: objects, types and values."""
    grouped = {name for g in groups for name in g.layers}

    def inside(name: str) -> bool:
        return any(name == layer or name.startswith(layer + ".") for layer in grouped)

    return {
        "modules": {n: (m, type(m)) for n, m in model.named_modules() if not inside(n)},
        "params": {
            n: (p, p.detach().clone()) for n, p in model.named_parameters() if not inside(n)
        },
        "buffers": {n: (b, b.clone()) for n, b in model.named_buffers() if not inside(n)},
    }


def _assert_untouched(model: nn.Module, before: dict[str, Any], groups: list[ShareGroup]) -> None:
    after = _outside(model, groups)
    assert after["modules"].keys() == before["modules"].keys()
    for name, (module, kind) in before["modules"].items():
        if name:  # the root's children changed (its grouped convs), the root is the same object
            assert after["modules"][name][0] is module, name
        assert type(after["modules"][name][0]) is kind, name
    assert model is before["modules"][""][0]
    # the parameters outside the groups, and no others but the banks' and shared convs'
    assert after["params"].keys() == before["params"].keys()
    for name, (param, value) in before["params"].items():
        assert after["params"][name][0] is param, name
        assert torch.equal(param, value), name
    assert after["buffers"].keys() == before["buffers"].keys()
    for name, (buffer, value) in before["buffers"].items():
        assert after["buffers"][name][0] is buffer, name
        assert torch.equal(buffer, value), name  # BatchNorm running stats among them


@pytest.mark.parametrize("name", list(BUILDERS))
def test_full_rank_share_keeps_logits_and_everything_else(name: str) -> None:
    model = nets.seeded(BUILDERS[name])
    x = _input(name)
    with torch.no_grad():
        before_logits = model(x)
    groups = find_groups(model)
    assert groups
    originals = {n: model.get_submodule(n) for g in groups for n in g.layers}
    before = _outside(model, groups)
    rng = torch.get_rng_state()
    fits = share_network(model, groups, [len(g.layers) for g in groups])
    assert torch.equal(torch.get_rng_state(), rng)  # no initial draw that is overwritten
    with torch.no_grad():
        after_logits = model(x)
    assert _relative(after_logits, before_logits) < 1e-5
    _assert_untouched(model, before, groups)
    for group, fit in zip(groups, fits, strict=True):
        banks = {id(model.get_submodule(n).bank) for n in group.layers}
        assert len(banks) == 1  # one bank per group, registered in every shared conv
        for n in group.layers:
            shared, conv = model.get_submodule(n), originals[n]
            assert type(shared) is SharedConv2d
            assert shared.coefficients.shape == (len(group.layers), 1, 1, 1, 1)
            assert (shared.stride, shared.padding, shared.dilation, shared.groups) == (
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
            )
            if conv.bias is None:
                assert shared.bias is None
            else:
                assert torch.equal(shared.bias, conv.bias)
                assert shared.bias is not conv.bias
        assert fit.relative_error < 1e-6


@pytest.mark.parametrize("name", ["basic_resnet", "vgg"])
def test_low_rank_weights_are_the_fits_and_logits_match_a_plain_rebuild(name: str) -> None:
    model = nets.seeded(BUILDERS[name])
    groups = find_groups(model)
    ks = [max(1, len(g.layers) - 1) for g in groups]
    reference = copy.deepcopy(model)
    fits = share_network(model, groups, ks)
    for group, fit in zip(groups, fits, strict=True):
        fitted = fit.weights()
        for i, n in enumerate(group.layers):
            torch.testing.assert_close(model.get_submodule(n).weight(), fitted[i])
            with torch.no_grad():  # the plain network given the fitted weights
                reference.get_submodule(n).weight.copy_(fitted[i])
    x = _input(name)
    with torch.no_grad():
        assert _relative(model(x), reference(x)) < 1e-5


def test_gradients_reach_templates_coefficients_and_biases() -> None:
    model = nets.seeded(nets.vgg).train()
    groups = find_groups(model)
    share_network(model, groups, [1, 2])
    model(_input("vgg")).square().sum().backward()
    for group in groups:
        for n in group.layers:
            shared = model.get_submodule(n)
            for tensor in (shared.bank.templates, shared.coefficients, shared.bias):
                assert tensor.grad is not None and float(tensor.grad.abs().sum()) > 0


@pytest.mark.parametrize("layers", [("body.2", "body.5"), ("body.8", "body.10")])
def test_share_network_refuses_hard_tied_layers(layers: tuple[str, str]) -> None:
    model = nets.OddNet()
    with pytest.raises(InputError, match="hard-tied"):
        share_network(model, [ShareGroup("body", layers, (8, 8, 3, 3))], [1])
    assert not any(isinstance(m, SConv2d) for m in model.modules())


@pytest.mark.parametrize(
    ("groups", "ks", "message"),
    [
        ([ShareGroup("g", ("2", "4"), (8, 8, 3, 3))], [3], "1..2"),
        ([ShareGroup("g", ("2", "4"), (8, 8, 3, 3))], [0], "1..2"),
        ([ShareGroup("g", ("2", "4"), (8, 8, 3, 3))], [1, 1], "as many K"),
        ([ShareGroup("g", ("2", "5"), (8, 8, 3, 3))], [1], "not a plain Conv2d"),
        ([ShareGroup("g", ("2", "8"), (8, 8, 3, 3))], [1], "group's shape"),
        (
            [ShareGroup("g", ("2", "4"), (8, 8, 3, 3)), ShareGroup("h", ("4", "2"), (8, 8, 3, 3))],
            [1, 1],
            "in two groups",
        ),
        (
            [
                ShareGroup("g", ("10", "12"), (16, 16, 3, 3)),
                ShareGroup("h", ("2", "4"), (8, 8, 3, 3)),
            ],
            [2, 3],
            "group h: .*1..2",
        ),
    ],
)
def test_share_network_refuses_bad_groups_before_changing_anything(
    groups: list[ShareGroup], ks: list[int], message: str
) -> None:
    model = nets.seeded(nets.vgg)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match=message):
        share_network(model, groups, ks)
    assert not any(isinstance(m, SConv2d) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _swrn_kwargs(k: int) -> dict[str, int]:
    return {"depth": 28, "width": 1, "num_templates": k, "num_classes": 10, "in_channels": 1}


def test_share_wrn_gives_an_swrn_that_ssc_rebuilds(tmp_path: Path) -> None:
    model = nets.seeded(lambda: WRN(28, 1, num_classes=10, in_channels=1))
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x)
    groups = wrn_groups(4, [(16, 16, 3, 3), (32, 32, 3, 3), (64, 64, 3, 3)])
    shared, fits = share_wrn(model, groups, [6, 6, 6])
    assert type(shared) is SWRN and shared.num_templates == 6
    with torch.no_grad():
        got = shared(x)
    assert _relative(got, want) < 1e-5
    path = tmp_path / "shared.pt"
    save_checkpoint(
        path,
        arch="swrn",
        arch_kwargs=_swrn_kwargs(6),
        state_dict=shared.state_dict(),
        metadata={RECORD_KEY: sharing_record(groups, [6, 6, 6], fits)},
    )
    rebuilt, spec = rebuild_model(load_checkpoint(path))
    assert spec.arch == "swrn" and type(rebuilt) is SWRN
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), got, rtol=0, atol=0)
    # K < L: each stage's bank holds its fit, each layer its coefficients
    low, fits = share_wrn(model, groups, [3, 3, 3])
    for stage, (group, fit) in enumerate(zip(groups, fits, strict=True), start=1):
        torch.testing.assert_close(getattr(low, f"bank_{stage}").templates, fit.templates)
        for i, n in enumerate(group.layers):
            torch.testing.assert_close(low.get_submodule(n).weight(), fit.weights()[i])
    with pytest.raises(InputError, match="one K"):
        share_wrn(model, groups, [6, 5, 6])
    with pytest.raises(InputError, match="1..6"):
        share_wrn(model, groups, [7, 7, 7])


@pytest.mark.parametrize("name", ["basic_resnet", "vgg", "pytorchcv_resnet20"])
def test_record_rebuilds_the_shared_network(name: str, tmp_path: Path) -> None:
    model = nets.seeded(BUILDERS[name])
    groups = find_groups(model)
    ks = [max(1, len(g.layers) // 2) for g in groups]
    fits = share_network(model, groups, ks)
    record = sharing_record(groups, ks, fits)
    path = tmp_path / "user.pt"
    save_checkpoint(
        path, arch="user", arch_kwargs={}, state_dict=model.state_dict(), metadata={"s": record}
    )
    loaded = load_checkpoint(path)
    stored = loaded.metadata["s"]
    assert json.loads(json.dumps(stored)) == json.loads(json.dumps(record))
    fresh = nets.seeded(BUILDERS[name], seed=1)
    assert apply_record(fresh, stored, "user.pt") is fresh
    fresh.load_state_dict(loaded.state_dict, strict=True)
    x = _input(name)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    with torch.device("meta"):  # a skeleton's shared layers stay on its device
        skeleton = BUILDERS[name]()
    apply_record(skeleton, stored, "user.pt")
    assert all(p.is_meta for p in skeleton.parameters())


def _record() -> dict[str, Any]:
    return {
        "format": "ssc-share",
        "version": 1,
        "groups": [
            {
                "name": "layer1",
                "layers": [f"layer1.{b}.conv{c}" for b in (0, 1) for c in (1, 2)],
                "shape": [8, 8, 3, 3],
                "templates": 2,
                "relative_error": 0.1,
            },
            {
                "name": "layer2",
                "layers": ["layer2.0.conv2", "layer2.1.conv1"],
                "shape": [16, 16, 3, 3],
                "templates": 1,
                "relative_error": 0.2,
            },
        ],
    }


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(record: dict[str, Any]) -> Any:
        holder = record
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = value
        return record

    return change


def _drop(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda record: {k: v for k, v in record.items() if k != key}


LAYERS = ("groups", 0, "layers")
HOSTILE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "none": lambda r: None,
    "list": lambda r: [r],
    "string": lambda r: "ssc-share",
    "format": _set(("format",), "ssc-fold"),
    "no format": _drop("format"),
    "version 2": _set(("version",), 2),
    "version str": _set(("version",), "1"),
    "version bool": _set(("version",), True),
    "version float": _set(("version",), 1.0),
    "no groups": _drop("groups"),
    "groups dict": _set(("groups",), {"0": {}}),
    "groups empty": _set(("groups",), []),
    "too many groups": lambda r: {**r, "groups": r["groups"][:1] * 1001},
    "group int": _set(("groups", 0), 7),
    "group list": _set(("groups", 0), [["layer1.0.conv1"]]),
    "name int": _set(("groups", 0, "name"), 3),
    "name long": _set(("groups", 0, "name"), "n" * 100_000),
    "layers str": _set(LAYERS, "layer1.0.conv1"),
    "layers one": _set(LAYERS, ["layer1.0.conv1"]),
    "layers million": _set(LAYERS, [f"layer1.{i}.conv1" for i in range(10**6)]),
    "layers ints": _set(LAYERS, [1, 2]),
    "layers bools": _set(LAYERS, [True, False]),
    "layers nested": _set(LAYERS, [["layer1.0.conv1"], {"a": 1}]),
    "layer empty": _set(LAYERS, ["", "layer1.0.conv1"]),
    "layer long": _set(LAYERS, ["layer1.0.conv1", "x" * 5000]),
    "parameter": _set(LAYERS, ["layer1.0.conv1", "layer1.0.conv2.weight"]),
    "attribute": _set(LAYERS, ["layer1.0.conv1", "training"]),
    "dunder": _set(LAYERS, ["layer1.0.conv1", "__class__"]),
    "double dot": _set(LAYERS, ["layer1.0.conv1", "layer1..0"]),
    "batchnorm": _set(LAYERS, ["layer1.0.conv1", "layer1.0.bn1"]),
    "container": _set(LAYERS, ["layer1.0.conv1", "layer1"]),
    "linear": _set(LAYERS, ["layer1.0.conv1", "fc"]),
    "root": _set(LAYERS, ["layer1.0.conv1", "."]),
    "other shape": _set(LAYERS, ["layer1.0.conv1", "layer2.0.conv1"]),
    "1x1": _set(LAYERS, ["layer3.0.downsample.0", "layer3.0.conv1"]),
    "twice in a group": _set(LAYERS, ["layer1.0.conv1", "layer1.0.conv1"]),
    "in two groups": _set(("groups", 1, "layers"), ["layer2.0.conv2", "layer1.0.conv1"]),
    "shape three": _set(("groups", 0, "shape"), [8, 8, 3]),
    "shape str": _set(("groups", 0, "shape"), "8x8x3x3"),
    "shape bools": _set(("groups", 0, "shape"), [8, 8, True, True]),
    "shape floats": _set(("groups", 0, "shape"), [8.0, 8, 3, 3]),
    "shape zero": _set(("groups", 0, "shape"), [0, 8, 3, 3]),
    "shape huge": _set(("groups", 0, "shape"), [10**9, 10**9, 3, 3]),
    "shape nested": _set(("groups", 0, "shape"), [[8], 8, 3, 3]),
    "k zero": _set(("groups", 0, "templates"), 0),
    "k negative": _set(("groups", 0, "templates"), -1),
    "k above L": _set(("groups", 0, "templates"), 5),
    "k huge": _set(("groups", 0, "templates"), 10**18),
    "k bool": _set(("groups", 0, "templates"), True),
    "k float": _set(("groups", 0, "templates"), 2.0),
    "k str": _set(("groups", 0, "templates"), "2"),
    "k missing": lambda r: _set(("groups", 0), {**r["groups"][0], "templates": None})(r),
}


def test_the_valid_record_applies() -> None:
    model = nets.seeded(nets.basic_resnet)
    apply_record(model, _record(), "f.pt")
    assert type(model.layer1[1].conv2) is SharedConv2d
    assert model.layer1[0].conv1.bank is model.layer1[1].conv2.bank
    assert model.layer1[0].conv1.bank.num_templates == 2


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_records_are_one_line_and_build_nothing(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nets.seeded(nets.basic_resnet)
    state = model.state_dict()
    built: list[tuple[Any, ...]] = []
    real_bank = convert.TemplateBank

    def counting_bank(*args: Any) -> Any:
        built.append(args)
        return real_bank(*args)

    monkeypatch.setattr(convert, "TemplateBank", counting_bank)
    record = HOSTILE[case](_record())
    with pytest.raises(CheckpointError) as caught:
        apply_record(model, record, "f.pt")
    message = str(caught.value)
    assert message.startswith("f.pt: ") and "\n" not in message and len(message) < 400
    assert built == []  # refused before any bank was made
    assert not any(isinstance(m, SConv2d) for m in model.modules())
    assert model.state_dict().keys() == state.keys()


def test_a_record_naming_non_square_convs_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, (3, 1)), nn.Conv2d(4, 4, (3, 1)))
    record = {
        "format": "ssc-share",
        "version": 1,
        "groups": [{"name": "g", "layers": ["0", "1"], "shape": [4, 4, 3, 1], "templates": 1}],
    }
    with pytest.raises(CheckpointError, match="square"):
        apply_record(model, record, "f.pt")


# --- finetune ---------------------------------------------------------------------------------

FT_CONFIG = TrainConfig(
    arch="ignored", epochs=2, batch_size=16, lr=0.05, weight_decay=5e-3, align=0.1, seed=3
)


def _shared_vgg() -> nn.Module:
    model = nets.seeded(nets.vgg)
    share_network(model, find_groups(model), [1, 2])
    return model


def _noise(split: str, n: int) -> Dataset:
    g = torch.Generator().manual_seed(11 if split == "train" else 12)
    x, y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return Dataset(name="noise", split=split, x=x, y=y, num_classes=10)


def _plain(history: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items() if k != "seconds"} for r in history]


def _equal_states(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_finetune_is_seeded_and_exempts_coefficients_from_weight_decay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[torch.optim.Optimizer] = []

    def capture(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        made.append(make_optimizer(model, config))
        return made[-1]

    monkeypatch.setattr(finetune_module, "make_optimizer", capture)
    train, test = _noise("train", 48), _noise("test", 8)
    first, second = _shared_vgg(), _shared_vgg()
    start = copy.deepcopy(first.state_dict())
    h1, _ = finetune(first, FT_CONFIG, train, test)
    h2, _ = finetune(second, FT_CONFIG, train, test)
    assert all(r.test_top1 is not None for r in h1)
    assert _equal_states(first, second) and _plain(h1) == _plain(h2)
    assert len(h1) == 2 and not first.training
    assert not torch.equal(first.state_dict()["2.coefficients"], start["2.coefficients"])
    coefficients = {id(m.coefficients) for m in first.modules() if isinstance(m, SConv2d)}
    groups = made[0].param_groups
    assert [g["weight_decay"] for g in groups] == [5e-3, 0.0]
    assert {id(p) for p in groups[1]["params"]} == coefficients
    others = {id(p) for p in first.parameters()} - coefficients
    assert [id(p) for p in groups[0]["params"]] == [
        id(p) for p in first.parameters() if id(p) in others
    ]
    assert len(coefficients) == 5 and len(groups[0]["params"]) == len(others)


class _Stop(Exception):
    pass


def test_finetune_resumed_after_epoch_one_equals_an_uninterrupted_run() -> None:
    train = _noise("train", 48)
    whole = _shared_vgg()
    h_whole, _ = finetune(whole, FT_CONFIG, train)
    saved: list[TrainState] = []

    def stop(state: TrainState) -> None:
        saved.append(copy.deepcopy(state))
        raise _Stop

    with pytest.raises(_Stop):
        finetune(_shared_vgg(), FT_CONFIG, train, on_state=stop)
    assert saved[0].epoch == 1
    resumed = _shared_vgg()
    h_resumed, _ = finetune(resumed, FT_CONFIG, train, resume=saved[0])
    assert _plain(h_resumed) == _plain(h_whole)
    assert _equal_states(resumed, whole)
