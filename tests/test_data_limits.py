"""Issue 11, data side: ``--data`` files are bounded, regular-file-only and loop-safe.

Every hostile file here is generated at test time. Each must end in a :class:`DataError` (exit 2,
one line) naming the file and, for a size beyond a limit, the limit (``limits.NAME``), before
anything of the declared size is allocated. Cases that used to hang (FIFOs, devices) run in a
subprocess with a timeout and a memory cap.
"""

from __future__ import annotations

import io
import os
import pickle
import resource
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from soft_share_cli import limits
from soft_share_cli.data.loaders import load_data
from soft_share_cli.data.tasks import parse_task_spec
from soft_share_cli.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
ALIGNED = ROOT / "sample_checkpoints" / "swrn28-1-4_digits_align.pt"


def refused(spec: str, *fragments: str, split: str = "test") -> str:
    """The DataError message of ``load_data(spec)``; every fragment must be in it."""
    with pytest.raises(DataError) as info:
        load_data(spec, split)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ---------------------------------------------------------------- npz


def npy(shape: tuple, descr: str = "<f4", body: bytes = b"", fortran: bool = False) -> bytes:
    """A .npy member whose header says ``shape``/``descr``, followed by ``body`` (any length)."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + body


def npz(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> str:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, content in members.items():
            archive.writestr(name + ".npy", content)
    return f"npz:{path}"


X = np.zeros((3, 1, 8, 8), np.float32)
Y = npy((3,), "<i8", np.array([0, 1, 2], np.int64).tobytes())


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_header_declaring_terabytes(tmp_path: Path, method: int) -> None:
    spec = npz(tmp_path / "d.npz", {"x": npy((10**6, 3, 1000, 1000)), "y": Y}, method)
    refused(spec, "d.npz", "'x'", "limits.MAX_DATA_BYTES")


def test_npz_header_declaring_more_than_the_member_holds(tmp_path: Path) -> None:
    # 800 MB of labels declared, within the limit, in a member of 128 bytes: not allocated.
    members = {"x": npy((3, 1, 8, 8), body=X.tobytes()), "y": npy((10**8,), "<i8")}
    spec = npz(tmp_path / "d.npz", members)
    refused(spec, "'y'", "800000000 bytes", "holds 0 bytes")
    spec = npz(tmp_path / "e.npz", {"x": npy((3, 1, 8, 8), body=b"\0" * 100), "y": Y})
    refused(spec, "'x'", "768 bytes", "holds 100 bytes")


def test_npz_compressed_bomb(tmp_path: Path) -> None:
    # 40 MiB of zeros deflate to ~40 KB: more than MAX_INFLATION times, above the exemption.
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((10, 1, 1024, 1024), np.float32), y=np.arange(10))
    refused(f"npz:{path}", "bomb.npz", "'x'", "limits.MAX_INFLATION", "np.savez")
    # Uncompressed, the same arrays are read: the limit is about inflation, not size.
    np.savez(path, x=np.zeros((10, 1, 1024, 1024), np.float32), y=np.arange(10))
    assert load_data(f"npz:{path}").x.shape == (10, 1, 1024, 1024)


def _patch_member(raw: bytes, name: bytes, local: int, central: int, value: bytes) -> bytes:
    """``raw`` with ``value`` written at a field of ``name``'s local and central zip headers."""
    data = bytearray(raw)
    for signature, offset in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(name)] == name:
                data[start + offset : start + offset + len(value)] = value
            start += 4
    return bytes(data)


def test_npz_member_lying_about_its_size(tmp_path: Path) -> None:
    # A deflated member that inflates to 64 KB but whose zip headers say 200 bytes: the reader
    # never inflates beyond what was declared (here it stops there and finds the CRC wrong).
    path = tmp_path / "lie.npz"
    np.savez_compressed(path, x=np.zeros((256, 1, 8, 8), np.float32), y=np.zeros(256, np.int64))
    small = struct.pack("<I", 200)
    path.write_bytes(_patch_member(path.read_bytes(), b"x.npy", 22, 24, small))
    refused(f"npz:{path}", "lie.npz", "x.npy")


def test_npz_corrupt_deflate_stream(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.npz"
    np.savez_compressed(path, x=np.random.default_rng(0).random((30, 1, 8, 8)), y=np.arange(30))
    raw = bytearray(path.read_bytes())
    raw[60:400] = bytes(b ^ 0x5A for b in raw[60:400])  # inside x.npy's deflate stream
    path.write_bytes(bytes(raw))
    refused(f"npz:{path}", "corrupt.npz", "not a readable .npz file")


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ({"x": npy((3, -1, 8, 8)), "y": Y}, "negative dimension"),
        ({"x": npy((3, 1, 8, 8), "<f4,<f4", b"\0" * 1536), "y": Y}, "not a plain numeric"),
        ({"x": npy((3, 1, 0, 8)), "y": Y}, "need a channel and a pixel"),
        ({"x": npy((3, 1, 8, 8), body=X.tobytes()), "y": npy((3,), "|O")}, "object array"),
        ({"x": npy((1, 5000, 1, 1), body=b"\0" * 20000), "y": npy((1,), "<i8", b"\0" * 8)},
         "limits.MAX_CHANNELS"),
        ({"x": b"not a .npy at all", "y": Y}, "not a .npy array"),
    ],
)  # fmt: skip
def test_npz_headers_checked_before_reading(tmp_path: Path, members: dict, says: str) -> None:
    refused(npz(tmp_path / "d.npz", members), "d.npz", says)


def test_npz_labels_bounded_by_the_class_limit(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=np.array([0, 1, 10**12]))
    refused(f"npz:{path}", "label 1000000000000", "limits.MAX_CLASSES")
    np.savez(path, x=X, y=np.array([0, 1, 2]), num_classes=np.array(10**12))
    refused(f"npz:{path}", "num_classes", "limits.MAX_CLASSES")
    np.savez(path, x=X, y=np.array([0, 1, 2]), num_classes=np.zeros(10**6, np.int64))
    refused(f"npz:{path}", "num_classes must be an integer scalar")


def test_npz_sample_and_pixel_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=np.array([0, 1, 2]))
    monkeypatch.setattr(limits, "MAX_SAMPLES", 2)
    refused(f"npz:{path}", "3 samples", "limits.MAX_SAMPLES")
    monkeypatch.setattr(limits, "MAX_SAMPLES", 10)
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 63)
    refused(f"npz:{path}", "64 pixels", "limits.MAX_IMAGE_PIXELS")
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 64)
    monkeypatch.setattr(limits, "MAX_DATA_BYTES", 767)
    refused(f"npz:{path}", "768 bytes", "limits.MAX_DATA_BYTES")


def test_npz_unsupported_members(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=X, y=np.array([0, 1, 2]))
    raw = path.read_bytes()
    path.write_bytes(_patch_member(raw, b"x.npy", 8, 10, struct.pack("<H", 99)))
    refused(f"npz:{path}", "'x'", "compression method 99")
    path.write_bytes(_patch_member(raw, b"x.npy", 6, 8, struct.pack("<H", 1)))
    refused(f"npz:{path}", "'x'", "encrypted")


def test_npz_plain_layouts_still_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2, 3, 5))
    path = tmp_path / "d.npz"
    np.savez(path, x=np.asfortranarray(x).astype(">f8"), y=np.array([3, 0, 1, 2], ">i4"))
    data = load_data(f"npz:{path}")
    np.testing.assert_allclose(data.x.numpy(), x.astype(np.float32))
    assert data.y.tolist() == [3, 0, 1, 2] and data.num_classes == 4
    np.savez_compressed(path, x=x, y=np.array([3, 0, 1, 2]))  # small members: no ratio limit
    np.testing.assert_allclose(load_data(f"npz:{path}").x.numpy(), x.astype(np.float32))


def test_npz_path_kinds(tmp_path: Path) -> None:
    (tmp_path / "loop.npz").symlink_to("loop.npz")
    refused(f"npz:{tmp_path / 'loop.npz'}", "loop.npz", "symbolic links")
    (tmp_path / "dangling.npz").symlink_to("nowhere.npz")
    refused(f"npz:{tmp_path / 'dangling.npz'}", "dangling.npz")
    refused("npz:/dev/null", "/dev/null", "character device")


def test_limit_option_is_bounded() -> None:
    refused("digits?limit=" + "9" * 5000, "limits.MAX_SAMPLES")
    refused(f"digits?limit={limits.MAX_SAMPLES + 1}", "limits.MAX_SAMPLES")
    assert len(load_data("digits?limit=0007")) == 7


# ---------------------------------------------------------------- CIFAR


def _g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _dtype(code: bytes) -> bytes:
    return _g("numpy", "dtype") + b"(X" + struct.pack("<I", len(code)) + code + b"\x89\x88tR"


def _batch(data: bytes, labels: bytes = b"]") -> bytes:
    """A protocol-2 batch dict: ``data`` and ``labels`` are pickle fragments."""
    return b"\x80\x02}(C\x04data" + data + b"C\x06labels" + labels + b"u."


ZERO_STRIDES = (  # numpy.ndarray((10**6, 3072), uint8, b"\0", 0, (0, 0)): 3 GB from one byte
    _g("numpy", "ndarray") + b"((" + _i(10**6) + _i(3072) + b"t" + _dtype(b"u1")
    + b"C\x01\x00" + _i(0) + b"(" + _i(0) + _i(0) + b"ttR"
)  # fmt: skip
HUGE_EMPTY = (  # numpy's _reconstruct(ndarray, (10**8, 3072), ...): allocates 300 GB
    _g("numpy._core.multiarray", "_reconstruct") + b"(" + _g("numpy", "ndarray")
    + b"(" + _i(10**8) + _i(3072) + b"tC\x01btR"
)  # fmt: skip
EMPTY = (  # _reconstruct(ndarray, (0,), b"b"), as real pickles of arrays start
    _g("numpy._core.multiarray", "_reconstruct") + b"(" + _g("numpy", "ndarray")
    + b"(" + _i(0) + b"tC\x01btR"
)  # fmt: skip


def _state(shape: tuple[int, ...], dtype: bytes, raw: bytes) -> bytes:
    dims = b"".join(_i(d) for d in shape)
    data = b"C" + bytes([len(raw)]) + raw
    return b"(" + _i(1) + b"(" + dims + b"t" + _dtype(dtype) + b"\x89" + data + b"tb"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (_batch(ZERO_STRIDES), "not callable"),
        (_batch(HUGE_EMPTY), "unexpected arguments"),
        (_batch(EMPTY + _state((10**9, 3072), b"u1", b"\0")), "does not match its shape"),
        (_batch(EMPTY + _state((1,), b"O", b"\0")), "objects"),
        (_batch(_g("_codecs", "encode") + b"}(X\x01\x00\x00\x00aK\x01ub"), "BUILD of a function"),
        (b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"\0" * 8, "longer than the file"),
        (b"\x80\x02(" + b"K\x00" * 3000 + b"l.", "limits.MAX_BATCH_OPCODES"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[0], [0, 1]]}, 2),
         "2 integers"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [2**70, 0]}, 2),
         "2 integers"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": b"\0\1"}, 2),
         "2 integers"),
        (pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}, 2),
         "limits.MAX_SAMPLES"),
    ],
    ids=["zero-strides", "huge-reconstruct", "short-state", "object-state", "build-function",
         "bytearray8-2TiB", "opcode-flood", "ragged-labels", "huge-int-label", "bytes-labels",
         "too-many-images"],
)  # fmt: skip
def test_forged_cifar_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, says: str
) -> None:
    monkeypatch.setattr(limits, "MAX_BATCH_OPCODES", 2000)
    monkeypatch.setattr(limits, "MAX_SAMPLES", 2)
    (tmp_path / "test_batch").write_bytes(content)
    refused(f"cifar10:{tmp_path}", "test_batch", says)


def test_cifar_batch_size_limit_and_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, 5))
    assert load_data(f"cifar10:{tmp_path}").y.tolist() == [0, 1]  # protocol 5 (framed) loads
    monkeypatch.setattr(limits, "MAX_BATCH_BYTES", 1000)
    refused(f"cifar10:{tmp_path}", "test_batch", "limits.MAX_BATCH_BYTES")
    (tmp_path / "test_batch").unlink()
    (tmp_path / "test_batch").symlink_to("test_batch")
    refused(f"cifar10:{tmp_path}", "test_batch", "symbolic links")
    (tmp_path / "test_batch").unlink()
    (tmp_path / "test_batch").symlink_to("/dev/null")
    refused(f"cifar10:{tmp_path}", "test_batch", "character device")


# ---------------------------------------------------------------- folder


def png_header(width: int, height: int) -> bytes:
    """A 1-bit PNG declaring ``width`` x ``height`` with a tiny IDAT: a bomb if decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))  # fmt: skip


def image_folder(root: Path, classes: int = 2) -> Path:
    from PIL import Image

    for index in range(classes):
        (root / f"c{index}").mkdir(parents=True)
        Image.new("L", (8, 8), 10 * index).save(root / f"c{index}" / "1.png")
    return root


@pytest.mark.parametrize(("size", "says"), [((30000, 30000), "more pixels than Pillow opens"),
                                            ((5000, 5000), "5000 x 5000 pixels")])  # fmt: skip
def test_folder_decompression_bomb(tmp_path: Path, size: tuple[int, int], says: str) -> None:
    root = image_folder(tmp_path / "d")
    (root / "c1" / "bomb.png").write_bytes(png_header(*size))
    refused(f"folder:{root}", "bomb.png", says, "limits.MAX_IMAGE_PIXELS")


def test_folder_image_without_pixels(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "d")
    (root / "c1" / "empty.png").write_bytes(png_header(0, 8))
    refused(f"folder:{root}", "empty.png")


def test_folder_symlink_loops_and_links(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "d")
    (root / "loop").symlink_to("loop")  # a top-level entry that loops: used to be skipped
    refused(f"folder:{root}", "loop", "symbolic links")
    (root / "loop").unlink()
    (root / "c1" / "up").symlink_to("..")  # a class folder linking to its parent
    refused(f"folder:{root}", "up", "nested folders")
    (root / "c1" / "up").unlink()
    (root / "c1" / "self.png").symlink_to("self.png")
    refused(f"folder:{root}", "self.png", "symbolic links")
    (root / "c1" / "self.png").unlink()
    (root / "c1" / "gone.png").symlink_to("nowhere.png")
    refused(f"folder:{root}", "gone.png")
    (root / "c1" / "gone.png").unlink()
    (root / "c1" / "zero.png").symlink_to("/dev/zero")
    refused(f"folder:{root}", "zero.png", "character device")
    (root / "c1" / "zero.png").unlink()
    os.mkfifo(root / "pipe")  # a top-level FIFO (never opened) is refused too
    refused(f"folder:{root}", "pipe", "FIFO")
    (root / "pipe").unlink()
    (root / "link").symlink_to(root / "c0")  # an ordinary link to a class folder is followed
    assert load_data(f"folder:{root}").preprocessing["classes"] == ["c0", "c1", "link"]


def test_folder_counts_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = image_folder(tmp_path / "d", classes=3)
    for index in range(3, 8):
        (root / f"empty{index}").mkdir()
    monkeypatch.setattr(limits, "MAX_CLASSES", 4)
    refused(f"folder:{root}", "more than 4 class folders", "limits.MAX_CLASSES")
    monkeypatch.setattr(limits, "MAX_CLASSES", 100)
    root = image_folder(tmp_path / "e", classes=3)
    monkeypatch.setattr(limits, "MAX_SAMPLES", 2)
    refused(f"folder:{root}", "more than 2 images", "limits.MAX_SAMPLES")
    monkeypatch.setattr(limits, "MAX_SAMPLES", 10)
    monkeypatch.setattr(limits, "MAX_DATA_BYTES", 3 * 64 * 4 - 1)
    refused(f"folder:{root}", "limits.MAX_DATA_BYTES")


def test_folder_refuses_formats_that_run_programs(tmp_path: Path) -> None:
    from PIL import Image

    root = image_folder(tmp_path / "d")
    eps = root / "c1" / "page.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with Image.open(eps) as img:  # Pillow alone would take it, and decode it with Ghostscript
        assert img.format == "EPS"
    refused(f"folder:{root}", "page.eps", "cannot identify image file")


# ---------------------------------------------------------------- generated tasks


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("maze:size=100000", "[2, 256]"),
        ("maze:size=5,count=1000000000", "count must lie in"),
        ("maze:size=256,count=1000", "limits.MAX_DATA_BYTES"),
        ("prefix-sums:length=65536,count=100000", "limits.MAX_DATA_BYTES"),
        ("maze:size=3,seed=" + "9" * 5000, "must be an integer"),
    ],
)
def test_task_specs_are_bounded(spec: str, says: str) -> None:
    kind, _, options = spec.partition(":")
    with pytest.raises(DataError, match=r".*") as info:
        parse_task_spec(kind, options)
    assert says in str(info.value) and len(str(info.value)) < 300


def test_prefix_sum_targets_are_the_running_parity() -> None:
    data = load_data("prefix-sums:length=40,count=30,seed=2", "train")
    bits = data.x.numpy().reshape(30, 40).astype(np.int64)
    assert data.y.numpy().reshape(30, 40).tolist() == (np.cumsum(bits, axis=1) % 2).tolist()


# ---------------------------------------------------------------- through the CLI


def _one_error_line(run, *fragments: str) -> None:
    assert run.code == 2, (run.code, run.err)
    assert run.err.startswith("Error: ") and run.err.count("\n") == 1, run.err
    for fragment in fragments:
        assert fragment in run.err, (fragment, run.err)


def test_cli_commands_refuse_hostile_data(ssc, tmp_path: Path) -> None:
    huge = npz(tmp_path / "huge.npz", {"x": npy((10**6, 1, 8, 8)), "y": Y})
    loop = image_folder(tmp_path / "loop")
    (loop / "loop").symlink_to("loop")
    out = tmp_path / "out.pt"
    _one_error_line(ssc("eval", str(ALIGNED), "--data", huge), "huge.npz", "holds")
    _one_error_line(ssc("eval", str(ALIGNED), "--data", f"folder:{loop}"), "symbolic links")
    folded = tmp_path / "out.safetensors"
    _one_error_line(ssc("fold", str(ALIGNED), "-o", str(folded), "--data", huge), "huge.npz")
    _one_error_line(ssc("train", "--data", f"folder:{loop}", "-o", str(out), "--epochs", "1"),
                    "symbolic links")  # fmt: skip
    assert not out.exists() and not folded.exists()


# ---------------------------------------------------------------- what used to hang

HANG_SCRIPT = """
import sys
from soft_share_cli.data.loaders import load_data
from soft_share_cli.errors import DataError
for spec, split in [a.split("|") for a in sys.argv[1:]]:
    try:
        load_data(spec, split)
        print("LOADED", spec)
    except DataError as exc:
        print("REFUSED", exc)
    sys.stdout.flush()
"""


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def test_fifos_and_devices_never_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    (tmp_path / "link.npz").symlink_to(fifo)
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    os.mkfifo(cifar / "test_batch")
    os.mkfifo(cifar / "data_batch_1")
    folder = image_folder(tmp_path / "folder")
    os.mkfifo(folder / "c1" / "2.png")
    cases = {
        f"npz:{fifo}|test": "FIFO",
        f"npz:{tmp_path / 'link.npz'}|test": "FIFO",
        "npz:/dev/zero|test": "character device",
        f"cifar10:{cifar}|test": "FIFO",
        f"cifar10:{cifar}|train": "FIFO",
        f"folder:{folder}|test": "FIFO",
    }
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HANG_SCRIPT), *cases],
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=_cap_memory,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert len(lines) == len(cases), run.stdout
    for line, says in zip(lines, cases.values(), strict=True):
        assert line.startswith("REFUSED") and says in line, line
