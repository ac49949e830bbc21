"""Data sets named by ``--data`` specs. (Interface stub: being implemented.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """An in-memory, already preprocessed split of a data set.

    ``x`` is float32 ``(N, C, H, W)``, ``y`` int64 ``(N,)`` with labels in ``[0, num_classes)``.
    """

    name: str  # the spec it came from, e.g. "digits" or "npz:/path/file.npz"
    split: str  # "train" or "test"
    x: Tensor
    y: Tensor
    num_classes: int
    preprocessing: dict[str, Any] = field(default_factory=dict)  # stored in checkpoints

    @property
    def in_channels(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.y.shape[0])


def load_data(spec: str, split: str = "test") -> Dataset:
    """Load the ``split`` ("train" or "test") of the data set named by ``spec``."""
    raise NotImplementedError
