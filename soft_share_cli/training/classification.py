"""Train a (shared) wide ResNet from scratch on an in-memory
:class:`~soft_share_cli.data.loaders.Dataset`.

The recipe follows the paper's setup (SGD with Nesterov momentum, weight decay on everything but
the coefficients, orthogonal coefficient init from the model builder) at a size a laptop can run.
Everything is seeded: the same config and data give bit-identical weights on the same device.
Batches are drawn by indexing the in-memory tensors with a seeded permutation, not through a
``DataLoader``, so there are no worker processes and nothing else draws from the shuffling RNG.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import DataError, InputError
from soft_share_cli.models.names import CLASSIFIERS
from soft_share_cli.training.fit import (
    EpochEnd,
    FitHooks,
    Tally,
    Trained,
    bank_kwargs,
    decay_groups,
    provenance,
    train_new,
)
from soft_share_cli.training.regularizers import AlignMode

if TYPE_CHECKING:
    from typing_extensions import Unpack

TRAINABLE_ARCHITECTURES = CLASSIFIERS


class Schedule(str, enum.Enum):
    """How the learning rate changes from epoch to epoch."""

    STEP = "step"
    COSINE = "cosine"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (together with the data)."""

    arch: str = "swrn"  # "swrn" (shared) or "wrn" (its unshared counterpart)
    depth: int = 16  # 6n+4; 16 gives banks of 2 layers, the smallest that can fold
    width: int = 1  # widening factor w; 1 keeps CPU runs short
    num_templates: int | None = 3  # K per bank for swrn; must be None for wrn (no banks)
    epochs: int = 30  # enough to converge on small data sets; the paper uses 200 on CIFAR
    batch_size: int = 64  # small data sets need many steps per epoch
    lr: float = 0.1  # the paper's initial learning rate
    momentum: float = 0.9  # the paper's SGD momentum
    nesterov: bool = True  # as in the paper; needs momentum > 0
    weight_decay: float = 5e-4  # on every parameter except coefficients, as in the paper
    schedule: Schedule = Schedule.COSINE  # cosine needs no tuning of milestones for short runs
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)  # STEP: fractions of epochs where lr drops
    gamma: float = 0.2  # STEP: the factor applied at each milestone (the WRN recipe)
    align: float = 0.0  # weight of the alignment regulariser; > 0 grows foldable networks
    # recurrent: same-role layers of consecutive blocks align (loops); nearest: any neighbour
    align_mode: AlignMode = AlignMode.RECURRENT
    augment: bool = False  # random crop (+ flip for RGB); off for digits, whose 8x8 is tiny
    seed: int = 0  # seeds init and shuffling, so a run can be reproduced exactly
    device: str = "cpu"  # any torch device string; data is moved there once

    def to_dict(self) -> dict[str, Any]:
        """Plain-python form (enums as their values, tuples as lists) for checkpoints and JSON."""
        out = asdict(self)
        out["schedule"] = self.schedule.value
        out["align_mode"] = AlignMode(self.align_mode).value
        out["milestones"] = list(self.milestones)
        return out


@dataclass(frozen=True)
class EpochRecord:
    """What happened in one epoch (``epoch`` counts from 1)."""

    epoch: int
    lr: float
    train_loss: float  # mean cross-entropy over the epoch's samples, without the regulariser
    train_top1: float  # percent, measured on the fly in train mode (augmented batches)
    test_top1: float | None  # percent after the epoch; None without test data
    align_penalty: float  # the regulariser's value at the end of the epoch (0 without banks)
    seconds: float


@dataclass(frozen=True)
class TrainResult(Trained):
    """A trained model with what is needed to rebuild and describe it."""

    model: nn.Module = field(compare=False, repr=False)  # on config.device, in eval mode
    arch: str
    arch_kwargs: dict[str, Any]  # build_model(arch, **arch_kwargs) rebuilds the architecture
    history: tuple[EpochRecord, ...]
    test_top1: float | None  # after the last epoch
    seconds: float


def arch_kwargs(config: TrainConfig, data: Dataset) -> dict[str, Any]:
    """Constructor arguments for ``config.arch``, with classes and channels taken from ``data``."""
    if config.arch not in TRAINABLE_ARCHITECTURES:
        known = ", ".join(TRAINABLE_ARCHITECTURES)
        raise InputError(f"cannot train architecture {config.arch!r} (trainable: {known})")
    return {
        "depth": config.depth,
        "width": config.width,
        **bank_kwargs(config.arch, config.num_templates),
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
    }


def _check(config: TrainConfig, train_data: Dataset, test_data: Dataset | None) -> None:
    """Refuse a run that cannot work, before any time is spent on it."""
    problems = [
        (config.epochs < 1, f"epochs must be >= 1, got {config.epochs}"),
        (config.batch_size < 1, f"batch size must be >= 1, got {config.batch_size}"),
        (not config.lr > 0, f"learning rate must be > 0, got {config.lr}"),
        (config.momentum < 0, f"momentum must be >= 0, got {config.momentum}"),
        (config.nesterov and config.momentum <= 0, "Nesterov momentum needs momentum > 0"),
        (config.weight_decay < 0, f"weight decay must be >= 0, got {config.weight_decay}"),
        (config.align < 0, f"alignment weight must be >= 0, got {config.align}"),
        (not config.gamma > 0, f"gamma must be > 0, got {config.gamma}"),
        (
            any(not 0 < m <= 1 for m in config.milestones),
            f"milestones are fractions of the epochs in (0, 1], got {config.milestones}",
        ),
    ]
    for bad, message in problems:
        if bad:
            raise InputError(message)
    for data in (train_data, test_data):
        if data is None:
            continue
        if len(data) == 0:
            raise DataError(f"the {data.split} split of {data.name!r} has no samples")
        if data.x.ndim != 4 or data.x.shape[0] != len(data):
            raise DataError(f"{data.name!r}: expected x of shape (N, C, H, W) with N = len(y)")
        if int(data.y.min()) < 0 or int(data.y.max()) >= train_data.num_classes:
            raise DataError(
                f"{data.name!r} ({data.split}): labels must lie in [0, {train_data.num_classes})"
            )
    if test_data is not None and test_data.x.shape[1:] != train_data.x.shape[1:]:
        raise DataError(
            f"test images {tuple(test_data.x.shape[1:])} differ from training images "
            f"{tuple(train_data.x.shape[1:])}"
        )


def epoch_lr(config: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (counting from 1).

    Cosine decays from ``lr`` towards 0 at the end of the last epoch. Step multiplies by
    ``gamma`` at each milestone epoch ``round(fraction * epochs)`` (at least 1, so the first
    epoch always runs at the full rate).
    """
    done = epoch - 1  # epochs completed before this one
    if config.schedule is Schedule.COSINE:
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * done / config.epochs))
    drops = sum(done >= max(1, round(m * config.epochs)) for m in config.milestones)
    return config.lr * config.gamma**drops


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum, weight decay on all but the coefficients (the paper's
    exemption, :func:`~soft_share_cli.training.fit.decay_groups`)."""
    return torch.optim.SGD(
        decay_groups(model, config.weight_decay),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding by ``H // 8`` (4 at 32 px, 1 at 8 px); flip RGB only.

    Flipping is skipped for non-RGB data because mirrored digits or glyphs change meaning.
    """
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    # Random numbers come from the CPU generator so runs match across devices' RNGs.
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    if c == 3:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A seeded shuffle of ``range(n)`` cut into batches.

    A final batch of one sample joins the previous one: BatchNorm in train mode cannot normalise
    a single sample once the spatial size has pooled down to 1x1.
    """
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat(batches[-2:])
        batches.pop()
    return batches


@dataclass
class _ClassifierRecipe:
    """The classification side of :func:`~soft_share_cli.training.fit.fit` (see its ``Recipe``)."""

    config: TrainConfig
    test_data: Dataset | None
    flush_denormal: bool = False  # as before the loop was shared: same numbers as ever

    def steps_per_epoch(self, n: int) -> int:
        batches = math.ceil(n / self.config.batch_size)
        # _batches merges a final batch of one sample into the one before
        return batches - 1 if batches > 1 and n % self.config.batch_size == 1 else batches

    def batches(self, n: int, generator: torch.Generator) -> list[Tensor]:
        return _batches(n, self.config.batch_size, generator)

    def lr(self, epoch: int, step: int, per_epoch: int) -> float:
        return epoch_lr(self.config, epoch)

    def score(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if self.config.augment:
            x = _augment(x, generator)
        logits = model(x)
        return logits, F.cross_entropy(logits, y)

    def before_step(self, model: nn.Module) -> None:
        pass

    def tally(self, device: torch.device) -> _Top1Tally:
        return _Top1Tally(device)

    def test(self, model: nn.Module) -> float:
        from soft_share_cli.evaluation.classification import evaluate

        assert self.test_data is not None
        batch_size = max(self.config.batch_size, 256)
        result = evaluate(model, self.test_data, batch_size=batch_size, device=self.config.device)
        return result.top1

    def record(self, end: EpochEnd) -> EpochRecord:
        return EpochRecord(
            epoch=end.epoch,
            lr=end.lr,
            train_loss=end.tally.mean_loss(),
            train_top1=100.0 * float(end.tally.correct) / end.tally.samples,
            test_top1=end.test,
            align_penalty=end.penalty,
            seconds=end.seconds,
        )


class _Top1Tally(Tally):
    """Loss and top-1 hits of an epoch, summed on the device."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)

    def add(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        self.add_loss(loss, len(y))
        self.correct += (logits.argmax(dim=1) == y).sum()


def train(
    config: TrainConfig,
    train_data: Dataset,
    test_data: Dataset | None = None,
    **hooks: Unpack[FitHooks],
) -> TrainResult:
    """Train ``config.arch`` from scratch on ``train_data``.

    Args:
        config: the run's hyper-parameters and seed.
        train_data: the training split (in memory; moved to ``config.device`` once).
        test_data: evaluated after every epoch when given.
        progress: called after every batch as ``progress("epoch 3/30", done, total)``.
        on_epoch: called with each epoch's :class:`EpochRecord` as soon as it is known.
        on_state: called after every epoch (before ``on_epoch``) with the :class:`TrainState`
            to save for a resume.
        resume: the state of an interrupted run of the same config and data: training goes on
            after its last finished epoch and ends with the weights an uninterrupted run gives.

    Raises:
        InputError: a config or data set that cannot be trained (unknown architecture,
            templates given for wrn, epochs < 1, empty data, or a loss that diverged).

    A ``KeyboardInterrupt`` propagates unchanged, so callers never save a half-trained model
    by accident.
    """
    _check(config, train_data, test_data)
    kwargs = arch_kwargs(config, train_data)
    model, history, seconds = train_new(
        _ClassifierRecipe(config, test_data),
        config,
        kwargs,
        make_optimizer,
        train_data.x,
        train_data.y,
        **hooks,
    )
    return TrainResult(
        model=model,
        arch=config.arch,
        arch_kwargs=kwargs,
        history=history,
        test_top1=history[-1].test_top1,
        seconds=seconds,
    )


def checkpoint_metadata(
    result: TrainResult, config: TrainConfig, train_data: Dataset, command: str | None
) -> dict[str, Any]:
    """Plain-python metadata to store next to the weights of a trained model.

    Holds what a later reader needs to trust and reproduce the checkpoint: the data spec and its
    preprocessing (evaluation must apply the same), the test accuracy at save time, the history,
    the config, the command line, versions, and the UTC creation time.
    """
    return {
        "data": train_data.name,
        "preprocessing": dict(train_data.preprocessing),
        "num_classes": train_data.num_classes,
        "test_top1": result.test_top1,
        "history": [asdict(record) for record in result.history],
        **provenance(config, command, result.seconds),
    }
