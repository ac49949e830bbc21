"""Issue 11, sections 4 and 5: only regular files are read, and outputs are honest.

* a FIFO, a character device, a socket, a directory or a broken symlink given where a
  checkpoint is read is one line and exit 2 (never a hang);
* an output that is a directory, device, FIFO, socket (or a symlink to one), or a dangling or
  looping symlink, is exit 2 and never replaced; a symlink to a regular file is replaced by the
  new file (the file it pointed to is untouched);
* an output that is an input of the command (same path, symlink, hard link), or another output of
  it, is refused before any work;
* a failed write (file too large for real, through RLIMIT_FSIZE; I/O errors and a full disk
  injected) is exit 2, one line, the previous file byte for byte and no temporary file, for every
  writer;
* atomic_write fsyncs the file before the rename and its directory after it;
* every output gets the umask's mode (safetensors' own 0600 temporary file included).

Hang-prone cases run with a watchdog (FIFOs) or in a subprocess with a timeout (devices).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from soft_share_cli.errors import InputError
from soft_share_cli.files import atomic_write, check_output, check_outputs, write_failure

ROOT = Path(__file__).resolve().parent.parent
ALIGNED = ROOT / "sample_checkpoints" / "swrn28-1-4_digits_align.pt"
TINY_TRAIN = ("--data", "digits?limit=100", "--depth", "16", "--templates", "2", "--epochs", "1")


def one_line_error(run: Any, code: int = 2) -> str:
    assert run.code == code, (run.code, run.err)
    assert run.err.startswith("Error: ") and run.err.strip().count("\n") == 0, run.err
    return str(run.err)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX socket paths are limited to ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ssc-io-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


@pytest.fixture
def fifo_watchdog() -> Iterator[Callable[[Path], None]]:
    """Guard FIFOs: should ssc ever open one to read, a writer opens and closes it after 20 s,
    so the read ends (and the test fails) instead of hanging forever."""
    fifos: list[Path] = []
    stop = threading.Event()

    def release() -> None:
        if stop.wait(20):
            return
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    yield fifos.append
    stop.set()
    thread.join()


def non_regular_inputs(d: Path, guard: Callable[[Path], None]) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error must say), all inside ``d``."""
    os.mkfifo(d / "fifo")
    guard(d / "fifo")
    (d / "dir").mkdir()
    (d / "to-fifo").symlink_to(d / "fifo")
    (d / "dangling").symlink_to(d / "missing")
    (d / "loop").symlink_to(d / "loop")
    return {
        "fifo": (d / "fifo", "FIFO"),
        "directory": (d / "dir", "a directory"),
        "symlink-to-fifo": (d / "to-fifo", "FIFO"),
        "dangling-symlink": (d / "dangling", "no such file"),
        "symlink-loop": (d / "loop", "cannot read"),
    }


def reading_commands(ckpt: Path, d: Path) -> dict[str, list[str]]:
    return {
        "info": ["info", str(ckpt)],
        "analyze": ["analyze", str(ckpt)],
        "plot-similarity": ["plot-similarity", str(ckpt), "-o", str(d / "p.png")],
        "fold": ["fold", str(ckpt), "-o", str(d / "f.safetensors")],
        "eval": ["eval", str(ckpt), "--data", "digits"],
    }


# --- 1. only regular files are read --------------------------------------------------------------


def test_every_command_refuses_a_checkpoint_that_is_not_a_regular_file(
    ssc, short_dir: Path, fifo_watchdog: Callable[[Path], None]
) -> None:
    sock = make_socket(short_dir / "sock")
    try:
        cases = non_regular_inputs(short_dir, fifo_watchdog)
        cases["socket"] = (short_dir / "sock", "socket")
        for name, (path, says) in cases.items():
            for command, args in reading_commands(path, short_dir).items():
                err = one_line_error(ssc(*args))
                assert says in err and str(path) in err, (name, command, err)
        assert not (short_dir / "p.png").exists() and not (short_dir / "f.safetensors").exists()
        # A symlink to a regular file is read as the file.
        (short_dir / "ok.pt").symlink_to(ALIGNED)
        assert ssc("info", str(short_dir / "ok.pt")).code == 0
    finally:
        sock.close()


def test_train_resume_refuses_a_partial_state_that_is_not_a_regular_file(
    ssc, short_dir: Path, fifo_watchdog: Callable[[Path], None]
) -> None:
    out = short_dir / "run.pt"
    os.mkfifo(f"{out}.partial")
    fifo_watchdog(Path(f"{out}.partial"))
    err = one_line_error(ssc("train", *TINY_TRAIN, "-o", str(out), "--resume"))
    assert "FIFO" in err and stat.S_ISFIFO(os.lstat(f"{out}.partial").st_mode)


def test_a_graph_file_that_is_not_regular_is_refused(
    short_dir: Path, fifo_watchdog: Callable[[Path], None]
) -> None:
    from soft_share_cli.render.graph_files import load_graph

    os.mkfifo(short_dir / "g.json")
    fifo_watchdog(short_dir / "g.json")
    with pytest.raises(InputError, match="FIFO"):
        load_graph(short_dir / "g.json")
    (short_dir / "d.graphml").mkdir()
    with pytest.raises(InputError, match="a directory"):
        load_graph(short_dir / "d.graphml")


# In a child: every ``cases`` entry (name -> ssc arguments) run, its exit code and stderr kept.
_RUN_CASES = r"""
results = {}
for name, args in cases.items():
    _state["debug"] = False
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    results[name] = [code, err.getvalue()]
"""

DEVICE_SCRIPT = (
    r"""
import contextlib, io, json, sys
from soft_share_cli.cli import _state, main
cases = json.loads(sys.argv[1])
"""
    + _RUN_CASES
    + r"""print(json.dumps(results))
"""
)


def test_character_devices_are_refused_without_reading_them(tmp_path: Path) -> None:
    """/dev/zero never ends and /dev/null is empty: both are one line, exit 2, at once. In a
    subprocess with a timeout, so that a regression fails instead of hanging the suite."""
    cases = {
        f"{command}:{device}": args
        for device in ("/dev/zero", "/dev/null")
        for command, args in reading_commands(Path(device), tmp_path).items()
    }
    done = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, json.dumps(cases)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (code, err) in results.items():
        assert code == 2, (name, err)
        assert err.startswith("Error: ") and err.strip().count("\n") == 0, (name, err)
        assert "a character device, not a regular file" in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- 4. outputs that are not (and cannot become) regular files -----------------------------------


def test_check_output_refuses_real_devices_without_touching_them() -> None:
    """The check alone (never a writer), so that a regression could not replace /dev/null."""
    for device in ("/dev/null", "/dev/zero"):
        before = os.lstat(device)
        with pytest.raises(InputError, match="a character device"):
            check_output(device)
        after = os.lstat(device)
        assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


def non_regular_outputs(d: Path, ext: str) -> dict[str, tuple[Path, str]]:
    """name -> (path without ``ext``, what the refusal says); ``path + ext`` exists and is
    something no output may replace (the socket is bound by the caller)."""
    base = {name: d / f"{name}.x" for name in
            ("fifo", "dir", "null", "dangling", "loop", "to-dir", "sock")}  # fmt: skip
    real = {name: Path(f"{path}{ext}") for name, path in base.items()}
    os.mkfifo(real["fifo"])
    real["dir"].mkdir()
    real["null"].symlink_to("/dev/null")
    real["dangling"].symlink_to(d / "missing")
    real["loop"].symlink_to(real["loop"])
    real["to-dir"].symlink_to(real["dir"])
    return {
        "fifo": (base["fifo"], "a FIFO"),
        "directory": (base["dir"], "a directory"),
        "symlink-to-dev-null": (base["null"], "a symlink to a character device"),
        "dangling-symlink": (base["dangling"], "dangling symlink"),
        "symlink-loop": (base["loop"], "symlink that cannot be followed"),
        "symlink-to-directory": (base["to-dir"], "a symlink to a directory"),
        "socket": (base["sock"], "a socket"),
    }


def writing_commands(d: Path) -> dict[str, Callable[[Path], list[str]]]:
    """command -> (output path without its extension -> argv)."""
    ck = str(ALIGNED)
    return {
        "analyze --graph": lambda o: ["analyze", ck, "--graph", f"{o}.json"],
        "plot-similarity -o": lambda o: ["plot-similarity", ck, "-o", f"{o}.png"],
        "plot-similarity --graph-plot": lambda o: [
            "plot-similarity",
            ck,
            "-o",
            str(d / "fine.png"),
            "--graph-plot",
            f"{o}.svg",
        ],
        "fold -o": lambda o: ["fold", ck, "-o", f"{o}.safetensors"],
        "fold --materialize": lambda o: [
            "fold",
            ck,
            "-o",
            str(d / "fine.safetensors"),
            "--materialize",
            f"{o}.pt",
        ],
        "fold --plot": lambda o: [
            "fold",
            ck,
            "-o",
            str(d / "fine.safetensors"),
            "--plot",
            f"{o}.png",
        ],
        "train -o": lambda o: ["train", *TINY_TRAIN, "-o", f"{o}.pt"],
    }


def _kind(path: Path) -> tuple[int, str | None]:
    info = os.lstat(path)
    return stat.S_IFMT(info.st_mode), os.readlink(path) if stat.S_ISLNK(info.st_mode) else None


EXTENSIONS = {"analyze --graph": ".json", "plot-similarity -o": ".png",
              "plot-similarity --graph-plot": ".svg", "fold -o": ".safetensors",
              "fold --materialize": ".pt", "fold --plot": ".png", "train -o": ".pt"}  # fmt: skip


@pytest.mark.parametrize("command", list(EXTENSIONS))
def test_an_output_that_is_not_a_regular_file_is_refused_and_kept(
    ssc, short_dir: Path, command: str
) -> None:
    d = short_dir
    ext = EXTENSIONS[command]
    kinds = non_regular_outputs(d, ext)
    sock = make_socket(Path(f"{kinds['socket'][0]}{ext}"))
    try:
        build = writing_commands(d)[command]
        for name, (path, says) in kinds.items():
            target = Path(f"{path}{ext}")
            before = _kind(target)
            err = one_line_error(ssc(*build(path)))
            assert says in err and str(target) in err, (name, err)
            assert _kind(target) == before, name  # never replaced
        left = {p.name for p in d.iterdir()}
        assert not {"fine.png", "fine.safetensors"} & left  # refused before any work
        assert not [n for n in left if n.endswith(".tmp")]
    finally:
        sock.close()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_symlink_to_a_regular_file_is_replaced_not_written_through(ssc, tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("the file the link points to")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert ssc("analyze", str(ALIGNED), "--graph", str(link)).code == 0
    assert not link.is_symlink() and json.loads(link.read_text())["directed"] is True
    assert real.read_text() == "the file the link points to"


# --- 5. an output is never an input --------------------------------------------------------------


@pytest.fixture
def copies(tmp_path: Path) -> dict[str, Path]:
    """The sample under several names (the name decides the format of an output, not of input)."""
    names = {}
    for ext in ("pt", "safetensors", "json", "png", "svg"):
        names[ext] = tmp_path / f"ckpt.{ext}"
        shutil.copyfile(ALIGNED, names[ext])
    return names


def same_file_cases(d: Path, c: dict[str, Path]) -> dict[str, list[str]]:
    link_pt = d / "link.pt"
    link_pt.symlink_to(c["pt"])
    hard_pt = d / "hard.pt"
    os.link(c["pt"], hard_pt)
    return {
        "fold -o X X": ["fold", str(c["pt"]), "-o", str(c["pt"])],
        "fold -o symlink-to-X": ["fold", str(c["pt"]), "-o", str(link_pt)],
        "fold -o hard-link-of-X": ["fold", str(c["pt"]), "-o", str(hard_pt)],
        "fold X via its symlink": ["fold", str(link_pt), "-o", str(c["pt"])],
        "fold -o relative X": ["fold", str(c["pt"]), "-o", os.path.relpath(c["pt"])],
        "fold --materialize X": [
            "fold", str(c["pt"]), "-o", str(d / "o.safetensors"), "--materialize", str(hard_pt)
        ],
        "fold --plot X": ["fold", str(c["png"]), "-o", str(d / "o.safetensors"), "--plot",
                          str(c["png"])],
        "analyze --graph X": ["analyze", str(c["json"]), "--graph", str(c["json"])],
        "plot-similarity -o X": ["plot-similarity", str(c["png"]), "-o", str(c["png"])],
        "plot-similarity --graph-plot X": [
            "plot-similarity", str(c["svg"]), "-o", str(d / "o.png"), "--graph-plot", str(c["svg"])
        ],
    }  # fmt: skip


def test_an_output_that_is_an_input_is_refused_before_any_work(
    ssc, tmp_path: Path, copies: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = {p: p.read_bytes() for p in copies.values()}
    for name, args in same_file_cases(tmp_path, copies).items():
        err = one_line_error(ssc(*args))
        assert "refusing to write" in err and "never overwrites its input" in err, (name, err)
    assert {p: p.read_bytes() for p in copies.values()} == before
    assert not {"o.safetensors", "o.png"} & {p.name for p in tmp_path.iterdir()}
    assert not list(tmp_path.glob(".*.tmp"))


def test_two_outputs_of_one_command_may_not_be_the_same_file(ssc, tmp_path: Path) -> None:
    a = tmp_path / "a.pt"
    a.write_bytes(b"previous")
    os.link(a, tmp_path / "b.pt")
    cases = {
        "same path": ["fold", str(ALIGNED), "-o", str(a), "--materialize", str(a)],
        "hard link": ["fold", str(ALIGNED), "-o", str(a), "--materialize", str(tmp_path / "b.pt")],
        "plot twice": ["plot-similarity", str(ALIGNED), "-o", str(tmp_path / "p.png"),
                       "--graph-plot", str(tmp_path / "p.png")],
    }  # fmt: skip
    for name, args in cases.items():
        err = one_line_error(ssc(*args))
        assert "name the same file" in err, (name, err)
    assert a.read_bytes() == b"previous" and not (tmp_path / "p.png").exists()


def test_train_never_overwrites_its_data_file(ssc, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.normal(size=(20, 1, 8, 8)).astype(np.float32), y=np.arange(20) % 10)
    before = data.read_bytes()
    (tmp_path / "run.pt.partial").symlink_to(data)
    cases = {
        "-o is the data": ["-o", str(data)],
        "OUT.partial is the data": ["-o", str(tmp_path / "run.pt")],
        "-o is a symlink to the data": ["-o", str(tmp_path / "run.pt.partial")],
    }
    for name, args in cases.items():
        err = one_line_error(ssc("train", "--data", f"npz:{data}", "--epochs", "1", *args))
        assert "refusing to write" in err and "--data" in err, (name, err)
    assert data.read_bytes() == before


def test_fold_never_overwrites_its_data_or_its_model_file(ssc, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "d.pt"
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(4, 1, 8, 8)).astype(np.float32),
             y=np.arange(4))  # fmt: skip
    (tmp_path / "d.npz").rename(data)
    model = tmp_path / "net.py"
    model.write_text("def Net():\n    raise SystemExit('must never run')\n")
    before = data.read_bytes(), model.read_text()
    err = one_line_error(ssc("fold", str(ALIGNED), "-o", str(data), "--data", f"npz:{data}"))
    assert "refusing to write" in err and "--data" in err
    err = one_line_error(
        ssc("fold", str(ALIGNED), "-o", str(tmp_path / "o.safetensors"), "--materialize",
            str(model), "--model", f"{model}:Net")
    )  # fmt: skip
    assert "--model" in err or "--materialize" in err
    assert (data.read_bytes(), model.read_text()) == before


def test_check_outputs_protects_the_files_of_a_data_directory(tmp_path: Path) -> None:
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    (images / "1.png").write_bytes(b"an image")
    with pytest.raises(InputError, match="a file inside the input --data"):
        check_outputs({"-o": images / "1.png"}, {"--data": tmp_path / "images"})
    check_outputs({"-o": images / "new.png"}, {"--data": tmp_path / "images"})  # a new file
    check_outputs({"-o": tmp_path / "out.pt", "--plot": None}, {"CHECKPOINT": None})


# --- 5. failed writes ----------------------------------------------------------------------------

FSIZE_SCRIPT = (
    r"""
import contextlib, io, json, os, resource, signal, sys
import matplotlib, torch, safetensors.torch, networkx  # imported (and cached) before the limit
from soft_share_cli.cli import _state, main
cases, limit = json.loads(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
"""
    + _RUN_CASES
    + r"""
# torch's path writer dropped the error of its last buffered write: every limit short of the
# whole file must be an error, never a truncated file reported as written.
from soft_share_cli.checkpoints.load import save_checkpoint
from soft_share_cli.errors import InputError
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
state = {"w": torch.arange(20000, dtype=torch.float32)}
save_checkpoint("ref.pt", arch="x", arch_kwargs={}, state_dict=state, metadata={})
full = os.path.getsize("ref.pt")
truncated = []
for cut in (1, 8, 22, 64, 100, 300, 1000, 5000, full // 2):
    resource.setrlimit(resource.RLIMIT_FSIZE, (full - cut, resource.RLIM_INFINITY))
    try:
        save_checkpoint("ckpt.pt", arch="x", arch_kwargs={}, state_dict=state, metadata={})
        truncated.append(cut)
    except InputError as exc:
        assert "File too large" in str(exc), exc
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
results["save_checkpoint truncations"] = truncated
print(json.dumps(results))
"""
)


def fsize_cases(d: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, the file that must fail and keep its previous contents)."""
    ck = str(ALIGNED)
    return {
        "fold -o (safetensors)": (["fold", ck, "-o", str(d / "f.safetensors")], "f.safetensors"),
        **{
            f"plot {ext}": (["plot-similarity", ck, "-o", str(d / f"p.{ext}")], f"p.{ext}")
            for ext in ("png", "svg", "pdf")
        },
        **{
            f"graph {ext}": (["analyze", ck, "--graph", str(d / f"g.{ext}")], f"g.{ext}")
            for ext in ("graphml", "gexf", "json", "dot")
        },
    }


def test_a_file_too_large_is_one_line_and_keeps_every_previous_file(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 512 bytes fail for real (EFBIG) in every writer:
    safetensors, matplotlib (png, svg, pdf), the graph formats, and torch (save_checkpoint,
    which train's OUT, its OUT.partial and --materialize use alike)."""
    cases = fsize_cases(tmp_path)
    previous = {name: b"previous" for _, name in cases.values()}
    for name, content in previous.items():
        (tmp_path / name).write_bytes(content)
    argv = {name: args for name, (args, _) in cases.items()}
    done = subprocess.run(
        [sys.executable, "-c", FSIZE_SCRIPT, json.dumps(argv), "512"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results.pop("save_checkpoint truncations") == []
    for name, (code, err) in results.items():
        target = tmp_path / cases[name][1]
        assert code == 2, (name, err)
        assert err.strip().count("\n") == 0, (name, err)
        assert f"Error: cannot write {target}: File too large" in err, (name, err)
    for name, content in previous.items():
        assert (tmp_path / name).read_bytes() == content, name
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in previous)
    assert left == ["ref.pt"], left  # no temporary file (ours or safetensors' own) is left


@pytest.mark.parametrize(
    ("errno_", "text"),
    [(errno.EIO, "Input/output error"), (errno.ENOSPC, "No space left on device")],
    ids=["EIO", "ENOSPC"],
)
@pytest.mark.parametrize(
    ("what", "build"),
    [
        ("fold", lambda d: ["fold", str(ALIGNED), "-o", str(d / "out.safetensors")]),
        ("plot", lambda d: ["plot-similarity", str(ALIGNED), "-o", str(d / "out.png")]),
        ("graph", lambda d: ["analyze", str(ALIGNED), "--graph", str(d / "out.dot")]),
    ],
    ids=["fold", "plot", "graph"],
)
@pytest.mark.parametrize("call", ["fsync", "replace"])
def test_an_os_error_at_fsync_or_rename_keeps_the_previous_file(
    ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, what: str,
    build: Callable[[Path], list[str]], errno_: int, text: str,
) -> None:  # fmt: skip
    args = build(tmp_path)
    target = Path(args[-1])
    target.write_bytes(b"previous")

    def failing(*_: Any, **__: Any) -> None:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os, call, failing)
    err = one_line_error(ssc(*args))
    monkeypatch.undo()
    assert f"cannot write {target}: {text}" in err
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_write_failure_finds_the_os_error_behind_other_exceptions() -> None:
    class SafetensorError(Exception):  # the name is what safetensors' Rust error is known by
        pass

    wrapped = RuntimeError("[enforce fail at inline_container.cc] unexpected pos")
    wrapped.__context__ = OSError(errno.EFBIG, "File too large")
    failure = write_failure(wrapped)
    assert failure is not None and failure.errno == errno.EFBIG
    found = write_failure(SafetensorError("I/O error: No space left on device (os error 28)"))
    assert found is not None and found.errno == errno.ENOSPC
    assert write_failure(RuntimeError("a bug")) is None
    assert write_failure(SafetensorError("tensors share memory")) is None


# --- durability ----------------------------------------------------------------------------------


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        events.append(("dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    monkeypatch.undo()
    ino = os.stat(target).st_ino
    assert events == [("file", ino), ("replace", ino), ("dir", os.stat(tmp_path).st_ino)]
    assert target.read_bytes() == b"new"


def test_every_writer_fsyncs_its_file_and_directory(
    ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    d = tmp_path
    run = ssc(
        "fold", str(ALIGNED), "-o", str(d / "f.safetensors"), "--materialize", str(d / "m.pt")
    )
    assert run.code == 0, run.err
    assert ssc("analyze", str(ALIGNED), "--graph", str(d / "g.graphml")).code == 0
    assert ssc("plot-similarity", str(ALIGNED), "-o", str(d / "p.pdf")).code == 0
    assert synced == ["file", "dir"] * 4


# --- modes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_every_output_gets_the_umask_mode(ssc, tmp_path: Path, umask: int, mode: int) -> None:
    d = tmp_path
    previous = os.umask(umask)
    try:
        runs = [
            ssc("fold", str(ALIGNED), "-o", str(d / "f.safetensors"), "--materialize",
                str(d / "m.pt")),
            ssc("plot-similarity", str(ALIGNED), "-o", str(d / "p.png"), "--graph-plot",
                str(d / "g.svg")),
            ssc("analyze", str(ALIGNED), "--graph", str(d / "g.json")),
        ]  # fmt: skip
    finally:
        os.umask(previous)
    assert all(run.code == 0 for run in runs), [run.err for run in runs]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in d.iterdir()}
    assert set(modes.values()) == {oct(mode)}, modes
