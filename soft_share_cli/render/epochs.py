"""One plain line per finished epoch, for ``ssc train`` when its output is not a terminal (a log
file, a pipe): the log grows as training goes, and an interrupted run leaves what it did."""

from __future__ import annotations

from typing import Any


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def epoch_line(record: Any, epochs: int) -> str:
    """``epoch 3/30  lr 0.0923  loss 0.4123  train 88.10 %  test 91.30 %  12.3 s`` (a task
    network's epoch shows pixel accuracy and the exact-solve rate of train and test)."""
    head = f"epoch {record.epoch}/{epochs}  lr {record.lr:.4g}  loss {record.train_loss:.4f}"
    if hasattr(record, "train_exact"):  # a task network's TaskEpochRecord
        scores = (
            f"train pixels {_pct(record.train_pixel_accuracy)} exact {_pct(record.train_exact)}"
            f"  test pixels {_pct(record.test_pixel_accuracy)} exact {_pct(record.test_exact)}"
        )
    else:
        scores = f"train {_pct(record.train_top1)}  test {_pct(record.test_top1)}"
    return f"{head}  {scores}  {record.seconds:.1f} s"
