"""Memory safety of reading checkpoints: forged tensor and numpy records are exit 2, not a signal.

The torch-free reader (``ssc info``, ``ssc analyze``) turns tensors into views of the mapped file,
and numpy's reconstructors trust their pickled state, so a record pointing outside what the file
holds used to kill the process (SIGSEGV/SIGBUS). Every file here is assembled opcode by opcode
(``tests/corpus/memory_cases.py``) and run in forked children of one helper process, so a crash
is an observed death by signal, not a dead test run: through ``ssc info``, ``ssc analyze`` and
torch's loader (``load_checkpoint`` without ``arrays``, as ``eval``/``fold``/``surgery`` read).

* named regression cases: each crashed, or was left to torch, before the reader's checks;
* a structure-aware hypothesis fuzz of the tensor records (offsets, sizes, strides, storage
  classes, element counts, legacy views and stored counts, zip member sizes, numpy records).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "corpus"))
import memory_cases as mc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(mc.__file__)
COMMANDS = ("info", "analyze", mc.TORCH_LOAD)
TIMEOUT = 20.0

with tempfile.TemporaryDirectory() as _names:
    CASE_NAMES = sorted(mc.regression_cases(Path(_names)))

# What `ssc info` (the torch-free reader) must now say about each regression case: the record
# is named and the file is never left to torch. Cases not listed are left to torch's loader
# (a truncated file, one storage read as two dtypes, numbers numpy cannot hold), which answers
# with its own one line.
SAYS = {
    "offset-past-storage": "tensor record 1 points outside its storage",
    "offset-huge": "tensor record 1 points outside its storage",
    "offset-just-past": "tensor record 1 points outside its storage",
    "size-past-storage": "tensor record 1 points outside its storage",
    "size-2d-past": "tensor record 1 points outside its storage",
    "stride-huge": "tensor record 1 points outside its storage",
    "stride-past": "tensor record 1 points outside its storage",
    "stride-int64-overflow": "tensor record 1 points outside its storage",
    "extent-int64-overflow": "tensor record 1 points outside its storage",
    "v1-stride-past": "tensor record 1 points outside its storage",
    "stride-zero-size-huge": "tensor record 1 has",
    "stride-negative": "negative offset, size or stride",
    "size-negative": "negative offset, size or stride",
    "ndim-enormous": "100 dimensions (at most 64)",
    "zip-count-huge": "but its zip member holds",
    "zip-count-overflow": "but its zip member holds",
    "member-size-short": "but its zip member holds 2 bytes",
    "member-local-offset-past": "past the file",
    "member-extra-past": "of a",
    "legacy-stored-count-huge": "is stored with 1099511627776 elements",
    "legacy-view-past": "lies outside it",
    "legacy-view-huge": "lies outside it",
    "np-": "numpy",
}


def _expected(name: str) -> str | None:
    return next((says for key, says in SAYS.items() if key in name), None)


class Children:
    """One helper process that runs each job in a forked child and reports how it ended."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None and self.process.stdout.readline() == "ready\n"

    def run(self, jobs: list[list[str]]) -> list[dict[str, Any]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"jobs": jobs, "timeout": TIMEOUT}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def children() -> Iterator[Children]:
    helper = Children()
    yield helper
    helper.close()


@pytest.fixture(scope="module")
def regression(
    children: Children, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], dict[str, Any]]:
    cases = mc.regression_cases(tmp_path_factory.mktemp("memory"))
    jobs = [[command, str(path)] for path in cases.values() for command in COMMANDS]
    results = children.run(jobs)
    by_path = {str(path): name for name, path in cases.items()}
    return {(r["args"][0], by_path[r["args"][1]]): r for r in results}


def assert_clean(result: dict[str, Any]) -> None:
    """Exit 0, 2 or 3, never a signal, a hang or exit 4; one ``Error:`` line when not 0."""
    status, err = result["status"], result["err"]
    where = f"{result['args']}: {status} {err[-400:]!r}"
    assert status in (0, 2, 3), where
    lines = err.strip().splitlines()
    if status:
        assert len(lines) == 1 and lines[0].startswith("Error: "), where


@pytest.mark.parametrize("name", CASE_NAMES)
def test_regression_case_ends_with_one_line(
    name: str, regression: dict[tuple[str, str], dict[str, Any]]
) -> None:
    for command in COMMANDS:
        assert_clean(regression[(command, name)])
    info = regression[("info", name)]
    says = _expected(name)
    if says is not None:  # the torch-free reader names the record; torch never sees the file
        assert info["status"] == 2, info
        assert says in info["err"], info["err"]
    if "np-" in name:  # torch's loader checks numpy's records the same way
        assert regression[(mc.TORCH_LOAD, name)]["status"] == 2
        assert "numpy" in regression[(mc.TORCH_LOAD, name)]["err"]
    # analyze: these files hold no template bank, so it can only ever fail, with one line
    assert regression[("analyze", name)]["status"] == 2


def test_regression_cases_cover_every_class() -> None:
    both = ("offset", "size", "stride", "ndim", "count", "storage-is-numpy", "tensor-build",
            "np-object", "np-dtype", "np-shape", "np-scalar", "np-recorder")  # fmt: skip
    for fragment in both:
        for fmt in ("zip-", "legacy-"):
            assert any(n.startswith(fmt) and fragment in n for n in CASE_NAMES), (fmt, fragment)
    for name in ("zip-member-size-short", "zip-member-local-offset-past", "zip-member-extra-past",
                 "legacy-truncated", "legacy-view-past", "legacy-stored-count-huge",
                 "legacy-first-pass-iterate"):  # fmt: skip
        assert name in CASE_NAMES


# --- in-process: what the reader builds for files it accepts --------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_valid_records_still_read_exactly(tmp_path: Path, legacy: bool) -> None:
    from soft_share_cli.checkpoints.arrays import StoredArray
    from soft_share_cli.checkpoints.load import load_checkpoint

    records = {
        "w": mc.Tensor(offset=2, size=(2, 3), stride=(3, 1), count=8),
        "t": mc.Tensor(offset=0, size=(3, 2), stride=(1, 3), count=8),
        "one": mc.Tensor(offset=7, size=(1, 1), stride=(1 << 40, 5), count=8),
        "empty": mc.Tensor(offset=8, size=(0, 4), stride=(1 << 50, 1), count=8),
        "b": mc.Tensor(size=(2,), stride=(1,), key="1", count=2, storage="LongStorage"),
    }
    extra = {
        "epoch": mc.integer(3),
        "arch": mc.text("swrn"),
        "history": mc.ndarray((2, 2), mc.dtype("f4"), np.arange(4, dtype="<f4").tobytes()),
        "names": mc.ndarray((2,), mc.dtype("O8"), items=2),
        "best": mc.scalar(mc.dtype("f8"), np.float64(0.5).tobytes()),
        "when": mc.scalar(
            mc.dtype("M8", mc.tup(
                mc.integer(4), mc.text("<"), mc.NONE, mc.NONE, mc.NONE, mc.integer(-1),
                mc.integer(-1), mc.integer(0),
                mc.tup(mc.NONE, mc.tup(mc.raw_bytes(b"s"), mc.integer(1), mc.integer(1),
                                       mc.integer(1))),
            )),
            np.int64(7).tobytes(),
        ),  # fmt: skip
    }
    ckpt = mc.state(records, legacy=legacy, extra=extra)
    writer = mc.legacy_checkpoint if legacy else mc.zip_checkpoint
    path = writer(tmp_path / "valid.pt", ckpt)
    mapped, torched = load_checkpoint(path, arrays=True), load_checkpoint(path)
    for key, tensor in torched.state_dict.items():
        array = mapped.state_dict[key]
        assert isinstance(array, StoredArray) and not array.flags.writeable
        np.testing.assert_array_equal(array, tensor.numpy())
    for loaded in (mapped, torched):
        history = loaded.extras["history"]
        assert isinstance(history, np.ndarray) and history.dtype == np.float32
        np.testing.assert_array_equal(history, np.arange(4, dtype=np.float32).reshape(2, 2))
        assert loaded.extras["names"].tolist() == [None, None]
        assert loaded.extras["best"] == 0.5
        assert loaded.extras["when"] == np.datetime64(7, "s")


def test_a_mapping_is_checked_against_the_file_size_when_mapped(tmp_path: Path) -> None:
    # A storage is proven inside the mapping, whose length is the file's size at map time, so a
    # member that claims more than the file holds is an error, not a SIGBUS on first touch.
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.errors import CheckpointError

    ckpt = mc.state({"w": mc.Tensor(size=(4,), count=4)}, legacy=False)
    path = mc.zip_checkpoint(
        tmp_path / "long.pt", ckpt, patch=mc.member_patch("archive/data/0", size=1 << 30)
    )
    with pytest.raises(CheckpointError, match="zip member|claims"):
        load_checkpoint(path, arrays=True)


# --- the fuzz -------------------------------------------------------------------------------------

STORAGES = ("FloatStorage", "DoubleStorage", "HalfStorage", "LongStorage", "ByteStorage",
            "BoolStorage", "BFloat16Storage", "QInt8Storage")  # fmt: skip
small = st.integers(0, 20)
edgy = st.sampled_from([-1, -(1 << 40), 1 << 31, 1 << 32, 1 << 40, 1 << 62, (1 << 63) - 1, 1 << 64])
number = st.one_of(small, small, small, edgy)


@st.composite
def tensors(draw: st.DrawFn, legacy: bool) -> mc.Tensor:
    ndim = draw(st.integers(0, 4))
    size = tuple(draw(st.lists(number, min_size=ndim, max_size=ndim)))
    stride_len = ndim if draw(st.integers(0, 9)) else draw(st.integers(0, 5))
    stride = tuple(draw(st.lists(number, min_size=stride_len, max_size=stride_len)))
    view = None
    if legacy and draw(st.integers(0, 5)) == 0:
        view = ("v" + draw(st.sampled_from("ab")), draw(number), draw(number))
    return mc.Tensor(
        offset=draw(number),
        size=size,
        stride=stride,
        key=draw(st.sampled_from("012")),
        storage=draw(st.sampled_from(STORAGES)),
        count=draw(st.one_of(st.integers(0, 64), edgy)),
        view=view,
        v1=draw(st.booleans()),
    )


def numpy_records() -> st.SearchStrategy[bytes]:
    spec = st.sampled_from(["f4", "f8", "i8", "O8", "V8", "U2", "M8", "b1"])
    order = st.sampled_from(["<", ">", "|", "="])
    field = st.one_of(st.just(mc.NONE), number.map(mc.integer))
    dtype_state = st.builds(
        lambda o, a, b, c, d: mc.tup(mc.integer(3), mc.text(o), mc.NONE, mc.NONE, mc.NONE,
                                     mc.integer(a), mc.integer(b), mc.integer(c), *d),  # fmt: skip
        order, st.sampled_from([-1, 0, 1, 8, 1 << 31]), st.sampled_from([-1, 0, 1, 16]),
        st.sampled_from([0, 1, 4, 63]), st.lists(field, max_size=1),
    )
    dtypes = st.builds(mc.dtype, spec, st.one_of(st.none(), dtype_state))
    shape = st.lists(st.one_of(st.integers(0, 4), edgy), max_size=3)
    return st.one_of(
        st.builds(lambda s, d, n: mc.ndarray(s, d, bytes(n)), shape, dtypes, st.integers(0, 64)),
        st.builds(lambda s, d, n: mc.ndarray(s, d, items=n), shape, dtypes, st.integers(0, 4)),
        st.builds(lambda d, n: mc.scalar(d, bytes(n)), dtypes, st.integers(0, 16)),
    )


@st.composite
def checkpoints(draw: st.DrawFn) -> tuple[bool, mc.Checkpoint, dict[str, Any]]:
    legacy = draw(st.booleans())
    records = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), tensors(legacy),
                                   min_size=1, max_size=3))  # fmt: skip
    extra: dict[str, bytes] = {}
    if draw(st.integers(0, 2)) == 0:
        extra["np"] = draw(numpy_records())
    storages = {}
    for key in {t.key for t in records.values()}:
        if draw(st.integers(0, 3)) == 0:  # bytes that disagree with the pid's count
            stored = draw(st.one_of(st.none(), st.integers(0, 64), edgy))
            storages[key] = mc.Storage(bytes(draw(st.integers(0, 300))), stored)
    ckpt = mc.state(records, legacy=legacy, extra=extra, storages=storages)
    file_edit: dict[str, Any] = {}
    if legacy:
        file_edit["cut"] = draw(st.sampled_from([0, 0, 0, 1, 9, 100]))
    elif draw(st.integers(0, 3)) == 0:
        key = draw(st.sampled_from(sorted(ckpt.storages)))
        file_edit["patch"] = mc.member_patch(
            f"archive/data/{key}",
            size=draw(st.one_of(st.none(), st.integers(0, 1 << 20))),
            local_offset=draw(st.one_of(st.none(), st.sampled_from([0, 1 << 20, (1 << 32) - 1]))),
            extra=draw(st.one_of(st.none(), st.sampled_from([0, 100, 65535]))),
        )
    return legacy, ckpt, file_edit


@settings(
    max_examples=int(os.environ.get("SSC_MEMORY_EXAMPLES", "30")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],  # fmt: skip
)
@given(case=checkpoints())
def test_fuzz_tensor_records_never_crash(
    case: tuple[bool, mc.Checkpoint, dict[str, Any]], children: Children, tmp_path: Path
) -> None:
    legacy, ckpt, file_edit = case
    target = tmp_path / ("fuzz-legacy.pt" if legacy else "fuzz-zip.pt")
    if legacy:
        mc.legacy_checkpoint(target, ckpt, cut=file_edit.get("cut", 0))
    else:
        mc.zip_checkpoint(target, ckpt, patch=file_edit.get("patch"))
    for result in children.run([[command, str(target)] for command in COMMANDS]):
        assert_clean(result)
