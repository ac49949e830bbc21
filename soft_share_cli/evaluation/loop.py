"""The one evaluation loop; what differs per kind of task is a :class:`Scorer`.

The loop is kept as close as possible to a bare ``for xb in x.split(bs): model(xb)`` loop:
batches are slices of the already preprocessed tensors (no DataLoader), and every statistic is
accumulated on the device, so the host waits for the device once, at the end. Classifiers
(:mod:`soft_share_cli.evaluation.classification`: top-1, top-5) and per-pixel tasks
(:mod:`soft_share_cli.evaluation.tasks`: exact solves, pixel accuracy) each bring a scorer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import torch
from torch import Tensor, nn

from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import DataError, InputError

if TYPE_CHECKING:
    from typing_extensions import Unpack


class PassOptions(TypedDict, total=False):
    """How a pass runs (every evaluation takes these): ``batch_size`` (256), ``device``
    ("cpu"), ``progress(done, total)`` after each batch (None), ``keep_predictions`` (False:
    keep each sample's argmax, for agreement checks between networks)."""

    batch_size: int
    device: str
    progress: Callable[[int, int], None] | None
    keep_predictions: bool


class Scorer(Protocol):
    """Statistics of one pass, summed on the device batch by batch."""

    def check(self, logits: Tensor, labels: Tensor) -> None:
        """Refuse the first batch's output when it cannot be scored (shapes only: no sync)."""

    def add(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Score a batch; return its predictions."""

    def finish(self) -> dict[str, Any]:
        """The pass's figures (the one host-device sync)."""


@dataclass(frozen=True)
class Pass:
    """What the loop measured besides the scores."""

    samples: int
    seconds: float  # wall time of the loop, including the final device sync
    predictions: Tensor | None  # per-sample argmax (CPU, int64), when asked for

    @property
    def throughput(self) -> float:
        """Samples per second (infinite when the clock saw no time pass)."""
        return self.samples / self.seconds if self.seconds > 0 else float("inf")


class Measured:
    """What an evaluation result of any kind shares: its JSON form, scores then ``timing``.

    A result (a dataclass with ``seconds`` and ``throughput``) says what its scores are in
    :meth:`scores`.
    """

    seconds: float  # wall time of the loop, including the final device sync
    throughput: float  # samples / s

    def scores(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field but ``predictions``; wall times under ``timing``.

        Everything outside ``timing`` is the same on every run over the same model and data.
        """
        # throughput is infinite when the clock saw no time pass; JSON cannot say that
        finite = self.throughput if math.isfinite(self.throughput) else None
        return {**self.scores(), "timing": {"seconds": self.seconds, "throughput": finite}}


def resolve_device(device: str) -> torch.device:
    """Turn ``device`` into a :class:`torch.device`, refusing accelerators that are absent."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"unknown device {device!r} ({exc}); use cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA requested but not available; use --device cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("MPS requested but not available; use --device cpu")
    return resolved


def run_pass(
    model: nn.Module, data: Dataset, scorer: Scorer, **options: Unpack[PassOptions]
) -> tuple[Pass, dict[str, Any]]:
    """Run ``model`` over ``data`` in eval mode, scoring every batch with ``scorer``.

    The model is moved to ``device`` in place (as :meth:`nn.Module.to` does) and each module's
    train/eval mode is restored afterwards. ``progress(done, total)`` is called after each batch.
    Returns the pass and the scorer's figures.
    """
    unknown = sorted(set(options) - set(PassOptions.__annotations__))
    if unknown:
        raise TypeError(f"unexpected evaluation option(s): {', '.join(unknown)}")
    batch_size = options.get("batch_size", 256)
    device = options.get("device", "cpu")
    progress = options.get("progress")
    keep_predictions = options.get("keep_predictions", False)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    total = len(data)
    if total == 0:
        raise DataError(f"{data.name}: no samples to evaluate")
    target = resolve_device(device)
    # Per module, not model.train(was): a caller may have frozen some parts in eval mode.
    modes = {module: module.training for module in model.modules()}
    model.to(target)
    model.eval()
    # Labels are small: one copy up front; inputs go batch by batch to bound device memory.
    labels = data.y.to(target, non_blocking=True)
    predictions: list[Tensor] = []
    done = 0
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for xb, yb in zip(data.x.split(batch_size), labels.split(batch_size), strict=True):
                logits = model(xb.to(target, non_blocking=True))
                if done == 0:  # shapes are known without a device sync
                    scorer.check(logits, yb)
                pred = scorer.add(logits, yb)
                if keep_predictions:
                    predictions.append(pred)
                done += len(yb)
                if progress is not None:
                    progress(done, total)
        figures = scorer.finish()
        seconds = time.perf_counter() - start
    finally:
        for module, mode in modes.items():
            module.training = mode
    # Outside inference mode, cat gives an ordinary tensor the caller may modify.
    kept = torch.cat(predictions).cpu() if keep_predictions else None
    return Pass(total, seconds, kept), figures
