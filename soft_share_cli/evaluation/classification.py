"""Evaluate a classifier on an in-memory :class:`~soft_share_cli.data.loaders.Dataset`.

Top-1, top-5 and mean cross-entropy, scored batch by batch in the loop of
:mod:`soft_share_cli.evaluation.loop`.
"""

from __future__ import annotations

import math
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

TOP5_MIN_CLASSES = 10  # top-5 says little with fewer classes, so it is reported only from 10 on


@dataclass(frozen=True)
class EvalResult(Measured):
    """Accuracy, loss and speed of one evaluation pass."""

    samples: int
    top1: float  # percent
    top5: float | None  # percent, only when the data has >= 10 classes
    loss: float  # mean cross-entropy
    seconds: float  # wall time of the loop, including the final device sync
    throughput: float  # samples / s
    # argmax per sample (CPU, int64), kept on request for agreement checks between models
    predictions: Tensor | None = field(default=None, repr=False, compare=False)

    def scores(self) -> dict[str, Any]:
        return {"samples": self.samples, "top1": self.top1, "top5": self.top5, "loss": self.loss}

    @property
    def headline(self) -> float:
        """The accuracy a gate compares (``--max-drop``): top-1, in percent."""
        return self.top1

    def summary(self) -> dict[str, Any]:
        """The figures a fold's data check reports for this network."""
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss}


def evaluate(model: nn.Module, data: Dataset, **options: Unpack[PassOptions]) -> EvalResult:
    """Evaluate ``model`` on ``data`` in eval mode and return accuracy, loss and throughput.

    The model is moved to ``device`` in place (as :meth:`nn.Module.to` does) and each module's
    train/eval mode is restored afterwards. ``progress(done, total)`` is called after each batch.
    Raises :class:`DataError` when the model predicts fewer classes than the data has.
    """
    passed, figures = run_pass(model, data, _Top1Scorer(data), **options)
    total, loss, hits5 = passed.samples, figures["loss"], figures["hits5"]
    if not math.isfinite(loss):  # accuracy of NaN logits means nothing; JSON cannot hold NaN
        raise InputError(
            f"the network's outputs on {data.name} are not finite (loss {loss}); its weights "
            "hold NaN or infinite values or overflow"
        )
    return EvalResult(
        samples=total,
        top1=100.0 * figures["hits1"] / total,
        top5=None if hits5 is None else 100.0 * hits5 / total,
        loss=loss / total,
        seconds=passed.seconds,
        throughput=passed.throughput,
        predictions=passed.predictions,
    )


class _Top1Scorer:
    """Loss, top-1 and (from TOP5_MIN_CLASSES classes on) top-5 hits, summed on the device."""

    def __init__(self, data: Dataset) -> None:
        self.data = data
        self.want_top5 = data.num_classes >= TOP5_MIN_CLASSES
        self.loss_sums: list[Tensor] = []
        self.correct1: list[Tensor] = []
        self.correct5: list[Tensor] = []

    def check(self, logits: Tensor, labels: Tensor) -> None:
        _check_output(logits, self.data)

    def add(self, logits: Tensor, labels: Tensor) -> Tensor:
        # float(): a half-precision model would otherwise sum its loss in half precision
        self.loss_sums.append(F.cross_entropy(logits.float(), labels, reduction="sum"))
        pred = logits.argmax(dim=1)
        self.correct1.append((pred == labels).sum())
        if self.want_top5:
            top5 = logits.topk(5, dim=1).indices
            self.correct5.append((top5 == labels.unsqueeze(1)).any(dim=1).sum())
        return pred

    def finish(self) -> dict[str, Any]:
        # The single host-device sync of the whole pass (float64 on the host: MPS lacks it).
        return {
            "loss": float(torch.stack(self.loss_sums).cpu().double().sum()),
            "hits1": int(torch.stack(self.correct1).sum()),
            "hits5": int(torch.stack(self.correct5).sum()) if self.want_top5 else None,
        }


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
