"""Fuzzing: mutated sample checkpoints either load or fail with a documented error, never worse.

Bytes of the committed samples (zip and legacy formats) are flipped, overwritten, deleted,
inserted and cut, with most edits aimed at the structure (the pickle, zip headers and central
directory, legacy headers) rather than at tensor data, where any bytes are valid. Zip samples are
also rebuilt around a mutated data.pkl with correct CRCs, so the mutation reaches the pickle
scanner and torch's unpickler instead of stopping at a checksum. Each file goes through
``ssc info`` (torch's loader) and ``ssc analyze`` (the analysis path): exit 0, 2 or 3 with at most
one ``Error:`` line; an exit 4 (internal error) or an escaped exception fails the test, and
hypothesis shrinks it to a minimal mutation.

Bounded for CI and derandomized (the same examples every run). ``SSC_FUZZ_EXAMPLES=5000``
explores fresh random examples instead.
"""

from __future__ import annotations

import io
import os
import pickletools
import tempfile
import zipfile
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
NAMES = sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".pt", ".tar"))
EXPLORE = int(os.environ.get("SSC_FUZZ_EXAMPLES", "0"))


@cache
def sample(name: str) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """The sample's bytes and the byte ranges that hold structure rather than tensor data."""
    data = (SAMPLES / name).read_bytes()
    regions = [(0, min(len(data), 4096)), (max(0, len(data) - 4096), len(data))]
    if data.startswith(b"PK"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                regions.append((info.header_offset, info.header_offset + 64))  # local header
                if info.filename.endswith("data.pkl"):
                    start = info.header_offset + 30 + len(info.filename.encode()) + 64
                    regions.append((info.header_offset, min(len(data), start + info.file_size)))
    else:
        stream = io.BytesIO(data)
        for _ in range(5):  # the five pickles before the raw storages
            for _op in pickletools.genops(stream):
                pass
        regions.append((0, stream.tell() + 64))  # plus the first storage's size header
    return data, tuple(regions)


@cache
def data_pkl(name: str) -> bytes:
    with zipfile.ZipFile(SAMPLES / name) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))


def rezip(name: str, pkl: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(SAMPLES / name) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            content = pkl if info.filename.endswith("data.pkl") else old.read(info)
            new.writestr(info.filename, content)
    return out.getvalue()


KINDS = ("flip", "byte", "delete", "insert", "zeros", "cut")
#: One edit: (kind, region index, position in the region as a fraction, a small argument).
Edit = tuple[str, int, float, int]


def mutate(data: bytes, regions: tuple[tuple[int, int], ...], edits: list[Edit]) -> bytes:
    """Apply ``edits`` in order; region 0 is the whole file (as it is at that point)."""
    buf = bytearray(data)
    for kind, region, where, arg in edits:
        if not buf:
            break
        start, end = ((0, len(buf)), *regions)[region % (len(regions) + 1)]
        end = min(end, len(buf))
        if start >= end:
            start, end = 0, len(buf)
        pos = start + min(int(where * (end - start)), end - start - 1)
        if kind == "flip":
            buf[pos] ^= 1 << (arg % 8)
        elif kind == "byte":
            buf[pos] = arg % 256
        elif kind == "delete":
            del buf[pos : pos + 1 + arg % 16]
        elif kind == "insert":
            buf[pos:pos] = bytes([arg % 256]) * (1 + arg % 7)
        elif kind == "zeros":
            size = 1 + arg % 64
            buf[pos : pos + size] = bytes(len(buf[pos : pos + size]))
        else:
            del buf[pos:]
    return bytes(buf)


EDITS = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 1000),
        st.floats(0.0, 1.0, allow_nan=False),
        st.integers(0, 1 << 16),
    ),
    min_size=1,
    max_size=6,
)


def build(name: str, in_pickle: bool, edits: list[Edit]) -> bytes:
    """The mutant: the file's bytes edited, or (zip) the file rebuilt around an edited data.pkl."""
    data, regions = sample(name)
    if in_pickle and data.startswith(b"PK"):
        return rezip(name, mutate(data_pkl(name), (), edits))
    return mutate(data, regions, edits)


FUZZ = settings(
    max_examples=EXPLORE or 150,
    deadline=timedelta(seconds=5),
    derandomize=not EXPLORE,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def scratch() -> Any:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


@FUZZ
@given(
    name=st.sampled_from(NAMES),
    in_pickle=st.booleans(),
    edits=EDITS,
    suffix=st.sampled_from([".pt", ".pth.tar"]),
)
def test_mutated_checkpoints_load_or_fail_cleanly(
    ssc, scratch: Path, name: str, in_pickle: bool, edits: list[Edit], suffix: str
) -> None:
    label = f"{name} {'data.pkl ' if in_pickle else ''}{edits}"
    path = scratch / f"mutant{suffix}"
    path.write_bytes(build(name, in_pickle, edits))
    for command in (("info", str(path), "--json"), ("analyze", str(path), "--json")):
        run = ssc(*command)
        assert run.code in (0, 2, 3), f"{label}, {command[0]}: exit {run.code}: {run.err}"
        if run.code:
            assert run.err.startswith("Error: ") and run.err.count("\n") == 1, run.err
            assert run.out == "", run.out[:200]
        else:
            run.json()  # a success prints one well-formed JSON object


def test_the_fuzzer_reaches_past_the_checksums(ssc, scratch: Path) -> None:
    """A mutated pickle in a re-zipped file reaches the scanner and torch, which decide."""
    name = "swrn28-1-4_digits_align.pt"
    pkl = data_pkl(name)
    path = scratch / "renamed.pt"
    # Same length, another global: the scan must catch it, not a CRC check.
    path.write_bytes(
        rezip(name, pkl.replace(b"collections\nOrderedDict", b"collections\nCounter____"))
    )
    run = ssc("info", str(path))
    assert run.code == 3 and "collections.Counter____" in run.err
