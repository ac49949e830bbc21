"""Evaluate a classifier on an in-memory :class:`~soft_share_cli.data.loaders.Dataset`.

The loop is kept as close as possible to a bare ``for xb in x.split(bs): model(xb)`` loop:
batches are slices of the already preprocessed tensors (no DataLoader), and every statistic is
accumulated on the device, so the host waits for the device once, at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import DataError, InputError

TOP5_MIN_CLASSES = 10  # top-5 says little with fewer classes, so it is reported only from 10 on


@dataclass(frozen=True)
class EvalResult:
    """Accuracy, loss and speed of one evaluation pass."""

    samples: int
    top1: float  # percent
    top5: float | None  # percent, only when the data has >= 10 classes
    loss: float  # mean cross-entropy
    seconds: float  # wall time of the loop, including the final device sync
    throughput: float  # samples / s
    # argmax per sample (CPU, int64), kept on request for agreement checks between models
    predictions: Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field but ``predictions``; wall times under ``timing``.

        Everything outside ``timing`` is the same on every run over the same model and data.
        """
        return {
            "samples": self.samples,
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            # throughput is infinite when the clock saw no time pass; JSON cannot say that
            "timing": {
                "seconds": self.seconds,
                "throughput": self.throughput if math.isfinite(self.throughput) else None,
            },
        }


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


def evaluate(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    keep_predictions: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on ``data`` in eval mode and return accuracy, loss and throughput.

    The model is moved to ``device`` in place (as :meth:`nn.Module.to` does) and each module's
    train/eval mode is restored afterwards. ``progress(done, total)`` is called after each batch.
    Raises :class:`DataError` when the model predicts fewer classes than the data has.
    """
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
    loss_sums: list[Tensor] = []
    correct1: list[Tensor] = []
    correct5: list[Tensor] = []
    predictions: list[Tensor] = []
    want_top5 = data.num_classes >= TOP5_MIN_CLASSES
    done = 0
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for xb, yb in zip(data.x.split(batch_size), labels.split(batch_size), strict=True):
                logits = model(xb.to(target, non_blocking=True))
                if done == 0:  # shapes are known without a device sync
                    _check_output(logits, data)
                # float(): a half-precision model would otherwise sum its loss in half precision
                loss_sums.append(F.cross_entropy(logits.float(), yb, reduction="sum"))
                pred = logits.argmax(dim=1)
                correct1.append((pred == yb).sum())
                if want_top5:
                    top5 = logits.topk(5, dim=1).indices
                    correct5.append((top5 == yb.unsqueeze(1)).any(dim=1).sum())
                if keep_predictions:
                    predictions.append(pred)
                done += len(yb)
                if progress is not None:
                    progress(done, total)
        # The single host-device sync of the whole pass (float64 on the host: MPS lacks it).
        loss = float(torch.stack(loss_sums).cpu().double().sum())
        hits1 = int(torch.stack(correct1).sum())
        hits5 = int(torch.stack(correct5).sum()) if want_top5 else None
        seconds = time.perf_counter() - start
    finally:
        for module, mode in modes.items():
            module.training = mode
    if not math.isfinite(loss):  # accuracy of NaN logits means nothing; JSON cannot hold NaN
        raise InputError(
            f"the network's outputs on {data.name} are not finite (loss {loss}); its weights "
            "hold NaN or infinite values or overflow"
        )
    return EvalResult(
        samples=total,
        top1=100.0 * hits1 / total,
        top5=None if hits5 is None else 100.0 * hits5 / total,
        loss=loss / total,
        seconds=seconds,
        throughput=total / seconds if seconds > 0 else float("inf"),
        # Outside inference mode, cat gives an ordinary tensor the caller may modify.
        predictions=torch.cat(predictions).cpu() if keep_predictions else None,
    )


def _check_output(logits: Tensor, data: Dataset) -> None:
    """Refuse model outputs that cannot be scored against ``data``'s labels."""
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise InputError(f"model output has shape {tuple(logits.shape)}; expected (batch, classes)")
    classes = int(logits.shape[1])
    if classes < data.num_classes:
        raise DataError(
            f"model predicts {classes} classes but labels go up to {data.num_classes - 1} "
            f"({data.num_classes} classes in {data.name}); use a model built for this data"
        )
