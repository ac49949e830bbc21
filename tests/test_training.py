"""Training loop and alignment regulariser, on tiny models and random 1x8x8 data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import InputError
from soft_share_cli.models.layers import SConv2d, TemplateBank
from soft_share_cli.models.wrn import SWRN
from soft_share_cli.training.classification import (
    EpochRecord,
    Schedule,
    TrainConfig,
    _augment,
    checkpoint_metadata,
    epoch_lr,
    make_optimizer,
    train,
)
from soft_share_cli.training.regularizers import (
    alignment_penalty,
    coefficient_groups,
    nearest_neighbour_similarity,
)

# Small enough that every run below takes a fraction of a second on 2 cores.
FAST = TrainConfig(depth=16, width=1, num_templates=3, epochs=3, batch_size=16, lr=0.05)


def toy_data(n: int = 64, channels: int = 1, size: int = 8, seed: int = 1) -> Dataset:
    """A learnable task: the label says whether the image's mean is positive."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return Dataset(name="toy", split="train", x=x, y=y, num_classes=2)


def param(*values: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values).view(-1, 1, 1, 1, 1))


# --- the penalty -----------------------------------------------------------------------------


def test_parallel_and_antiparallel_layers_cost_nothing() -> None:
    a = [1.0, -2.0, 0.5]
    group = [param(*a), param(*(3 * v for v in a)), param(*(-0.5 * v for v in a))]
    assert alignment_penalty([group]).item() == pytest.approx(0.0, abs=1e-6)


def test_orthogonal_layers_cost_one_each() -> None:
    rows = torch.empty(3, 4)
    nn.init.orthogonal_(rows)
    group = [nn.Parameter(r.view(-1, 1, 1, 1, 1)) for r in rows]
    assert alignment_penalty([group]).item() == pytest.approx(1.0, abs=1e-6)
    # The builder's orthogonal init (2 layers per bank <= K = 3) is the same worst case.
    model = SWRN(depth=16, width=1, num_templates=3, num_classes=2, in_channels=1)
    assert alignment_penalty(coefficient_groups(model)).item() == pytest.approx(1.0, abs=1e-5)


def test_penalty_takes_the_nearest_neighbour_and_averages_banks() -> None:
    # Bank 1: layers 0 and 1 parallel, layer 2 orthogonal to both -> (0 + 0 + 1) / 3.
    bank1 = [param(1.0, 0.0), param(2.0, 0.0), param(0.0, 1.0)]
    # Bank 2: two layers at 60 degrees -> 1 - cos^2 = 0.75 each. A lone layer is skipped.
    bank2 = [param(1.0, 0.0), param(0.5, math.sqrt(3) / 2)]
    expected = (1 / 3 + 0.75) / 2
    penalty = alignment_penalty([bank1, bank2, [param(1.0, 1.0)]])
    assert penalty.item() == pytest.approx(expected, abs=1e-6)
    assert alignment_penalty([]).item() == 0.0
    assert alignment_penalty([[param(1.0, 2.0)]]).item() == 0.0


def test_penalty_gradient_reaches_coefficients_only() -> None:
    torch.manual_seed(0)
    model = SWRN(depth=22, width=1, num_templates=3, num_classes=2, in_channels=1)
    with torch.no_grad():
        for group in coefficient_groups(model):
            for c in group:
                c.normal_()  # away from the orthogonal init, where the gradient is exactly 0
    alignment_penalty(coefficient_groups(model)).backward()
    for name, p in model.named_parameters():
        if name.endswith("coefficients"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_groups_follow_the_swrn_banks() -> None:
    depth = 22
    n = (depth - 4) // 6
    model = SWRN(depth=depth, width=1, num_templates=3, num_classes=2, in_channels=1)
    groups = coefficient_groups(model)
    assert [len(g) for g in groups] == [2 * (n - 1)] * 3
    for i, group in enumerate(groups, start=1):
        stage = getattr(model, f"stage_{i}")
        expected = [m.coefficients for m in stage.modules() if isinstance(m, SConv2d)]
        assert [id(p) for p in group] == [id(p) for p in expected]


class MixedNet(nn.Module):
    """One bank of three shared convs between plain convs, plus a second bank object that
    holds the same template tensor (still one bank)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        bank = TemplateBank(2, 4, 4, 3)
        alias = TemplateBank(2, 4, 4, 3)
        alias.templates = bank.templates
        self.a = SConv2d(bank)
        self.plain = nn.Conv2d(4, 4, 3, padding=1)
        self.b = SConv2d(alias)
        self.c = SConv2d(bank)
        self.head = nn.Conv2d(4, 2, 1)


def test_groups_on_a_custom_net_with_plain_convs() -> None:
    net = MixedNet()
    groups = coefficient_groups(net)
    assert len(groups) == 1
    assert [id(p) for p in groups[0]] == [id(net.a.coefficients), id(net.b.coefficients),
                                           id(net.c.coefficients)]  # fmt: skip


# --- training --------------------------------------------------------------------------------


def test_training_reduces_the_loss_and_reports_each_epoch() -> None:
    seen: list[tuple[str, int, int]] = []
    records: list[EpochRecord] = []
    result = train(FAST, toy_data(), progress=lambda *a: seen.append(a), on_epoch=records.append)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0]
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert tuple(records) == result.history
    assert seen[:4] == [("epoch 1/3", k, 4) for k in (1, 2, 3, 4)] and len(seen) == 12
    assert result.test_top1 is None and not result.model.training
    assert result.arch_kwargs == {
        "depth": 16, "width": 1, "num_templates": 3, "num_classes": 2, "in_channels": 1,
    }  # fmt: skip
    json.dumps(result.to_dict())


def test_same_config_and_data_give_identical_weights() -> None:
    # Augmentation on, so its random draws are covered by the seed as well.
    config = TrainConfig(depth=10, epochs=2, batch_size=16, lr=0.05, augment=True)
    data = toy_data(channels=3)
    first = train(config, data).model.state_dict()
    second = train(config, data).model.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other = train(TrainConfig(depth=10, epochs=2, batch_size=16, lr=0.05, seed=1), data)
    assert not torch.equal(
        other.model.state_dict()["classifier.weight"], first["classifier.weight"]
    )


def test_coefficients_get_no_weight_decay() -> None:
    model = SWRN(depth=16, width=1, num_templates=3, num_classes=2, in_channels=1)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=5e-4))
    decay, no_decay = optimizer.param_groups
    coefficients = {id(p) for n, p in model.named_parameters() if n.endswith("coefficients")}
    assert {id(p) for p in no_decay["params"]} == coefficients and no_decay["weight_decay"] == 0
    assert decay["weight_decay"] == 5e-4
    assert not coefficients & {id(p) for p in decay["params"]}
    # Every parameter exactly once, shared templates included.
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_alignment_weight_makes_layers_more_parallel() -> None:
    data = toy_data()
    config = TrainConfig(depth=16, epochs=4, batch_size=16, lr=0.05)
    plain = train(config, data)
    aligned = train(TrainConfig(**{**config.__dict__, "align": 10.0}), data)
    before = nearest_neighbour_similarity(coefficient_groups(plain.model))
    after = nearest_neighbour_similarity(coefficient_groups(aligned.model))
    assert after > before + 0.3
    assert aligned.history[-1].align_penalty < plain.history[-1].align_penalty


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (Schedule.COSINE, [0.1 * 0.5 * (1 + math.cos(math.pi * e / 5)) for e in range(5)]),
        # Milestones 0.4 and 0.8 of 5 epochs: drops after epochs 2 and 4.
        (Schedule.STEP, [0.1, 0.1, 0.1 * 0.2, 0.1 * 0.2, 0.1 * 0.04]),
    ],
)
def test_learning_rate_per_epoch(schedule: Schedule, expected: list[float]) -> None:
    config = TrainConfig(
        depth=10, epochs=5, batch_size=32, lr=0.1, schedule=schedule, milestones=(0.4, 0.8)
    )
    assert [epoch_lr(config, e) for e in range(1, 6)] == pytest.approx(expected)
    result = train(config, toy_data(n=32))
    assert [r.lr for r in result.history] == pytest.approx(expected)


def test_wrn_trains_without_banks() -> None:
    config = TrainConfig(arch="wrn", depth=10, num_templates=None, epochs=1, align=1.0)
    result = train(config, toy_data(n=32))
    assert "num_templates" not in result.arch_kwargs
    assert result.history[0].align_penalty == 0.0


def test_test_accuracy_is_recorded_per_epoch() -> None:
    test = toy_data(n=32, seed=2)
    result = train(TrainConfig(depth=10, epochs=2, batch_size=16), toy_data(), test)
    assert all(r.test_top1 is not None and 0 <= r.test_top1 <= 100 for r in result.history)
    assert result.test_top1 == result.history[-1].test_top1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (TrainConfig(arch="resnet"), "cannot train architecture"),
        (TrainConfig(arch="wrn", num_templates=3), "no template banks"),
        (TrainConfig(num_templates=None), "templates"),
        (TrainConfig(epochs=0), "epochs must be >= 1"),
        (TrainConfig(nesterov=True, momentum=0.0), "Nesterov"),
        (TrainConfig(milestones=(0.5, 1.5)), "milestones"),
        (TrainConfig(device="nonsense"), "device"),
    ],
)
def test_bad_config_is_an_input_error(config: TrainConfig, message: str) -> None:
    with pytest.raises(InputError, match=message):
        train(config, toy_data(n=8))


def test_empty_or_mislabelled_data_is_an_input_error() -> None:
    empty = Dataset("toy", "train", torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), 2)
    with pytest.raises(InputError, match="no samples"):
        train(FAST, empty)
    bad = toy_data(n=8)
    bad = Dataset("toy", "train", bad.x, bad.y + 5, 2)
    with pytest.raises(InputError, match="labels"):
        train(FAST, bad)


def test_augment_crops_a_window_of_the_padded_image() -> None:
    x = torch.randn(16, 1, 8, 8)
    out = _augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(len(x)):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)  # grayscale: never flipped


def test_checkpoint_metadata_is_plain_python() -> None:
    config = TrainConfig(depth=10, epochs=1, batch_size=32)
    data = toy_data(n=32)
    data = Dataset("digits", "train", data.x, data.y, 2, {"scale": 16.0})
    meta = checkpoint_metadata(train(config, data), config, data, "ssc train --data digits")
    json.dumps(meta)  # only plain types
    assert meta["data"] == "digits" and meta["preprocessing"] == {"scale": 16.0}
    assert meta["config"]["schedule"] == "cosine" and meta["config"]["milestones"] == [
        0.3,
        0.6,
        0.8,
    ]
    assert meta["command"] == "ssc train --data digits" and len(meta["history"]) == 1
    assert meta["torch_version"] == torch.__version__ and meta["created"].endswith("+00:00")


def test_recurrence_pairs_follow_roles_across_blocks() -> None:
    from soft_share_cli.training.regularizers import recurrence_pairs

    names = [f"stage_1.{b}.conv{r}" for b in (1, 2, 3) for r in (1, 2)]
    assert recurrence_pairs(names) == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert recurrence_pairs(["conv2", "conv3", "conv4"]) == [(0, 1), (1, 2)]
    assert recurrence_pairs(["only.conv"]) == []


def test_recurrent_penalty_is_zero_for_repeating_blocks_and_one_for_orthogonal() -> None:
    from soft_share_cli.training.regularizers import AlignMode, alignment_penalty

    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    pairs = [[(0, 2), (1, 3)]]
    repeating = [[nn.Parameter(v.clone()) for v in (a, b, -2 * a, 3 * b)]]
    assert float(
        alignment_penalty(repeating, AlignMode.RECURRENT, pairs).detach()
    ) == pytest.approx(0.0)
    alternating = [[nn.Parameter(v.clone()) for v in (a, b, b, a)]]
    assert float(
        alignment_penalty(alternating, AlignMode.RECURRENT, pairs).detach()
    ) == pytest.approx(1.0)
    # nearest mode is satisfied by the alternating bank (every layer has a parallel partner)
    assert float(alignment_penalty(alternating, AlignMode.NEAREST).detach()) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        alignment_penalty(alternating, AlignMode.RECURRENT)


def test_train_writes_a_line_per_epoch_when_not_on_a_terminal(ssc, tmp_path) -> None:
    import re

    out = tmp_path / "t.pt"
    args = ("train", "--data", "digits?limit=100", "--depth", "16", "--templates", "2")
    result = ssc(*args, "--epochs", "2", "-o", str(out))
    assert result.code == 0, result.err
    lines = [ln for ln in result.out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"]
    assert all(re.search(r"loss \d+\.\d{4}  train [\d.]+ %  test [\d.]+ %", ln) for ln in lines)
    as_json = ssc(*args, "--epochs", "1", "-o", str(tmp_path / "j.pt"), "--json")
    assert as_json.code == 0 and json.loads(as_json.out)["history"]  # JSON stays pure


def test_train_refuses_an_swrn_with_no_shared_block(ssc, tmp_path) -> None:
    out = tmp_path / "x.pt"
    result = ssc("train", "--data", "digits?limit=50", "--depth", "10", "-o", str(out))
    assert result.code == 2 and "no layer would use a template bank" in result.err
    assert not out.exists()
    plain = ssc("train", "--data", "digits?limit=50", "--arch", "wrn", "--depth", "10")
    assert plain.code == 2  # (no -o) — the plain network may take depth 10: only -o is missing
    assert "template bank" not in plain.err


def test_train_refuses_options_its_architecture_does_not_read(ssc, tmp_path) -> None:
    out = tmp_path / "x.pt"
    cases = [
        (("--arch", "wrn", "--data", "digits", "--templates", "3"), "--templates does not apply"),
        (("--arch", "sfcn", "--data", "maze:size=4", "--depth", "16"), "--depth does not apply"),
        (("--arch", "swrn", "--data", "digits", "--blocks", "4", "--channels", "8"), "--blocks,"),
        (("--arch", "fcn", "--data", "maze:size=4", "--align", "1"), "--align does not apply"),
        (("--data", "digits", "--align-mode", "signed"), "it needs --align W"),
    ]
    for args, message in cases:
        result = ssc("train", *args, "-o", str(out))
        assert result.code == 2 and message in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1 and not out.exists()
    named = ssc("train", "--data", "digits", "-o", str(tmp_path / "t.safetensors"))
    assert named.code == 2 and "name it *.pt" in named.err
