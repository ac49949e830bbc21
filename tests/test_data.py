"""Data specs: digits split and constants, npz validation, safe CIFAR reading, image folders."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from soft_share_cli.data.cifar import CIFAR_STATS
from soft_share_cli.data.loaders import DIGITS_MEAN, DIGITS_STD, digits_split, load_data
from soft_share_cli.data.spec import DATA_HELP, SPEC_FORMS, DataKind, parse_data_spec
from soft_share_cli.errors import DataError

# ---------------------------------------------------------------- digits


def test_digits_shapes_and_labels() -> None:
    train, test = load_data("digits", "train"), load_data("digits", "test")
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.num_classes == test.num_classes == 10 and train.in_channels == 1
    assert set(train.y.tolist()) == set(range(10)) == set(test.y.tolist())
    assert test.preprocessing["dataset"] == "digits"
    assert test.preprocessing["mean"] == [DIGITS_MEAN] and test.preprocessing["scale"] == 1 / 16


def test_digits_split_is_the_documented_one() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    _, x_test, _, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    test = load_data("digits", "test")
    assert test.y.tolist() == y_test.tolist()
    expected = (x_test.reshape(-1, 1, 8, 8) / 16 - DIGITS_MEAN) / DIGITS_STD
    torch.testing.assert_close(test.x, torch.from_numpy(expected).float())


def test_digits_constants_match_recomputation() -> None:
    x_train = digits_split()[0] / 16
    # Hard-coded to 4 decimals, so they agree to within half a unit of the last place.
    assert abs(x_train.mean() - DIGITS_MEAN) <= 5e-5
    assert abs(x_train.std() - DIGITS_STD) <= 5e-5
    train = load_data("digits", "train")
    assert abs(train.x.mean().item()) < 1e-3
    assert abs(train.x.std().item() - 1) < 1e-3


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagenet:/x", "unknown data spec"),
        ("npz", "needs a path"),
        ("digits:/tmp", "takes no path"),
        ("npz:/definitely/not/here.npz", "not found"),
        ("digits?limit=0", "at least 1"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        parse_data_spec(spec)
    if message == "unknown data spec":  # the message lists what would have worked
        assert "cifar10:DIR" in str(info.value) and "folder:DIR" in str(info.value)


def test_spec_parsing_and_limit(tmp_path: Path) -> None:
    assert parse_data_spec("digits").kind is DataKind.DIGITS
    spec = parse_data_spec(f"folder:{tmp_path}?limit=7")
    assert (spec.kind, spec.path, spec.options) == (DataKind.FOLDER, tmp_path, {"limit": 7})
    with pytest.raises(DataError, match="expects an .npz file"):
        parse_data_spec(f"npz:{tmp_path}")
    assert len(load_data("digits?limit=50")) == 50
    with pytest.raises(DataError, match="split"):
        load_data("digits", "validation")


def test_a_parsed_spec_loads_as_its_text() -> None:
    """load_data takes the DataSpec a command parsed once; the data set keeps the spec's text."""
    parsed = parse_data_spec(" digits?limit=5")
    data = load_data(parsed, "train")
    assert (data.name, len(data)) == (" digits?limit=5", 5)
    torch.testing.assert_close(data.x, load_data(" digits?limit=5", "train").x)


def test_spec_forms_and_help_come_from_the_kinds() -> None:
    assert SPEC_FORMS == (
        "digits, npz:FILE, cifar10:DIR, cifar100:DIR, folder:DIR, maze:size=N, "
        "prefix-sums:length=N (optionally ?limit=N)"
    )
    assert DATA_HELP == (
        "Data to use: digits | npz:FILE | cifar10:DIR | cifar100:DIR | folder:DIR | "
        "maze:size=N[,count=M,seed=S] | prefix-sums:length=N[,...] (see README, 'Data specs')."
    )
    assert all(kind.form in SPEC_FORMS and kind.summary for kind in DataKind)


def test_the_spec_grammar_loads_neither_numpy_nor_torch() -> None:
    code = (
        "import sys\nfrom soft_share_cli.data.spec import parse_data_spec\n"
        "parse_data_spec('digits?limit=3')\n"
        "print(sorted({'numpy', 'torch'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- npz


def _npz(tmp_path: Path, **arrays: object) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return f"npz:{path}"


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2, 4, 4))  # float64: accepted, stored as float32
    y = np.array([0, 1, 2, 1, 0, 4], dtype=np.uint8)
    spec = _npz(tmp_path, x=x, y=y)
    for split in ("train", "test"):  # no per-split arrays: both splits are the whole file
        data = load_data(spec, split)
        assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64
        torch.testing.assert_close(data.x, torch.from_numpy(x).float())
        assert data.y.tolist() == y.tolist() and data.num_classes == 5
    assert (
        load_data(_npz(tmp_path, x=x.astype(np.float16), y=y, num_classes=np.array(9))).num_classes
        == 9
    )


def test_npz_split_arrays(tmp_path: Path) -> None:
    x = np.zeros((3, 1, 2, 2), np.float32)
    spec = _npz(
        tmp_path, x_train=x, y_train=np.array([0, 1, 1]), x_test=x[:2] + 1, y_test=np.array([6, 0])
    )
    train, test = load_data(spec, "train"), load_data(spec, "test")
    assert (len(train), len(test)) == (3, 2)
    assert test.x.min().item() == 1.0
    assert train.num_classes == test.num_classes == 7  # labels of both splits count


X4 = np.zeros((3, 1, 2, 2), np.float32)
Y3 = np.array([0, 1, 2])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": X4}, "no array 'y'"),
        ({"y": Y3}, "no array 'x'"),
        ({"x": X4[:, 0], "y": Y3}, r"\(N, C, H, W\)"),
        ({"x": X4.astype(np.uint8), "y": Y3}, "must be float"),
        ({"x": X4, "y": Y3.astype(np.float32)}, "1-D integer"),
        ({"x": X4, "y": Y3.reshape(3, 1)}, "1-D integer"),
        ({"x": X4, "y": np.array([0, -1, 2])}, "negative"),
        ({"x": X4, "y": Y3[:2]}, "3 samples but y has 2"),
        ({"x": X4 * np.nan, "y": Y3}, "NaN or infinite"),
        ({"x": np.full((3, 1, 2, 2), 1e300), "y": Y3}, "NaN or infinite"),
        ({"x": X4, "y": Y3, "num_classes": np.array(2)}, "num_classes"),
        ({"x_train": X4, "y_train": Y3}, "lacks"),
        ({"x": np.array([{"a": 1}] * 3, dtype=object), "y": Y3}, "cannot read"),
        ({"x": X4[:0], "y": Y3[:0]}, "no test samples"),
    ],
)
def test_malformed_npz(tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_data(_npz(tmp_path, **arrays))


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", X4)
    with pytest.raises(DataError, match="got a .npy"):
        load_data(f"npz:{tmp_path / 'a.npy'}")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="npz"):
        load_data(f"npz:{tmp_path / 'junk.npz'}")


# ---------------------------------------------------------------- CIFAR


def _batch(path: Path, labels: list[int], key: bytes, protocol: int = 2) -> np.ndarray:
    rng = np.random.default_rng(len(labels))
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    with path.open("wb") as fh:  # protocol 2, like the Python 2 pickles that are distributed
        pickle.dump({b"batch_label": b"fake", key: labels, b"data": data}, fh, protocol=protocol)
    return data


def test_cifar10(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _batch(root / f"data_batch_{i}", [i, 0], b"labels", protocol=5 if i == 5 else 2)
    data = _batch(root / "test_batch", [3, 9, 0], b"labels")
    for spec in (f"cifar10:{root}", f"cifar10:{tmp_path}"):  # the folder or its parent
        test = load_data(spec, "test")
        assert test.x.shape == (3, 3, 32, 32) and test.y.tolist() == [3, 9, 0]
        assert test.num_classes == 10
    train = load_data(f"cifar10:{tmp_path}", "train")
    assert len(train) == 10 and train.y.tolist() == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0]
    # Sample 1, green channel (second 1024 bytes), row 2, column 5.
    mean, std = CIFAR_STATS["cifar10"]
    expected = (data[1, 1024 + 2 * 32 + 5] / 255 - mean[1]) / std[1]
    assert test.x[1, 1, 2, 5].item() == pytest.approx(expected, abs=1e-5)
    assert test.preprocessing["mean"][0] == pytest.approx(125.3 / 255)


def test_cifar100(tmp_path: Path) -> None:
    _batch(tmp_path / "train", [99, 5, 0, 42], b"fine_labels")
    data = _batch(tmp_path / "test", [7], b"fine_labels")
    train, test = load_data(f"cifar100:{tmp_path}", "train"), load_data(f"cifar100:{tmp_path}")
    assert train.y.tolist() == [99, 5, 0, 42] and test.num_classes == 100
    mean, std = CIFAR_STATS["cifar100"]
    expected = (data[0, 2048] / 255 - mean[2]) / std[2]
    assert test.x[0, 2, 0, 0].item() == pytest.approx(expected, abs=1e-5)
    assert std[0] == pytest.approx(68.2 / 255)


def test_cifar_batch_naming_numpy_1_modules(tmp_path: Path) -> None:
    # The distributed batches predate numpy 2 and name numpy.core.multiarray._reconstruct.
    data = np.arange(3072, dtype=np.int64).astype(np.uint8).reshape(1, 3072)
    raw = pickle.dumps({b"data": data, b"labels": [4]}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (tmp_path / "test_batch").write_bytes(raw)
    assert load_data(f"cifar10:{tmp_path}").y.tolist() == [4]


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_cifar_batch_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    with (tmp_path / "test_batch").open("wb") as fh:
        pickle.dump({b"data": _Hostile(marker), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(DataError, match=r"references \w+\.system; refusing"):
        load_data(f"cifar10:{tmp_path}", "test")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}, protocol=2), "lacks"),
        (pickle.dumps([1, 2], protocol=2), "pickled dict"),
        (pickle.dumps({b"data": np.zeros((1, 10), np.uint8), b"labels": [0]}), "uint8"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}), "0..9"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})[:40], "readable"),
    ],
)
def test_malformed_cifar_batches(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(DataError, match="not found"):  # no data_batch_1..5 here
        load_data(f"cifar10:{tmp_path}", "train")


# ---------------------------------------------------------------- folder


def _png(path: Path, mode: str, value: int | tuple, size: tuple[int, int] = (4, 3)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_folder_greyscale(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "a.png", "L", 0)
    _png(tmp_path / "cat" / "b.png", "L", 100)
    _png(tmp_path / "dog" / "c.png", "L", 255)
    (tmp_path / "README.txt").write_text("top-level files are ignored")
    data = load_data(f"folder:{tmp_path}", "train")
    assert data.x.shape == (3, 1, 3, 4) and data.y.tolist() == [0, 0, 1]
    assert data.num_classes == 2 and data.preprocessing["classes"] == ["cat", "dog"]
    assert abs(data.x.mean().item()) < 1e-5 and data.x.std(unbiased=False).item() == pytest.approx(
        1
    )
    assert data.preprocessing["mean"] == pytest.approx([355 / 3 / 255])
    torch.testing.assert_close(load_data(f"folder:{tmp_path}", "test").x, data.x)


def test_folder_mixed_modes_become_rgb(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "1.png", "L", 10)
    _png(tmp_path / "b" / "2.png", "RGB", (255, 0, 7))
    data = load_data(f"folder:{tmp_path}")
    assert data.x.shape == (2, 3, 3, 4) and data.preprocessing["mode"] == "RGB"
    assert data.preprocessing["mean"] == pytest.approx([265 / 2 / 255, 10 / 2 / 255, 17 / 2 / 255])


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "1.png", "L", 10)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="notes.txt"):
        load_data(f"folder:{tmp_path}")
    (tmp_path / "a" / "notes.txt").unlink()
    _png(tmp_path / "b" / "2.png", "L", 10, size=(5, 5))
    with pytest.raises(DataError, match=r"2\.png: size \(5, 5\)"):
        load_data(f"folder:{tmp_path}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_data(f"folder:{empty}")
