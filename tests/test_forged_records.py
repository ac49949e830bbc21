"""Issue 11, section 3: forged safetensors headers, forged legacy storage records, storage counts.

* every forgery of a safetensors header (offsets past the file, negative, reversed, overlapping,
  shapes whose product overflows or is negative, unknown dtypes with escape sequences, a forged
  header length, duplicate keys, deeply nested metadata) is exit 2 with one escaped line, through
  ``info``, ``analyze`` and ``fold``;
* a legacy file whose storage record declares more elements than it stores, or whose tensor
  record reaches past its storage, is refused *by ssc's own bounds check* with a line naming the
  record, also where torch's loader does the loading (``fold``), instead of an allocator message;
* a file referencing more tensor storages than ``limits.MAX_KEYS`` is refused by the pickle scan
  (legacy) or by its zip member count, before anything is unpickled.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from soft_share_cli.checkpoints import scan as _pickle_scan
from soft_share_cli.errors import CheckpointError

F32_6 = {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}
ESC = "\x1b"


def _safetensors(path: Path, header: dict | bytes, *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + bytes(24))
    return path


def _one_line(run) -> str:
    assert run.code == 2, (run.code, run.out, run.err)
    assert run.err.startswith("Error: ") and run.err.strip().count("\n") == 0, run.err
    assert ESC not in run.err and ESC not in run.out, run.err
    return str(run.err)


FORGED_HEADERS: dict[str, tuple[dict | bytes, int | None]] = {
    "offset_past_file": ({"w": {**F32_6, "data_offsets": [0, 2**40]}}, None),
    "offset_negative": ({"w": {**F32_6, "data_offsets": [-8, 16]}}, None),
    "offset_reversed": ({"w": {**F32_6, "data_offsets": [24, 0]}}, None),
    "offset_gap": ({"w": {**F32_6, "shape": [2], "data_offsets": [16, 24]}}, None),
    "overlapping": ({"w": F32_6, "v": F32_6}, None),
    "shape_overflow": ({"w": {**F32_6, "shape": [2**32, 2**32, 4]}}, None),
    "shape_negative": ({"w": {**F32_6, "shape": [-6]}}, None),
    "shape_zero_huge": ({"w": {**F32_6, "shape": [0, 2**62], "data_offsets": [0, 0]}}, None),
    "dtype_escape": ({"w": {**F32_6, "dtype": "F33\x1b[2J\x1b]0;pwned\x07"}}, None),
    "header_length_huge": ({"w": F32_6}, 2**63),
    "header_length_past_file": ({"w": F32_6}, 10**8),
    "duplicate_key": (
        b'{"w": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}, '
        b'"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}',
        None,
    ),
    "nested_metadata": (
        b'{"__metadata__": ' + b"[" * 50_000 + b"]" * 50_000
        + b', "w": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}',
        None,
    ),  # fmt: skip
    "ssc_metadata_escape": ({"__metadata__": {"ssc": "\x1b]0;pwned\x07"}, "w": F32_6}, None),
}


@pytest.mark.parametrize("case", sorted(FORGED_HEADERS))
@pytest.mark.parametrize("command", ["info", "analyze", "fold"])
def test_forged_safetensors_header_is_one_line(ssc, tmp_path, case, command):
    header, length = FORGED_HEADERS[case]
    path = _safetensors(tmp_path / f"{case}.safetensors", header, length=length)
    extra = ["-o", str(tmp_path / "out.safetensors")] if command == "fold" else []
    err = _one_line(ssc(command, str(path), *extra))
    assert "safetensors" in err or "metadata" in err, err
    assert not (tmp_path / "out.safetensors").exists()


def _legacy(path: Path) -> bytes:
    torch.save({"a.weight": torch.arange(6.0)}, path, _use_new_zipfile_serialization=False)
    return path.read_bytes()


def _forge(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) == 1, old
    return raw.replace(old, new)


@pytest.fixture
def legacy_forgeries(tmp_path) -> dict[str, tuple[Path, str]]:
    raw = _legacy(tmp_path / "plain.pt")
    # The storage record ('storage', type, key, 'cpu', numel) ends in ...'cpu' q<memo> K\x06 N t;
    # the tensor record that follows is (storage, offset 0, size (6,), stride (1,)).
    at = raw.index(b"cpuq")
    numel = at + 5  # after 'cpu' and its BINPUT
    assert raw[numel : numel + 2] == b"K\x06"
    cases = {
        "numel_int32": (raw[:numel] + b"J\xff\xff\xff\x7f" + raw[numel + 2 :], "record says"),
        "numel_2_32": (raw[:numel] + b"\x8a\x05\x00\x00\x00\x00\x01" + raw[numel + 2 :],
                       "record says"),
        "size_past_storage": (_forge(raw, b"QK\x00K\x06\x85", b"QK\x00J\xff\xff\xff\x7f\x85"),
                              "outside its storage"),
        "offset_past_storage": (_forge(raw, b"QK\x00K\x06\x85", b"QK\x05K\x06\x85"),
                                "outside its storage"),
    }  # fmt: skip
    out = {}
    for name, (data, expected) in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        out[name] = (path, expected)
    return out


@pytest.mark.parametrize("command", ["info", "analyze", "fold", "eval"])
def test_forged_legacy_records_are_named_by_ssc(ssc, tmp_path, legacy_forgeries, command):
    for name, (path, expected) in legacy_forgeries.items():
        extra = {
            "fold": ["-o", str(tmp_path / "out.safetensors")],
            "eval": ["--data", "digits?limit=10"],
        }.get(command, [])
        err = _one_line(ssc(command, str(path), *extra))
        assert expected in err, (name, err)  # ssc's own check, not torch's allocator
        assert "%ld" not in err
    assert not (tmp_path / "out.safetensors").exists()


def test_storage_count_beyond_limit_refused_by_the_scan(tmp_path, monkeypatch):
    monkeypatch.setattr(_pickle_scan, "MAX_KEYS", 5)
    state = {f"layer{i}.weight": torch.zeros(1) for i in range(6)}
    legacy, zipped = tmp_path / "legacy.pt", tmp_path / "zip.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    torch.save(state, zipped)
    with pytest.raises(CheckpointError, match=r"storages more than 5 times.*MAX_KEYS"):
        _pickle_scan.scan_legacy(legacy)
    # The zip check reads only the central directory: 6 storages + overhead is within 5 + 16,
    # so the pickle's storage references are what refuses it here.
    with pytest.raises(CheckpointError, match=r"storages more than 5 times.*MAX_KEYS"):
        _pickle_scan.scan_zip(zipped)
    # Views of ONE storage count once each (the outsider's 200k-key file had a single storage).
    base = torch.zeros(6)
    torch.save({f"k{i}": base[i : i + 1] for i in range(6)}, zipped)
    with pytest.raises(CheckpointError, match=r"storages more than 5 times.*MAX_KEYS"):
        _pickle_scan.scan_zip(zipped)
    five = {f"layer{i}.weight": torch.zeros(1) for i in range(5)}
    torch.save(five, legacy, _use_new_zipfile_serialization=False)
    torch.save(five, zipped)
    assert _pickle_scan.scan_legacy(legacy) and _pickle_scan.scan_zip(zipped)


def test_zip_member_count_beyond_limit_refused_before_scanning(tmp_path, monkeypatch):
    monkeypatch.setattr(_pickle_scan, "MAX_KEYS", 5)
    path = tmp_path / "many.pt"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(40)}, path)
    scanned = []
    monkeypatch.setattr(_pickle_scan, "scan_pickle", lambda stream: scanned.append(stream))
    with pytest.raises(CheckpointError, match=r"zip members.*at most 5 tensors"):
        _pickle_scan.scan_zip(path)
    assert not scanned


_MEASURED = r"""
import atexit, re, sys
from pathlib import Path
from soft_share_cli.cli import main
out = sys.argv.pop(1)
# VmHWM is this process's own peak (ru_maxrss would carry the forking parent's over exec).
atexit.register(lambda: Path(out).write_text(
    re.search(r"VmHWM:\s*(\d+)", Path("/proc/self/status").read_text()).group(1)))
sys.argv[0] = "ssc"
main()
"""


def _refused_in_subprocess(path: Path, *args: str) -> tuple[str, float]:
    """Run ``ssc analyze path`` in a child; its one-line error and its own peak RSS in MB."""
    import subprocess
    import sys

    rss = path.with_name("rss.txt")
    run = subprocess.run(
        [sys.executable, "-c", _MEASURED, str(rss), "analyze", str(path), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert run.stderr.startswith("Error: ") and run.stderr.strip().count("\n") == 0, run.stderr
    return run.stderr, int(rss.read_text()) / 1024


def test_a_5000_layer_bank_is_refused_within_bounds(tmp_path):
    """The LSM is quadratic in a bank's layers: 5,000 of them are refused before it is built."""
    bank = torch.randn(2, 4, 4, 3, 3)
    state = {"bank.templates": bank}
    for i in range(5000):
        state[f"layer{i}.bank.templates"] = bank
        state[f"layer{i}.coefficients"] = torch.randn(2, 1, 1, 1, 1)
    path = tmp_path / "layers.pt"
    torch.save(state, path)
    err, peak_mb = _refused_in_subprocess(path)
    assert "MAX_LAYERS_PER_BANK" in err, err
    assert peak_mb < 600, peak_mb  # ~50 MB measured; torch's import alone is most of it


def test_20000_banks_are_refused_within_bounds(tmp_path):
    state = {}
    for i in range(20_000):
        state[f"b{i}.templates"] = torch.randn(1, 1, 1, 1, 1)
        state[f"b{i}.c.coefficients"] = torch.randn(1, 1, 1, 1, 1)
    path = tmp_path / "banks.pt"
    torch.save(state, path)
    err, peak_mb = _refused_in_subprocess(path)
    assert "MAX_BANKS" in err, err
    assert peak_mb < 600, peak_mb
