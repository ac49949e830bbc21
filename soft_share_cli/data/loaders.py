"""Data sets named by ``--data`` specs, loaded whole into memory and already preprocessed.

:func:`load_data` takes a spec (text, or a :class:`~soft_share_cli.data.spec.DataSpec` parsed
once by :func:`~soft_share_cli.data.spec.parse_data_spec`) and hands it to its source's loader:

* ``digits`` — scikit-learn's bundled 8x8 digits (no download), fixed 1437/360 split (here).
* ``npz:FILE`` — arrays ``x`` (N, C, H, W) float, already preprocessed, and ``y`` (N,) int;
  both splits are the whole file unless it holds ``x_train/y_train/x_test/y_test``
  (:mod:`soft_share_cli.data.npz`).
* ``cifar10:DIR`` / ``cifar100:DIR`` — the standard python-pickle batches (DIR or its parent),
  read without executing pickle code; train = the training batches, test = the test batch
  (:mod:`soft_share_cli.data.cifar`).
* ``folder:DIR`` — one sub-folder of same-size images per class (sorted names give the class
  indices; dot-files are skipped); both splits are all of the images
  (:mod:`soft_share_cli.data.folder`).
* ``maze:size=N[,count=M,seed=S]`` / ``prefix-sums:length=N[,count=M,seed=S]`` — generated
  algorithmic tasks with a label per pixel, ``y`` of shape ``(N, H, W)`` (see
  :mod:`soft_share_cli.data.tasks`).

Only regular files are read (a FIFO, device or socket would block or never end), symlinks are
followed once and never recursed into, and every size a file declares (npz headers, CIFAR arrays,
image headers) is checked against the bytes present and against :mod:`soft_share_cli.limits`
(``MAX_SAMPLES``, ``MAX_DATA_BYTES``, ``MAX_IMAGE_PIXELS``, ``MAX_CLASSES``, ``MAX_CHANNELS``,
``MAX_BATCH_BYTES``, ``MAX_INFLATION``) before anything is allocated: beyond one, a
:class:`DataError` names the file and the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from soft_share_cli.data.cifar import load_cifar
from soft_share_cli.data.folder import load_folder
from soft_share_cli.data.npz import load_npz
from soft_share_cli.data.spec import SPLITS, TASK_KINDS, DataKind, DataSpec, parse_data_spec
from soft_share_cli.errors import DataError

# Digits pixels are 0..16. Computed once as the mean and (population, ddof=0) std of all pixels
# of the train split below after scaling by 1/16: 0.305383..., 0.376119...; a test recomputes.
DIGITS_MEAN = 0.3054
DIGITS_STD = 0.3761
DIGITS_SPLIT = "sklearn train_test_split(test_size=0.2, stratify=y, random_state=0)"

#: A source's loader: ``(path, split) -> (x, y, num_classes, preprocessing)``. ``x`` is float
#: ``(N, C, H, W)``; when the preprocessing has a ``mean`` and ``std``, load_data applies them.
Loader = Callable[[Path | None, str], tuple[np.ndarray, np.ndarray, int, dict]]


@dataclass(frozen=True)
class Dataset:
    """An in-memory, already preprocessed split of a data set.

    ``x`` is float32 ``(N, C, H, W)``, ``y`` int64 ``(N,)`` with labels in ``[0, num_classes)``;
    for the per-pixel tasks (maze, prefix-sums) ``y`` is ``(N, H, W)``, one label per pixel.
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


def load_data(spec: str | DataSpec, split: str = "test") -> Dataset:
    """Load the ``split`` ("train" or "test") of the data set named by ``spec``.

    ``spec`` is the text of a spec or the :class:`DataSpec` :func:`parse_data_spec` made of it
    (so a command parses its ``--data`` once); the data set's name is the spec's text. See the
    module docstring for the accepted specs. ``npz`` files without per-split arrays and
    ``folder`` data sets have no split: both splits return all of their samples.
    """
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    parsed = spec if isinstance(spec, DataSpec) else parse_data_spec(spec)
    loaders: dict[DataKind, Loader] = {
        DataKind.DIGITS: _load_digits,
        DataKind.NPZ: load_npz,
        DataKind.CIFAR10: lambda p, s: load_cifar(p, s, "cifar10"),
        DataKind.CIFAR100: lambda p, s: load_cifar(p, s, "cifar100"),
        DataKind.FOLDER: load_folder,
    }
    if parsed.kind in TASK_KINDS:
        x, y, num_classes, preprocessing = _load_task(parsed, split)
    else:
        x, y, num_classes, preprocessing = loaders[parsed.kind](parsed.path, split)
    if "mean" in preprocessing:
        x = _normalise(x, preprocessing["mean"], preprocessing["std"])
    if "limit" in parsed.options:
        # Copies, so the full arrays are freed rather than kept alive behind a view.
        x, y = x[: parsed.options["limit"]].copy(), y[: parsed.options["limit"]].copy()
        preprocessing["limit"] = parsed.options["limit"]
    if len(y) == 0:
        raise DataError(f"data spec {parsed.text!r} gives no {split} samples")
    return Dataset(
        name=parsed.text,
        split=split,
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(np.asarray(y, dtype=np.int64)),
        num_classes=num_classes,
        preprocessing=preprocessing,
    )


def _load_task(parsed: DataSpec, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """A generated task split (:mod:`soft_share_cli.data.tasks`); inputs 0/1, not normalised."""
    from soft_share_cli.data.tasks import Task, TaskSpec, task_arrays

    o = parsed.options
    spec = TaskSpec(Task(parsed.kind.value), o["size"], o["count"], o["seed"])
    x, y = task_arrays(spec, split)
    return x, y, 2, {"dataset": spec.task.value, **spec.to_dict(), "split": f"generated {split}"}


def _normalise(x: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """(x - mean) / std per channel (axis 1), in place on a fresh float32 ``x`` to spare memory."""
    x -= np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return x


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed digits split as raw sklearn arrays: ``x_train, x_test, y_train, y_test``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)


def _load_digits(_: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    x_train, x_test, y_train, y_test = digits_split()
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    x = (x.astype(np.float32) / 16).reshape(-1, 1, 8, 8)
    prep = {
        "dataset": "digits",
        "scale": 1 / 16,
        "mean": [DIGITS_MEAN],
        "std": [DIGITS_STD],
        "split": DIGITS_SPLIT,
    }
    return x, y, 10, prep
