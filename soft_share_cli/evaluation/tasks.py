"""Evaluate per-pixel task networks: exact-solve rate, per-pixel accuracy, loss, speed.

A task instance counts as *solved* only when every pixel is right (the metric of Schwarzschild et
al.); per-pixel accuracy is reported next to it. Scored batch by batch in the loop of
:mod:`soft_share_cli.evaluation.loop`, like classifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import DataError, InputError
from soft_share_cli.evaluation.loop import Measured, PassOptions, run_pass

if TYPE_CHECKING:
    from typing_extensions import Unpack


def is_task_data(data: Dataset) -> bool:
    """Whether ``data`` has a label per pixel, ``y`` of shape ``(N, H, W)``."""
    return data.y.dim() == 3


@dataclass(frozen=True)
class TaskEvalResult(Measured):
    """How well a network solves a task's instances."""

    samples: int
    exact: float  # percent of instances with every pixel right
    pixel_accuracy: float  # percent of pixels right, over all instances
    loss: float  # mean per-pixel cross-entropy
    seconds: float
    throughput: float  # instances / s
    iterations: int | None = None  # block applications of a looped network, None otherwise
    # per-pixel argmax (CPU, int64), kept on request for agreement checks between networks
    predictions: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def headline(self) -> float:
        """The accuracy a gate compares (``--max-drop``): the exact-solve rate, in percent."""
        return self.exact

    def summary(self) -> dict[str, Any]:
        """The figures a fold's data check reports for this network: its JSON keeps the
        classifier's keys, ``top1`` holding the exact-solve rate (there is no top-5)."""
        return {"top1": self.exact, "top5": None, "loss": self.loss}

    def scores(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "exact": self.exact,
            "pixel_accuracy": self.pixel_accuracy,
            "loss": self.loss,
            "iterations": self.iterations,
        }


def loop_iterations(model: nn.Module) -> int | None:
    """The iterations a looped network runs (its ``iterations`` attribute), None for others."""
    from soft_share_cli.folding.looped import LoopedFCN

    return model.iterations if isinstance(model, LoopedFCN) else None


def evaluate_task(
    model: nn.Module, data: Dataset, **options: Unpack[PassOptions]
) -> TaskEvalResult:
    """Evaluate ``model`` on a per-pixel task in eval mode (mode restored afterwards).

    Raises:
        DataError: ``data`` is not per-pixel, or the network's output does not fit it.
    """
    if not is_task_data(data):
        raise DataError(f"{data.name} has one label per image; task metrics need one per pixel")
    passed, figures = run_pass(model, data, _PixelScorer(data), **options)
    pixels = data.y.numel()
    return TaskEvalResult(
        samples=passed.samples,
        exact=100.0 * figures["solved"] / passed.samples,
        pixel_accuracy=100.0 * figures["pixel_hits"] / pixels,
        loss=figures["loss"] / pixels,
        seconds=passed.seconds,
        throughput=passed.throughput,
        iterations=loop_iterations(model),
        predictions=passed.predictions,
    )


class _PixelScorer:
    """Loss, right pixels and instances solved exactly, summed on the device."""

    def __init__(self, data: Dataset) -> None:
        self.data = data
        self.loss_sums: list[Tensor] = []
        self.pixel_hits: list[Tensor] = []
        self.solved: list[Tensor] = []

    def check(self, logits: Tensor, labels: Tensor) -> None:
        _check_output(logits, labels, self.data)

    def add(self, logits: Tensor, labels: Tensor) -> Tensor:
        self.loss_sums.append(F.cross_entropy(logits.float(), labels, reduction="sum"))
        pred = logits.argmax(dim=1)
        right = pred == labels
        self.pixel_hits.append(right.sum())
        self.solved.append(right.flatten(1).all(dim=1).sum())
        return pred

    def finish(self) -> dict[str, Any]:
        return {
            "loss": float(torch.stack(self.loss_sums).cpu().double().sum()),
            "pixel_hits": int(torch.stack(self.pixel_hits).sum()),
            "solved": int(torch.stack(self.solved).sum()),
        }


def _check_output(logits: Tensor, labels: Tensor, data: Dataset) -> None:
    """Refuse outputs that are not one score per class and pixel."""
    if logits.dim() != 4 or logits.shape[2:] != labels.shape[1:]:
        raise DataError(
            f"the network's output {tuple(logits.shape)} is not per-pixel for {data.name} "
            f"(labels {tuple(labels.shape)}); use a fully convolutional network (fcn/sfcn)"
        )
    if logits.shape[1] < data.num_classes:
        raise DataError(f"the network scores {logits.shape[1]} classes, {data.name} has 2")


@dataclass(frozen=True)
class SweepPoint:
    """One row of an iteration sweep: a looped network run ``iterations`` times."""

    iterations: int
    exact: float
    pixel_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "exact": self.exact,
            "pixel_accuracy": self.pixel_accuracy,
        }


def iteration_sweep(
    model: nn.Module, data: Dataset, iterations: Sequence[int], *, batch_size: int = 256
) -> tuple[SweepPoint, ...]:
    """Exact-solve rate and pixel accuracy of a looped network at each iteration count.

    One pass per batch up to the largest count (:meth:`LoopedFCN.trajectory`), so a sweep over
    1..N costs one run of N iterations, not N runs.
    """
    from soft_share_cli.folding.looped import LoopedFCN

    if not isinstance(model, LoopedFCN):
        raise InputError("an iteration sweep needs a looped network (ssc fold an sfcn)")
    wanted = sorted({int(n) for n in iterations})
    if not wanted or wanted[0] < 1:
        raise InputError(f"iteration counts must be >= 1, got {list(iterations)}")
    solved = dict.fromkeys(wanted, 0)
    pixels = dict.fromkeys(wanted, 0)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            for xb, yb in zip(data.x.split(batch_size), data.y.split(batch_size), strict=True):
                for n, logits in enumerate(model.trajectory(xb, wanted[-1]), start=1):
                    if n in solved:
                        right = logits.argmax(dim=1) == yb
                        pixels[n] += int(right.sum())
                        solved[n] += int(right.flatten(1).all(dim=1).sum())
    finally:
        for module, mode in modes.items():
            module.training = mode
    total, count = len(data), data.y.numel()
    return tuple(
        SweepPoint(n, 100.0 * solved[n] / total, 100.0 * pixels[n] / count) for n in wanted
    )
