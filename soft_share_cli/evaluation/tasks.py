"""Evaluate per-pixel task networks: exact-solve rate, per-pixel accuracy, loss, speed.

A task instance counts as *solved* only when every pixel is right (the metric of Schwarzschild et
al.); per-pixel accuracy is reported next to it. Scored batch by batch in the loop of
:mod:`soft_share_cli.evaluation.loop`, like classifiers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import DataError, InputError
from soft_share_cli.evaluation.loop import Measured, PassOptions, resolve_device, run_pass
from soft_share_cli.limits import MAX_ITERATIONS

if TYPE_CHECKING:
    from typing_extensions import Unpack


def is_task_data(data: Dataset) -> bool:
    """Whether ``data`` has a label per pixel, ``y`` of shape ``(N, H, W)`` (images) or per
    position, ``(N, L)`` (sequences)."""
    return data.y.dim() in (2, 3)


def check_data_dims(model: nn.Module, data: Dataset, spec: str, name: str) -> None:
    """Refuse (DataError) sequences for a network of 2-d convolutions and images for one of
    1-d convolutions: ``model.dims`` (ssc's task networks, folded or not), else the kind of the
    network's first convolution, against ``data``. A network without either is not checked."""
    dims = getattr(model, "dims", None)
    if not isinstance(dims, int) or dims not in (1, 2):
        first = next((m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)), None)
        if first is None:
            return
        dims = 1 if isinstance(first, nn.Conv1d) else 2
    held = data.x.dim() - 2
    if held != dims:
        kinds = {1: "sequences (1-d)", 2: "images (2-d)"}
        raise DataError(
            f"{spec} holds {kinds.get(held, f'{held}-d inputs')} but {name} is a network of "
            f"{dims}-d convolutions for {kinds[dims]}"
        )


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


def runs_longer(model: nn.Module) -> bool:
    """A network whose loop can run any number of iterations: a folded looped FCN, or the
    recurrent network (``--arch rfcn``)."""
    from soft_share_cli.folding.looped import LoopedFCN
    from soft_share_cli.models.recurrent_net import RecurrentFCN

    return isinstance(model, LoopedFCN | RecurrentFCN)


def loop_iterations(model: nn.Module) -> int | None:
    """The iterations a looped network runs (its ``iterations`` attribute), None for others."""
    return model.iterations if runs_longer(model) else None  # type: ignore[return-value]


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
        check_task_output(logits, labels, self.data)

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


def check_task_output(logits: Tensor, labels: Tensor, data: Dataset) -> None:
    """Refuse outputs that are not one score per class and pixel."""
    if logits.dim() != labels.dim() + 1 or logits.shape[2:] != labels.shape[1:]:
        raise DataError(
            f"the network's output {tuple(logits.shape)} is not per-pixel for {data.name} "
            f"(labels {tuple(labels.shape)}); use a fully convolutional network (fcn/sfcn)"
        )
    if logits.shape[1] < data.num_classes:
        raise DataError(
            f"the network scores {logits.shape[1]} classes, {data.name} has {data.num_classes}"
        )


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
    model: nn.Module,
    data: Dataset,
    iterations: Iterable[int],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[SweepPoint, ...]:
    """Exact-solve rate and pixel accuracy of a looped network at each iteration count.

    One pass per batch up to the largest count (:meth:`LoopedFCN.trajectory`), so a sweep over
    1..N costs one run of N iterations, not N runs; each count's figures equal those of a run
    of that count alone. ``iterations`` in any order (duplicates count once); the points come
    in ascending order. The model moves to ``device`` in place, its modes are restored, and
    ``progress(done, total)`` is called after each batch.

    Raises:
        InputError: not a looped network; a count < 1 or above ``limits.MAX_ITERATIONS``.
        DataError: ``data`` is not per-pixel, or the network's output does not fit it.
    """
    if not runs_longer(model):
        raise InputError(
            "an iteration sweep needs a looped network (ssc fold an sfcn, or train --arch rfcn)"
        )
    wanted = sorted({int(n) for n in iterations})
    if not wanted:
        raise InputError("an iteration sweep needs at least one iteration count")
    if wanted[0] < 1 or wanted[-1] > MAX_ITERATIONS:
        bad = wanted[0] if wanted[0] < 1 else wanted[-1]
        raise InputError(
            f"iteration counts must be between 1 and {MAX_ITERATIONS} "
            f"(limits.MAX_ITERATIONS), got {bad}"
        )
    if not is_task_data(data):
        raise DataError(f"{data.name} has one label per image; task metrics need one per pixel")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    target = resolve_device(device)
    modes = {module: module.training for module in model.modules()}
    model.to(target)
    model.eval()
    zero = torch.zeros((), dtype=torch.int64, device=target)
    solved = dict.fromkeys(wanted, zero)
    pixels = dict.fromkeys(wanted, zero)
    labels, done = data.y.to(target), 0
    try:
        with torch.inference_mode():
            for xb, yb in zip(data.x.split(batch_size), labels.split(batch_size), strict=True):
                steps = model.trajectory(xb.to(target), wanted[-1])
                for n, logits in enumerate(steps, start=1):
                    if done == 0 and n == 1:
                        check_task_output(logits, yb, data)
                    if n in solved:  # sums stay on the device: one sync, at the end
                        right = logits.argmax(dim=1) == yb
                        pixels[n] = pixels[n] + right.sum()
                        solved[n] = solved[n] + right.flatten(1).all(dim=1).sum()
                done += len(yb)
                if progress is not None:
                    progress(done, len(data))
    finally:
        for module, mode in modes.items():
            module.training = mode
    total, count = len(data), data.y.numel()
    return tuple(
        SweepPoint(n, 100.0 * int(solved[n]) / total, 100.0 * int(pixels[n]) / count)
        for n in wanted
    )


def best_point(points: Sequence[SweepPoint]) -> SweepPoint:
    """The count that solves most; ties go to the higher pixel accuracy, then to fewer
    iterations (the cheaper run)."""
    return max(points, key=lambda p: (p.exact, p.pixel_accuracy, -p.iterations))


@dataclass(frozen=True)
class SweepResult(Measured):
    """A looped network's exact-solve rate and pixel accuracy at several iteration counts."""

    samples: int
    points: tuple[SweepPoint, ...]  # ascending counts
    trained_iterations: int | None
    seconds: float  # the one pass, to the largest count
    throughput: float  # instances / s

    @property
    def best(self) -> SweepPoint:
        """See :func:`best_point`."""
        return best_point(self.points)

    def scores(self) -> dict[str, Any]:
        return {
            "mode": "sweep",
            "samples": self.samples,
            "trained_iterations": self.trained_iterations,
            "points": [p.to_dict() for p in self.points],
            "best": self.best.to_dict(),
        }


def sweep_iterations(
    model: nn.Module,
    data: Dataset,
    counts: Sequence[int],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """:func:`iteration_sweep` with its best count and timing.

    Raises:
        InputError: not a looped network, or a bad count. DataError: data that is not per-pixel.
    """
    start = time.perf_counter()
    points = iteration_sweep(
        model, data, counts, batch_size=batch_size, device=device, progress=progress
    )
    seconds = time.perf_counter() - start
    trained = getattr(model, "trained_iterations", None)
    rate = len(data) / seconds if seconds > 0 else float("inf")
    return SweepResult(len(data), points, trained, seconds, rate)
