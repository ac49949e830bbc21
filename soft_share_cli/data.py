"""Data sets named by ``--data`` specs, loaded whole into memory and already preprocessed.

Accepted specs (``KIND[:PATH]``, optionally followed by ``?limit=N`` to keep the first N samples):

* ``digits`` — scikit-learn's bundled 8x8 digits (no download), fixed 1437/360 split.
* ``npz:FILE`` — arrays ``x`` (N, C, H, W) float, already preprocessed, and ``y`` (N,) int;
  both splits are the whole file unless it holds ``x_train/y_train/x_test/y_test``.
* ``cifar10:DIR`` / ``cifar100:DIR`` — the standard python-pickle batches (DIR or its parent),
  read without executing pickle code; train = the training batches, test = the test batch.
* ``folder:DIR`` — one sub-folder of same-size images per class (sorted names give the class
  indices; dot-files are skipped); both splits are all of the images.
* ``maze:size=N[,count=M,seed=S]`` / ``prefix-sums:length=N[,count=M,seed=S]`` — generated
  algorithmic tasks with a label per pixel, ``y`` of shape ``(N, H, W)`` (see
  :mod:`soft_share_cli.tasks`).
"""

from __future__ import annotations

import enum
import importlib
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from soft_share_cli.errors import DataError

SPEC_FORMS = (
    "digits, npz:FILE, cifar10:DIR, cifar100:DIR, folder:DIR, maze:size=N, prefix-sums:length=N "
    "(optionally ?limit=N)"
)
SPLITS = ("train", "test")

# Digits pixels are 0..16. Computed once as the mean and (population, ddof=0) std of all pixels
# of the train split below after scaling by 1/16: 0.305383..., 0.376119...; a test recomputes.
DIGITS_MEAN = 0.3054
DIGITS_STD = 0.3761
DIGITS_SPLIT = "sklearn train_test_split(test_size=0.2, stratify=y, random_state=0)"

# The authors' CIFAR normalisation (per channel, on x / 255).
CIFAR_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
}


class DataKind(str, enum.Enum):
    """The kinds of data set a spec can name."""

    DIGITS = "digits"
    NPZ = "npz"
    CIFAR10 = "cifar10"
    CIFAR100 = "cifar100"
    FOLDER = "folder"
    MAZE = "maze"
    PREFIX_SUMS = "prefix-sums"


TASK_KINDS = (DataKind.MAZE, DataKind.PREFIX_SUMS)  # generated; options instead of a path


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` spec; parsing checks the form and that the path exists."""

    kind: DataKind
    path: Path | None  # None for digits and the generated tasks
    options: dict[str, int] = field(default_factory=dict)  # e.g. {"limit": 500}


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


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``spec`` into a :class:`DataSpec`, raising :class:`DataError` if it is unusable."""
    options: dict[str, int] = {}
    # Options only when the tail is exactly "?limit=N", so paths containing "?" still work.
    match = re.fullmatch(r"(.*)\?limit=(\d+)", spec.strip())
    if match:
        spec, options["limit"] = match.group(1), int(match.group(2))
        if options["limit"] < 1:
            raise DataError(f"?limit must be at least 1 in data spec {spec!r}")
    kind_text, sep, path_text = spec.strip().partition(":")
    try:
        kind = DataKind(kind_text.lower())
    except ValueError:
        raise DataError(f"unknown data spec {spec!r}; use one of: {SPEC_FORMS}") from None
    if kind in TASK_KINDS:
        from soft_share_cli.tasks import parse_task_spec

        task = parse_task_spec(kind.value, path_text)
        return DataSpec(
            kind, None, {"size": task.size, "count": task.count, "seed": task.seed, **options}
        )
    if kind is DataKind.DIGITS:
        if sep:
            raise DataError(f"'digits' takes no path (got {spec!r}); use one of: {SPEC_FORMS}")
        return DataSpec(kind, None, options)
    if not path_text:
        raise DataError(f"data spec {spec!r} needs a path, e.g. {kind.value}:/path/to/data")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise DataError(f"data path not found: {path} (from spec {spec!r})")
    want_dir = kind is not DataKind.NPZ
    if want_dir != path.is_dir():
        what = "a directory" if want_dir else "an .npz file"
        raise DataError(f"{kind.value}: expects {what}, got {path}")
    return DataSpec(kind, path, options)


def load_data(spec: str, split: str = "test") -> Dataset:
    """Load the ``split`` ("train" or "test") of the data set named by ``spec``.

    See the module docstring for the accepted specs. ``npz`` files without per-split arrays and
    ``folder`` data sets have no split: both splits return all of their samples.
    """
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    parsed = parse_data_spec(spec)
    loaders: dict[DataKind, Callable[[Path | None, str], tuple[np.ndarray, np.ndarray, int, dict]]]
    loaders = {
        DataKind.DIGITS: _load_digits,
        DataKind.NPZ: _load_npz,
        DataKind.CIFAR10: lambda p, s: _load_cifar(p, s, "cifar10"),
        DataKind.CIFAR100: lambda p, s: _load_cifar(p, s, "cifar100"),
        DataKind.FOLDER: _load_folder,
    }
    if parsed.kind in TASK_KINDS:
        x, y, num_classes, preprocessing = _load_task(parsed, split)
    else:
        x, y, num_classes, preprocessing = loaders[parsed.kind](parsed.path, split)
    if "limit" in parsed.options:
        # Copies, so the full arrays are freed rather than kept alive behind a view.
        x, y = x[: parsed.options["limit"]].copy(), y[: parsed.options["limit"]].copy()
        preprocessing["limit"] = parsed.options["limit"]
    if len(y) == 0:
        raise DataError(f"data spec {spec!r} gives no {split} samples")
    return Dataset(
        name=spec,
        split=split,
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(np.asarray(y, dtype=np.int64)),
        num_classes=num_classes,
        preprocessing=preprocessing,
    )


def _load_task(parsed: DataSpec, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """A generated task split (:mod:`soft_share_cli.tasks`); inputs are 0/1, no normalisation."""
    from soft_share_cli.tasks import Task, TaskSpec, task_arrays

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
    return _normalise(x, prep["mean"], prep["std"]), y, 10, prep


def _load_npz(path: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    assert path is not None
    split_keys = ("x_train", "y_train", "x_test", "y_test")
    # We own the file handle: np.load leaks its own when the zip directory is damaged.
    try:
        with path.open("rb") as fh, _open_npz(fh, path) as archive:
            keys = set(archive.files)
            present = [k for k in split_keys if k in keys]
            if present and len(present) < 4:
                missing = sorted(set(split_keys) - keys)
                raise DataError(f"{path}: has {present} but lacks {missing}; give all four")
            names = ("x_" + split, "y_" + split) if present else ("x", "y")
            other = ("y_test" if split == "train" else "y_train") if present else None
            for key in names:
                if key not in keys:
                    raise DataError(f"{path}: no array {key!r} (has {sorted(keys)})")
            x, y = archive[names[0]], archive[names[1]]
            all_labels = {names[1]: y, **({other: archive[other]} if other else {})}
            declared = archive["num_classes"] if "num_classes" in keys else None
    except ValueError as exc:  # object arrays refused by allow_pickle=False, bad headers
        raise DataError(f"{path}: cannot read .npz ({exc}); save plain numeric arrays") from None
    except (
        OSError,
        EOFError,
        zipfile.BadZipFile,
    ) as exc:  # bad zip directory, zlib errors, truncated members
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None

    if x.ndim != 4:
        raise DataError(f"{path}: {names[0]} must be (N, C, H, W), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise DataError(f"{path}: {names[0]} must be float (preprocessed), got {x.dtype}")
    for key, labels in all_labels.items():
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{path}: {key} must be 1-D integer, got {labels.dtype} {labels.shape}")
        if labels.size and labels.min() < 0:
            raise DataError(f"{path}: {key} has negative labels")
    if len(x) != len(y):
        raise DataError(f"{path}: {names[0]} has {len(x)} samples but {names[1]} has {len(y)}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: caught next
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {names[0]} contains NaN or infinite values")
    num_classes = max((int(a.max()) + 1 for a in all_labels.values() if a.size), default=0)
    if declared is not None:
        if declared.ndim != 0 or declared.dtype.kind not in "iu" or int(declared) < num_classes:
            raise DataError(f"{path}: num_classes must be an integer scalar >= {num_classes}")
        num_classes = int(declared)
    which = f"{split} arrays" if present else "none: train and test are the whole file"
    return x, y, num_classes, {"dataset": "npz", "file": str(path), "split": which}


def _open_npz(fh: Any, path: Path) -> Any:
    archive = np.load(fh, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy holds one bare array
        raise DataError(f"{path}: expected an .npz archive of x and y arrays, got a .npy")
    return archive


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Pickle protocol 5 (Python 3 default) stores arrays through _frombuffer: plain data too.
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The only use of ``_codecs.encode`` a protocol-2 pickle of bytes makes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode called with unexpected arguments")
    return text.encode("latin1")


class _BatchUnpickler(pickle._Unpickler):
    """Unpickles CIFAR batches; refuses every global beyond numpy array reconstruction.

    The pure-Python unpickler, as torch's weights-only loader uses: the C one sizes its memo by
    the largest index a file names, so nine forged bytes would allocate 16 GiB. Batches hold a
    few large objects, so the speed is the same.
    """

    def __init__(self, file: Any, source: Path):
        # encoding="bytes": the batches are Python 2 pickles whose str keys must stay bytes.
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"{self.source}: pickle references {module}.{name}; refusing")
        if module == "numpy":
            return getattr(np, name)
        submodule = module.rsplit(".", 1)[1]
        try:  # numpy 2 renamed numpy.core to numpy._core; batches may name either
            owner = importlib.import_module(f"numpy._core.{submodule}")
        except ImportError:
            owner = importlib.import_module(f"numpy.core.{submodule}")
        return getattr(owner, name)


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"CIFAR batch not found: {path}")
    with path.open("rb") as fh:
        try:
            batch = _BatchUnpickler(fh, path).load()
        except DataError:
            raise
        except Exception as exc:  # truncated or garbled files raise many different types
            raise DataError(f"{path}: not a readable CIFAR batch ({exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or label_key not in batch:
        raise DataError(f"{path}: batch lacks 'data' or {label_key.decode()!r}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        raise DataError(f"{path}: 'data' must be uint8 (N, 3072)")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be {len(data)} integers")
    return data, labels


def _load_cifar(
    path: Path | None, split: str, which: str
) -> tuple[np.ndarray, np.ndarray, int, dict]:
    assert path is not None
    subdir = "cifar-10-batches-py" if which == "cifar10" else "cifar-100-python"
    if (path / subdir).is_dir():
        path = path / subdir
    if which == "cifar10":
        names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        label_key, num_classes = b"labels", 10
    else:
        names, label_key, num_classes = [split], b"fine_labels", 100
    parts = [_read_batch(path / name, label_key) for name in names]
    data = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}; is this {which}?")
    # Rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 image.
    x = data.reshape(-1, 3, 32, 32).astype(np.float32)
    x /= 255
    mean, std = CIFAR_STATS[which]
    prep = {"dataset": which, "scale": 1 / 255, "mean": list(mean), "std": list(std)}
    prep["split"] = f"official {split} batches"
    return _normalise(x, mean, std), y, num_classes, prep


def _load_folder(path: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    assert path is not None
    from PIL import Image

    # Files at the top level are ignored (only sub-folders name classes), as torchvision does.
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{path}: no class sub-folders; expected DIR/<class>/<image>")
    images: list[Image.Image] = []
    labels: list[int] = []
    first: Path | None = None
    for index, name in enumerate(classes):
        files = sorted(f for f in (path / name).iterdir() if not f.name.startswith("."))
        if not files:
            raise DataError(f"{path / name}: class folder has no images")
        for file in files:
            if file.is_dir():
                raise DataError(f"{file}: nested folders are not supported in folder: data")
            try:
                with Image.open(file) as img:
                    img.load()
            except Exception as exc:  # PIL raises OSError, ValueError, DecompressionBombError
                raise DataError(f"{file}: not a readable image ({exc})") from None
            if first is None:
                first = file
            elif img.size != images[0].size:
                raise DataError(f"{file}: size {img.size} differs from {first}'s {images[0].size}")
            images.append(img)
            labels.append(index)
    grey = all(img.mode in ("1", "L") for img in images)
    mode = "L" if grey else "RGB"
    arrays = [np.asarray(img.convert(mode), dtype=np.uint8) for img in images]
    x = np.stack(arrays).reshape(len(arrays), *arrays[0].shape[:2], -1).transpose(0, 3, 1, 2)
    x = x.astype(np.float32) / 255
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    std[std == 0] = 1.0  # a constant channel would divide by zero; leave it centred only
    prep = {
        "dataset": "folder",
        "root": str(path),
        "classes": classes,
        "mode": mode,
        "scale": 1 / 255,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "split": "none: train and test are the whole folder",
    }
    return _normalise(x, mean, std), np.asarray(labels), len(classes), prep
