"""Task training: schedule, deep supervision, determinism, measured steps to an accuracy."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from soft_share_cli.data.loaders import load_data
from soft_share_cli.errors import DataError, InputError
from soft_share_cli.models.recurrent import SFCN
from soft_share_cli.training.tasks import (
    TaskTrainConfig,
    _scored,
    step_lr,
    steps_to,
    train_task,
)

TINY = TaskTrainConfig(blocks=2, width=4, num_templates=2, epochs=2, batch_size=16, align=1.0)


def test_warmup_then_cosine() -> None:
    config = replace(TINY, lr=0.01, epochs=4)
    lrs = [step_lr(config, step, 10) for step in range(40)]
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01)  # linear warm-up
    assert lrs[10] == pytest.approx(0.01)  # cosine from the peak ...
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] < 0.0002  # ... to almost 0


def test_deep_supervision_scores_the_last_read_outs() -> None:
    torch.manual_seed(0)
    model = SFCN(blocks=3, width=4, num_templates=2)
    x, y = torch.randn(2, 3, 7, 7), torch.randint(0, 2, (2, 7, 7))
    logits, loss = _scored(model, x, y, 1)
    assert_close(logits, model(x))
    assert_close(loss, F.cross_entropy(model(x), y))
    logits, loss = _scored(model, x, y, 2)
    *_, h2, h3 = model.states(x)
    assert_close(logits, model.head(h3))
    expected = (F.cross_entropy(model.head(h2), y) + F.cross_entropy(model.head(h3), y)) / 2
    assert_close(loss, expected)


def test_training_is_deterministic_and_records_history() -> None:
    train, test = load_data("maze:size=3,count=40", "train"), load_data("maze:size=3,count=40")
    first = train_task(TINY, train, test)
    second = train_task(TINY, train, test)
    assert [r.steps for r in first.history] == [3, 6]  # 40 mazes, batches of 16
    strip = [{**r.__dict__, "seconds": 0} for r in first.history]
    assert strip == [{**r.__dict__, "seconds": 0} for r in second.history]
    weights = first.model.state_dict()
    for key, value in second.model.state_dict().items():
        assert torch.equal(weights[key], value)
    assert not first.model.training
    assert first.history[-1].align_penalty <= 1.0


def test_steps_to_reads_the_first_epoch_that_reached_it() -> None:
    history = [
        {"steps": 10, "train_exact": 50.0},
        {"steps": 20, "train_exact": 95.0},
        {"steps": 30, "train_exact": 99.0},
    ]
    assert steps_to(history, "train_exact", 95.0) == 20
    assert steps_to(history, "train_exact", 99.5) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"supervise": 3}, "supervise must lie"),
        ({"clip": 0.0}, "gradient clip"),
        ({"arch": "swrn"}, "fully convolutional"),
        ({"arch": "fcn"}, "no template bank"),
        ({"num_templates": None}, "needs a number of templates"),
    ],
)
def test_bad_configs_are_refused_before_training(change: dict, message: str) -> None:
    train = load_data("maze:size=3,count=4", "train")
    with pytest.raises(InputError, match=message):
        train_task(replace(TINY, **change), train)


def test_image_data_is_refused() -> None:
    with pytest.raises(DataError, match="not a per-pixel task"):
        train_task(TINY, load_data("digits?limit=8", "train"))


def test_training_leaves_the_flush_denormal_mode_as_it_was() -> None:
    from soft_share_cli.training.fit import flush_denormal_enabled

    data = load_data("maze:size=3,count=16", split="train")
    config = replace(TINY, epochs=1)
    assert not flush_denormal_enabled()
    train_task(config, data)  # sets the mode while it trains (subnormal gradients are slow)
    assert not flush_denormal_enabled()
    if torch.set_flush_denormal(True):  # where the CPU has the mode at all
        try:
            assert flush_denormal_enabled()
            train_task(config, data)
            assert flush_denormal_enabled()  # a caller's choice is kept too
        finally:
            torch.set_flush_denormal(False)
