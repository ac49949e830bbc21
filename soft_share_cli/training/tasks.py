"""Train fully convolutional networks on per-pixel algorithmic tasks (mazes, prefix sums).

The classification trainer (:mod:`soft_share_cli.training.classification`) follows the paper's
CIFAR recipe, SGD
at lr 0.1 with BatchNorm everywhere. These networks have no BatchNorm (so a folded one can run
longer, see :mod:`soft_share_cli.models.recurrent`), and deep BatchNorm-free residual stacks
train reliably the way Schwarzschild et al. train theirs: Adam (decoupled weight decay, none on
the coefficients, as in the paper), a one-epoch linear warm-up then a per-step cosine decay, and
gradient-norm clipping. The alignment regulariser of :mod:`soft_share_cli.training.regularizers` is
reused as it is.

Every epoch records the on-the-fly training accuracy — per pixel and exact-solve (the share of
training instances with every pixel right) — and the step count, so "trains faster" is measured
as steps to a training accuracy (:func:`steps_to`), not asserted. ``progressive`` mixes in the
progressive loss of Bansal et al. (:mod:`soft_share_cli.training.progressive`): for rfcn's loop,
and block by block for fcn and sfcn.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import DataError, InputError
from soft_share_cli.models.names import RFCN_BLOCKS, TASK_NETWORKS
from soft_share_cli.training import fit, progressive
from soft_share_cli.training.regularizers import AlignMode

if TYPE_CHECKING:
    from typing_extensions import Unpack

TASK_ARCHITECTURES = TASK_NETWORKS


@dataclass(frozen=True)
class TaskTrainConfig:
    """Everything that determines a task training run (together with the data)."""

    arch: str = "sfcn"  # "sfcn" (soft-shared), "fcn" (plain) or "rfcn" (one block, looped)
    # residual blocks in the body (rfcn: iterations of its one block): the network's reach
    blocks: int = 12
    width: int = 32  # channels of the body
    num_templates: int | None = 4  # K of the one bank for sfcn; None for fcn and rfcn
    recall: bool = True  # every block also sees the stem's encoding of the input
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.002  # Adam's peak learning rate, reached after the first epoch
    weight_decay: float = 5e-4  # decoupled (AdamW), on everything but the coefficients
    clip: float = 1.0  # max gradient norm; BatchNorm-free deep stacks need the guard
    # Also read out (and score) the state after each of the last `supervise` blocks, not only
    # the last one: later blocks then learn to keep a solved state, which a folded loop
    # running extra iterations needs. 1 = only the final output (the usual loss).
    supervise: int = 1
    align: float = 0.0  # weight of the alignment regulariser; > 0 grows foldable networks
    align_mode: AlignMode = AlignMode.RECURRENT
    # Weight alpha of the progressive loss (Bansal et al. 2022, training.progressive): each
    # step also scores k iterations run from the detached state after n random ones, so the
    # loop learns to improve any state and can run longer at test time. 0: off.
    progressive: float = 0.0
    # rfcn's looped block: "projection" (Bansal et al.'s, the state recomputed from [h, recall]
    # each step) or "residual" (the FCN's block, the state accumulated); models.recurrent_net
    block: str = "projection"
    seed: int = 0  # seeds init and shuffling, so a run can be reproduced exactly
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Plain-python form (enums as values) for checkpoints and JSON."""
        return {**asdict(self), "align_mode": AlignMode(self.align_mode).value}


@dataclass(frozen=True)
class TaskEpochRecord:
    """One epoch (``epoch`` counts from 1; ``steps`` is the optimizer steps so far)."""

    epoch: int
    steps: int
    lr: float  # at the epoch's last step
    train_loss: float  # mean per-pixel cross-entropy (mixed with the progressive loss if any)
    train_pixel_accuracy: float  # percent, on the fly in train mode
    train_exact: float  # percent of training instances solved exactly, on the fly
    test_pixel_accuracy: float | None
    test_exact: float | None
    align_penalty: float
    seconds: float


@dataclass(frozen=True)
class TaskTrainResult(fit.Trained):
    """A trained task network with what is needed to rebuild and describe it."""

    model: nn.Module = field(compare=False, repr=False)  # eval mode
    arch: str
    arch_kwargs: dict[str, Any]
    history: tuple[TaskEpochRecord, ...]
    seconds: float

    @property
    def test_exact(self) -> float | None:
        return self.history[-1].test_exact if self.history else None


def task_arch_kwargs(config: TaskTrainConfig, data: Dataset) -> dict[str, Any]:
    """Constructor arguments for ``config.arch``, with classes and channels from ``data``."""
    if config.arch not in TASK_ARCHITECTURES:
        raise InputError(
            f"task data needs a fully convolutional network: --arch sfcn (shared), fcn "
            f"(plain) or rfcn (recurrent), not {config.arch!r}"
        )
    depth = "iterations" if config.arch == "rfcn" else "blocks"  # rfcn: one block, looped
    return {
        depth: config.blocks,
        "width": config.width,
        **fit.bank_kwargs(config.arch, config.num_templates),
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "recall": config.recall,
        **({"dims": 1} if data.x.dim() == 3 else {}),  # sequences: 1-d convolutions
        **({"block": config.block} if config.arch == "rfcn" else {}),
    }


def _check(config: TaskTrainConfig, train_data: Dataset) -> None:
    problems = [
        (config.blocks < 1, f"blocks must be >= 1, got {config.blocks}"),
        (config.width < 1, f"width must be >= 1, got {config.width}"),
        (config.epochs < 1, f"epochs must be >= 1, got {config.epochs}"),
        (config.batch_size < 1, f"batch size must be >= 1, got {config.batch_size}"),
        (not config.lr > 0, f"learning rate must be > 0, got {config.lr}"),
        (config.weight_decay < 0, f"weight decay must be >= 0, got {config.weight_decay}"),
        (not config.clip > 0, f"gradient clip must be > 0, got {config.clip}"),
        (config.align < 0, f"alignment weight must be >= 0, got {config.align}"),
        (
            not 0.0 <= config.progressive <= 1.0,
            f"the progressive loss weight must lie in [0, 1], got {config.progressive}",
        ),
        (
            not 1 <= config.supervise <= config.blocks,
            f"supervise must lie in [1, blocks = {config.blocks}], got {config.supervise}",
        ),
    ]
    if config.block not in RFCN_BLOCKS:
        problems.append((True, f"block must be residual or projection, got {config.block!r}"))
    for bad, message in problems:
        if bad:
            raise InputError(message)
    if train_data.y.dim() not in (2, 3) or train_data.x.dim() != train_data.y.dim() + 1:
        raise DataError(f"{train_data.name} is not a per-pixel task (maze:..., prefix-sums:...)")


def step_lr(config: TaskTrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (from 0): linear warm-up over the first epoch,
    then cosine decay to 0 at the end of the last."""
    total = config.epochs * steps_per_epoch
    warmup = min(steps_per_epoch, total)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_task_optimizer(model: nn.Module, config: TaskTrainConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on every parameter but the coefficients (the paper's
    exemption, :func:`~soft_share_cli.training.fit.decay_groups`)."""
    return torch.optim.AdamW(fit.decay_groups(model, config.weight_decay), lr=config.lr)


@dataclass
class _TaskRecipe:
    """The per-pixel side of :func:`~soft_share_cli.training.fit.fit` (see its ``Recipe``)."""

    config: TaskTrainConfig
    test_data: Dataset | None
    # Once the loss is ~0, gradients underflow into subnormal floats, which slow a CPU tenfold.
    flush_denormal: bool = True

    def steps_per_epoch(self, n: int) -> int:
        return math.ceil(n / self.config.batch_size)

    def batches(self, n: int, generator: torch.Generator) -> list[Tensor]:
        return list(torch.randperm(n, generator=generator).split(self.config.batch_size))

    def lr(self, epoch: int, step: int, per_epoch: int) -> float:
        return step_lr(self.config, step, per_epoch)

    def score(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        def full(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            return _scored(model, x, y, self.config.supervise)

        return progressive.mixed_loss(
            model,
            x,
            y,
            alpha=self.config.progressive,
            total=self.config.blocks,
            generator=generator,
            full=full,
        )

    def before_step(self, model: nn.Module) -> None:
        nn.utils.clip_grad_norm_(model.parameters(), self.config.clip)

    def tally(self, device: torch.device) -> _PixelTally:
        return _PixelTally(device)

    def test(self, model: nn.Module) -> Any:
        from soft_share_cli.evaluation.tasks import evaluate_task

        assert self.test_data is not None
        return evaluate_task(model, self.test_data, device=self.config.device)

    def record(self, end: fit.EpochEnd) -> TaskEpochRecord:
        tally, test = end.tally, end.test
        return TaskEpochRecord(
            epoch=end.epoch,
            steps=end.steps,
            lr=end.lr,
            train_loss=tally.mean_loss(),
            train_pixel_accuracy=100.0 * float(tally.pixel_hits) / tally.pixels,
            train_exact=100.0 * float(tally.solved) / tally.samples,
            test_pixel_accuracy=None if test is None else test.pixel_accuracy,
            test_exact=None if test is None else test.exact,
            align_penalty=end.penalty,
            seconds=end.seconds,
        )


class _PixelTally(fit.Tally):
    """Loss, right pixels and instances solved exactly in an epoch, summed on the device."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device, torch.float64)
        self.pixel_hits = torch.zeros((), device=device, dtype=torch.long)
        self.solved = torch.zeros((), device=device, dtype=torch.long)
        self.pixels = 0

    def add(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        right = logits.argmax(dim=1) == y
        self.add_loss(loss, len(y))
        self.pixel_hits += right.sum()
        self.solved += right.flatten(1).all(dim=1).sum()
        self.pixels += y.numel()


def train_task(
    config: TaskTrainConfig,
    train_data: Dataset,
    test_data: Dataset | None = None,
    **hooks: Unpack[fit.FitHooks],
) -> TaskTrainResult:
    """Train ``config.arch`` from scratch on a per-pixel task; deterministic on the CPU.

    ``progress``, ``on_epoch``, ``on_state`` and ``resume`` work as in
    :func:`soft_share_cli.training.classification.train`: an interrupted run continued from its last
    :class:`~soft_share_cli.training.fit.TrainState` ends with the weights of an uninterrupted one.

    Raises:
        InputError: a config or data set that cannot be trained, or a diverged loss.
    """
    _check(config, train_data)
    kwargs = task_arch_kwargs(config, train_data)
    model, history, seconds = fit.train_new(
        _TaskRecipe(config, test_data),
        config,
        kwargs,
        make_task_optimizer,
        train_data.x,
        train_data.y,
        **hooks,
    )
    return TaskTrainResult(model, config.arch, kwargs, history, seconds)


def _scored(model: nn.Module, x: Tensor, y: Tensor, supervise: int) -> tuple[Tensor, Tensor]:
    """The final logits and the loss: mean cross-entropy over the last ``supervise`` read-outs."""
    if supervise == 1:
        logits = model(x)
        return logits, F.cross_entropy(logits, y)
    states = list(model.states(x))[-supervise:]  # type: ignore[operator]
    outputs = [model.head(h) for h in states]  # type: ignore[operator]
    loss = torch.stack([F.cross_entropy(out, y) for out in outputs]).mean()
    return outputs[-1], loss


def steps_to(history: list[dict[str, Any]], key: str, threshold: float) -> int | None:
    """Optimizer steps at the end of the first epoch whose ``key`` reached ``threshold``.

    ``history`` is the checkpoint metadata's list of epoch records; None when never reached.
    The resolution is one epoch, and the on-the-fly accuracy averages over the epoch, so the
    count is an upper bound of the step where the accuracy first held.
    """
    for record in history:
        value = record.get(key)
        if value is not None and value >= threshold:
            return int(record["steps"])
    return None


def task_checkpoint_metadata(
    result: TaskTrainResult,
    config: TaskTrainConfig,
    train_data: Dataset,
    command: str | None,
) -> dict[str, Any]:
    """Plain-python metadata stored next to the weights of a trained task network."""
    history = [asdict(record) for record in result.history]
    last = result.history[-1]
    return {
        "data": train_data.name,
        "task": True,
        "preprocessing": dict(train_data.preprocessing),
        "num_classes": train_data.num_classes,
        "test_exact": last.test_exact,
        "test_pixel_accuracy": last.test_pixel_accuracy,
        "history": history,
        "steps_to": {
            "train_exact_95": steps_to(history, "train_exact", 95.0),
            "train_pixel_accuracy_95": steps_to(history, "train_pixel_accuracy", 95.0),
        },
        **fit.provenance(config, command, result.seconds),
    }
