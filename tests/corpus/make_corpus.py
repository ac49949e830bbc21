"""Generate the hostile and broken inputs ssc must survive; nothing dangerous is committed.

The tests build every file at run time in a temporary directory with the functions below.
``python tests/corpus/make_corpus.py DIR`` writes the same files for a look by hand, e.g.
``for f in DIR/hostile/*; do ssc info "$f"; echo "exit $?"; done``.

* :func:`hostile`: checkpoints whose pickles run ``touch MARKER`` (or plainly name code) when
  loaded unsafely, by every route we know: ``os.system``, ``subprocess``, builtins
  ``eval``/``exec``, ``getattr(__import__(...))`` chains, ``importlib``, ``timeit``, ``runpy``,
  numpy's ``runstring``, nested pickles, ``functools.partial``; hidden in the state dict, the
  optimizer state, metadata lists, dict keys, tensor attributes, the authors' recorder; in zip
  and legacy files, pickle protocols 0-5, and hand-assembled opcodes (Python 2 names, INST,
  OBJ, STACK_GLOBAL through the memo, the extension registry, extra zip members, every legacy
  pickle). ``ssc`` must refuse each with exit code 3 and one line naming the global.
* :func:`inert`: files naming a class from an importable module whose import, ``__setstate__``
  and ``__reduce__`` would all touch the marker: loaded with an inert placeholder, never imported.
* :func:`broken`: empty, truncated, random, zips with members missing or unsupported
  compression, links that loop, forged huge sizes, files that are no checkpoint: exit code 2.
* :func:`semantic`: well-formed checkpoints with wrong contents (K mismatch, NaN/inf, all-zero
  coefficients, a bank without layers, shapes that do not fit the architecture).
* :func:`bad_data`: ``--data`` inputs that are missing, mis-shaped, mistyped, out of range or
  not what they claim: exit code 2.

Each :class:`Case` says what the one-line error must contain; ``live`` cases are checked to
really run their payload when loaded unsafely, so the marker staying absent means something.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import io
import os
import pickle
import runpy
import shlex
import struct
import subprocess
import sys
import tarfile
import time
import timeit
import types
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.testing._private import utils as numpy_testing_utils

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_checkpoints"
ALIGNED = SAMPLES / "swrn28-1-4_digits_align.pt"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
SYSTEM = f"{os.system.__module__}.system"  # posix.system (nt.system on Windows)


@dataclass(frozen=True)
class Case:
    """One generated input and what ssc must say about it."""

    name: str
    path: Path
    says: str  # a fragment the one-line error must contain (compared in lower case)
    live: bool = False  # loading it with plain torch.load(weights_only=False) runs the payload


class Call:
    """Pickles as ``func(*args)``, which is what a ``__reduce__`` payload does; calls nest."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args

    def __call__(self, *args: Any) -> Any:  # pickle insists that a reduce function is callable
        raise AssertionError("payloads are pickled, never called")


# --- hostile --------------------------------------------------------------------------------------


def routes(marker: Path) -> dict[str, tuple[Any, str]]:
    """Payloads that create ``marker`` when unpickled, with a global the refusal must name."""
    code = f"open({str(marker)!r}, 'w').close()"
    touch = f"touch {shlex.quote(str(marker))}"
    system = Call(os.system, touch)
    return {
        "os-system": (system, SYSTEM),
        "subprocess-call": (Call(subprocess.call, ["touch", str(marker)]), "subprocess.call"),
        "subprocess-popen": (Call(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        "builtins-eval": (Call(builtins.eval, code), "builtins.eval"),
        "builtins-exec": (Call(builtins.exec, code), "builtins.exec"),
        "getattr-chain": (
            Call(Call(builtins.getattr, Call(builtins.__import__, "os"), "system"), touch),
            "builtins.__import__",
        ),
        "importlib": (
            Call(Call(builtins.getattr, Call(importlib.import_module, "os"), "system"), touch),
            "importlib.import_module",
        ),
        "timeit": (Call(timeit.timeit, code, "pass", time.perf_counter, 1), "timeit.timeit"),
        "runpy": (Call(runpy._run_code, code, {}), "runpy._run_code"),
        "numpy-runstring": (
            Call(numpy_testing_utils.runstring, code, {}),
            "numpy.testing._private.utils.runstring",
        ),
        "nested-pickle": (Call(pickle.loads, pickle.dumps(system, protocol=2)), "pickle.loads"),
        "functools-partial": (Call(functools.partial(os.system, touch)), "functools.partial"),
    }


def locations(payload: Any) -> dict[str, Any]:
    """Where in a checkpoint a payload can hide (each still holds a tensor state dict)."""
    state = {"conv.weight": torch.ones(2, 2)}
    attribute = torch.ones(2)
    attribute.evil = payload  # type: ignore[attr-defined]  # pickled with the tensor's __dict__
    return {
        "top-level": {"state_dict": state, "evil": payload},
        "state-dict-value": {**state, "evil": payload},
        "optimizer-state": {
            "state_dict": state,
            "optimizer": {"state": {0: {"momentum_buffer": payload}}, "param_groups": []},
        },
        "metadata-list": {"state_dict": state, "history": [1, [2, (payload,)]]},
        "dict-key": {"state_dict": state, "extra": {payload: 1}},
        "tensor-attribute": {"w": attribute},
        "authors-recorder": {"epoch": 1, "arch": "swrn", "state_dict": state, "recorder": payload},
        "ssc-metadata": {
            "format": "ssc-checkpoint",
            "format_version": 1,
            "arch": "swrn",
            "arch_kwargs": {},
            "state_dict": state,
            "metadata": {"note": payload},
        },
    }


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()  # GLOBAL


def _call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE REDUCE


def _in_dict(value: bytes, protocol: int = 2) -> bytes:
    """A whole pickle of ``{"w": <value>}``."""
    return bytes([0x80, protocol]) + b"}" + _text("w") + value + b"s."


def opcode_payloads(marker: Path) -> dict[str, tuple[bytes, str, bool]]:
    """Hand-assembled pickles: bytes, the global to name, and whether they run on posix."""
    code = _text(f"open({str(marker)!r}, 'w').close()")
    touch = _text(f"touch {shlex.quote(str(marker))}")
    posix = os.name == "posix"
    stack_global = (  # "os" goes through the memo before STACK_GLOBAL reads it
        bytes([0x80, 4]) + b"}" + _text("w")
        + _text("os") + b"\x94" + b"0" + b"h\x00" + _text("system") + b"\x93"
        + b"(" + touch + b"tR" + b"s."
    )  # fmt: skip
    third_party = {
        "yaml": ("yaml", "unsafe_load"),
        "joblib": ("joblib", "load"),
        "dill": ("dill._dill", "_create_code"),
        "pandas": ("pandas", "read_pickle"),
        "cloudpickle": ("cloudpickle.cloudpickle", "_make_function"),
        "torch-load": ("torch.serialization", "load"),
        "torch-jit": ("torch.jit", "load"),
        "numpy-load": ("numpy", "load"),
        "ctypes": ("ctypes", "CDLL"),
        "shutil-rmtree": ("shutil", "rmtree"),
    }
    cases: dict[str, tuple[bytes, str, bool]] = {
        "py2-builtin-eval": (_in_dict(_call(_global("__builtin__", "eval"), code)), "eval", True),
        "py2-posix-system": (
            _in_dict(_call(_global("posix", "system"), touch)),
            "posix.system",
            posix,
        ),
        "py2-nt-system": (_in_dict(_call(_global("nt", "system"), touch)), "nt.system", False),
        "py2-commands": (
            _in_dict(_call(_global("commands", "getoutput"), touch)),
            "subprocess.getoutput",  # mapped the way torch's own unpickler maps it
            posix,
        ),
        "inst-opcode": (_in_dict(b"(" + touch + b"ios\nsystem\n"), "os.system", posix),
        "obj-opcode": (_in_dict(b"(" + _global("os", "system") + touch + b"o"), "os.system", posix),
        "stack-global-memo": (stack_global, "os.system", posix),
        "extension-registry": (
            _in_dict(b"\x82\x07" + b"(" + touch + b"tR"),
            "extension registry code 7",
            False,
        ),
    }
    for name, (module, attr) in third_party.items():
        cases[name] = (_in_dict(_call(_global(module, attr), touch)), f"{module}.{attr}", False)
    return cases


def _template_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(1)}, buffer)
    return buffer.getvalue()


def zip_with(path: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> Path:
    """A real torch zip whose members ending in the keys of ``replace`` are swapped."""
    with (
        zipfile.ZipFile(io.BytesIO(_template_zip())) as old,
        zipfile.ZipFile(path, "w") as new,
    ):
        root = old.namelist()[0].split("/", 1)[0]
        for info in old.infolist():
            data = old.read(info)
            for suffix, content in replace.items():
                if info.filename.endswith(suffix):
                    data = content
            new.writestr(info.filename, data)
        for name, content in (add or {}).items():
            new.writestr(f"{root}/{name}", content)
    return path


def legacy_with(path: Path, obj: bytes, sys_info: bytes | None = None, keys: bytes = b"") -> Path:
    """A legacy-format file: magic, protocol, sys_info, ``obj``, storage keys (no storages)."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    parts = [
        pickle.dumps(LEGACY_MAGIC, protocol=2),
        pickle.dumps(1001, protocol=2),
        sys_info or pickle.dumps(info, protocol=2),
        obj,
        keys or b"\x80\x02].",
    ]
    path.write_bytes(b"".join(parts))
    return path


def hostile(out: Path, marker: Path) -> list[Case]:
    """Every way we know to make a checkpoint run code; ssc must refuse them all (exit 3)."""
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    formats = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}
    for route, (payload, name) in routes(marker).items():
        for fmt, kwargs in formats.items():
            path = out / f"route-{route}-{fmt}.pt"
            torch.save({"state_dict": {"w": torch.ones(1)}, "evil": payload}, path, **kwargs)
            cases.append(Case(path.stem, path, name, live=True))
    payload, name = routes(marker)["os-system"]
    for where, obj in locations(payload).items():
        for fmt, kwargs in formats.items():
            path = out / f"in-{where}-{fmt}.pt"
            torch.save(obj, path, **kwargs)
            cases.append(Case(path.stem, path, name, live=True))
    for protocol in range(6):
        for fmt, kwargs in formats.items():
            path = out / f"protocol-{protocol}-{fmt}.pt"
            # Protocol 0 cannot hold torch's persistent ids: no tensor in that file.
            obj = {"evil": payload} if protocol == 0 else {"w": torch.ones(1), "evil": payload}
            torch.save(obj, path, pickle_protocol=protocol, **kwargs)
            cases.append(Case(path.stem, path, name, live=True))
    for label, (raw, name, live) in opcode_payloads(marker).items():
        cases.append(Case(f"opcodes-{label}-zip", zip_with(out / f"{label}.pt", {"data.pkl": raw}),
                          name, live))  # fmt: skip
        path = legacy_with(out / f"{label}-legacy.pt", raw)
        cases.append(Case(f"opcodes-{label}-legacy", path, name, live))
    evil = _in_dict(_call(_global("posix", "system"), _text(f"touch {marker}")))
    cases += [
        # torch itself reads only data.pkl; the scan reads every pickle member all the same.
        Case("zip-extra-member", zip_with(out / "extra.pt", {}, {"extra.pkl": evil}), "posix"),
        # torch unpickles every one of the five legacy pickles, so these two run too.
        Case(
            "legacy-sys-info",
            legacy_with(out / "sys.pt", pickle.dumps({}), evil),
            "posix",
            live=os.name == "posix",
        ),
        Case(
            "legacy-storage-keys",
            legacy_with(out / "keys.pt", pickle.dumps({"w": 1}, protocol=2), keys=evil),
            "posix",
            live=os.name == "posix",
        ),
    ]
    whole = out / "whole-module.pt"
    torch.save(torch.nn.Linear(2, 2), whole)  # a pickled model: names torch.nn classes
    cases.append(Case("whole-module", whole, "whole pickled model"))
    return cases


# --- inert ----------------------------------------------------------------------------------------

EVIL_MODULE = """
from pathlib import Path
MARKER = Path({marker!r})
MARKER.touch()  # importing this module is already too much


class Recorder:
    def __init__(self):
        self.best = 99.5

    def __setstate__(self, state):
        MARKER.touch()

    def __reduce__(self):
        return (Recorder, (), self.__dict__)
"""


def inert(out: Path, marker: Path) -> tuple[Path, Path]:
    """A checkpoint naming ``ssc_corpus_evil.Recorder``, and the directory of that module.

    The module touches the marker when imported, and so do the class's ``__setstate__`` and
    ``__reduce__``: with the directory on ``sys.path``, loading must still only ever build an
    inert placeholder.
    """
    out.mkdir(parents=True, exist_ok=True)
    name = "ssc_corpus_evil"
    (out / f"{name}.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    # Pickled through a stand-in registered under the same name: the real module is never run.
    stand_in = types.ModuleType(name)
    recorder = type("Recorder", (), {"__module__": name, "__qualname__": "Recorder"})
    stand_in.Recorder = recorder  # type: ignore[attr-defined]
    obj = recorder()
    obj.best = 99.5
    previous = sys.modules.get(name)
    sys.modules[name] = stand_in
    try:
        path = out / "inert.pt"
        torch.save({"state_dict": {"w": torch.ones(2)}, "recorder": obj}, path)
    finally:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
    return path, out


# --- broken ---------------------------------------------------------------------------------------


def _sample_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    state = torch.load(ALIGNED, weights_only=True)["state_dict"]
    kwargs = {"_use_new_zipfile_serialization": False} if fmt == "legacy" else {}
    torch.save(state, buffer, **kwargs)
    return buffer.getvalue()


def broken(out: Path) -> list[Case]:
    """Files ssc must refuse with exit code 2 and one clear line.

    test_cli.py already covers a missing file, a directory, an empty file, 4 KiB of random
    bytes and a zip cut at 5,000 bytes; test_checkpoint.py the library side of most of these.
    """
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, data: bytes, says: str = "", suffix: str = ".pt") -> None:
        path = out / f"{name}{suffix}"
        path.write_bytes(data)
        cases.append(Case(name, path, says))

    for fmt in ("zip", "legacy"):
        whole = _sample_bytes(fmt)
        for cut in (1, 8, 64, 700, len(whole) // 3, len(whole) // 2, len(whole) - 1):
            add(f"truncated-{fmt}-{cut}", whole[:cut])
    from safetensors.torch import save_file

    save_file({"w": torch.ones(64)}, str(out / "whole.safetensors"))
    st = (out / "whole.safetensors").read_bytes()
    for cut in (4, 12, len(st) - 10):
        add(f"truncated-safetensors-{cut}", st[:cut], "safetensors", suffix=".safetensors")
    rng = np.random.default_rng(7)
    add("random-zip-magic", b"PK\x03\x04" + rng.bytes(3000), "zip")
    add("random-pickle-start", b"\x80\x02" + rng.bytes(3000))
    add("random-large", rng.bytes(200_000))
    add("text-file", b"this is not a checkpoint\n" * 20, "not a checkpoint")
    add("png-file", b"\x89PNG\r\n\x1a\n" + rng.bytes(100), "not a checkpoint")

    cases.append(Case("zip-without-data-pkl", zip_with(out / "nodata.pt", {}, None), ""))
    _drop_member(out / "nodata.pt", "data.pkl")
    cases.append(Case("zip-without-storage", zip_with(out / "nostorage.pt", {}), ""))
    _drop_member(out / "nostorage.pt", "data/0")
    npz = out / "arrays.npz"
    np.savez(npz, x=np.zeros(3))
    cases.append(Case("npz-as-checkpoint", npz, "without data.pkl"))
    cases.append(Case("zip-unknown-compression", _unknown_compression(out / "comp.pt"), "zip"))

    # Sizes declared far beyond the file: never allocated, refused as corrupt.
    magic = pickle.dumps(LEGACY_MAGIC, protocol=2)
    huge_string = magic + b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b"abc"
    add("huge-string-legacy", huge_string, "only 3 remain")
    add("huge-bytes-legacy", magic + b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc",
        "only 3 remain")  # fmt: skip
    # Nine bytes that make CPython's C unpickler allocate a 16 GiB memo (a far memo index).
    memo_bomb = b"\x80\x02}r\xff\xff\xff\x3f."
    cases.append(Case("memo-bomb-zip", zip_with(out / "memo.pt", {"data.pkl": memo_bomb}),
                      "memo index"))  # fmt: skip
    cases.append(Case("memo-bomb-legacy", legacy_with(out / "memo-l.pt", memo_bomb),
                      "memo index"))  # fmt: skip
    add("huge-storage-legacy", _huge_legacy_storage(), "")
    add("huge-tensor-zip", _huge_zip_tensor(), "")
    add("huge-header-safetensors", struct.pack("<Q", 2**60) + b'{"a":1}', "safetensors",
        suffix=".safetensors")  # fmt: skip

    # Not checkpoints ssc reads.
    plain = {"w": [1.0, 2.0]}
    add("plain-pickle", pickle.dumps(plain, protocol=2), "not a torch checkpoint")
    for protocol, content in ((0, 1.5), (1, torch.ones(2))):
        buffer = io.BytesIO()
        torch.save({"w": content}, buffer, pickle_protocol=protocol)
        add(f"clean-protocol-{protocol}", buffer.getvalue(), "protocol")
    tar = out / "old.tar"
    with tarfile.open(tar, "w") as archive:
        info = tarfile.TarInfo("sys_info")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    cases.append(Case("pre-0.4-tar", tar, "tar"))
    jit = out / "scripted.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated, and still what people have
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(jit))
    cases.append(Case("torchscript", jit, "torchscript"))

    loop = out / "loop-a.pt"
    os.symlink(out / "loop-b.pt", loop)
    os.symlink(loop, out / "loop-b.pt")
    cases.append(Case("symlink-loop", loop, "symbolic links"))
    dangling = out / "dangling.pt"
    os.symlink(out / "gone.pt", dangling)
    cases.append(Case("dangling-symlink", dangling, "no such file"))
    return cases


def _drop_member(path: Path, suffix: str) -> None:
    data = io.BytesIO(path.read_bytes())
    with zipfile.ZipFile(data) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            if not info.filename.endswith(suffix):
                new.writestr(info.filename, old.read(info))


def _unknown_compression(path: Path) -> Path:
    zip_with(path, {})
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (start := raw.find(signature, start)) != -1:
            raw[start + offset : start + offset + 2] = struct.pack("<H", 99)  # no such method
            start += 4
    path.write_bytes(bytes(raw))
    return path


def _huge_legacy_storage() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    numel = data.index(b"K\x03", data.index(b"cpu"))  # the storage's element count
    return data[:numel] + b"\x8a\x06" + (2**40).to_bytes(6, "little") + data[numel + 2 :]


def _huge_zip_tensor() -> bytes:
    with zipfile.ZipFile(io.BytesIO(_template_zip())) as old:
        pkl = old.read(next(n for n in old.namelist() if n.endswith("data.pkl")))
    size = pkl.index(b"K\x00K\x01\x85") + 2  # storage offset 0, then the size tuple (1,)
    forged = pkl[:size] + b"\x8a\x06" + (2**40).to_bytes(6, "little") + pkl[size + 2 :]
    path = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(_template_zip())) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, forged if info.filename.endswith("data.pkl") else
                         old.read(info))  # fmt: skip
    return path.getvalue()


# --- semantic -------------------------------------------------------------------------------------

Edit = Callable[[dict[str, torch.Tensor]], None]


def _set(key: str, index: int, value: float) -> Edit:
    def edit(state: dict[str, torch.Tensor]) -> None:
        state[key].view(-1)[index] = value

    return edit


def _replace(key: str, tensor: torch.Tensor) -> Edit:
    def edit(state: dict[str, torch.Tensor]) -> None:
        state[key] = tensor

    return edit


def _drop(prefix: str, suffix: str) -> Edit:
    def edit(state: dict[str, torch.Tensor]) -> None:
        for key in [k for k in state if k.startswith(prefix) and k.endswith(suffix)]:
            del state[key]

    return edit


#: name -> (edit of the aligned sample's state dict, issue kind, issue key, damaged bank)
SEMANTIC: dict[str, tuple[Edit, str | None, str | None, str | None]] = {
    "k-mismatch": (
        _replace("stage_2.2.conv1.coefficients", torch.ones(3, 1, 1, 1, 1)),
        "k-mismatch", "stage_2.2.conv1.coefficients", "bank_2",
    ),
    "nan-coefficient": (
        _set("stage_2.2.conv1.coefficients", 0, float("nan")),
        "non-finite", "stage_2.2.conv1.coefficients", "bank_2",
    ),
    "inf-coefficient": (
        _set("stage_2.2.conv1.coefficients", 1, float("-inf")),
        "non-finite", "stage_2.2.conv1.coefficients", "bank_2",
    ),
    "zero-coefficients": (
        _replace("stage_2.2.conv1.coefficients", torch.zeros(4, 1, 1, 1, 1)),
        "zero-norm", "stage_2.2.conv1.coefficients", "bank_2",
    ),
    "bank-without-layers": (
        _drop("stage_3.", "coefficients"), "bank-without-layers", "bank_3.templates", "bank_3",
    ),
    "nan-template": (
        _set("bank_1.templates", 0, float("nan")), "non-finite", "bank_1.templates", "bank_1",
    ),
    "shape-mismatch": (_replace("stage_2.1.bn1.weight", torch.ones(7)), None, None, None),
    # Finite, but beyond what float32 (the network) or a norm in float64 can hold.
    "huge-coefficients": (
        _replace("stage_2.2.conv1.coefficients", torch.full((4, 1, 1, 1, 1), 1.7e308,
                                                            dtype=torch.float64)),
        None, None, "bank_2",
    ),
    "tiny-coefficients": (
        _replace("stage_2.2.conv1.coefficients", torch.full((4, 1, 1, 1, 1), 1e-320,
                                                            dtype=torch.float64)),
        None, None, "bank_2",
    ),
}  # fmt: skip


def semantic(out: Path) -> dict[str, Path]:
    """The aligned sample as a bare state dict, once per edit in :data:`SEMANTIC`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (edit, *_) in SEMANTIC.items():
        state = torch.load(ALIGNED, weights_only=True)["state_dict"]  # fresh: edits share banks
        edit(state)
        paths[name] = out / f"{name}.pt"
        torch.save(state, paths[name])
    return paths


# --- bad data -------------------------------------------------------------------------------------


def bad_data(out: Path) -> list[tuple[str, str, str]]:
    """``(name, --data spec, fragment of the error)`` for the sample networks (1x8x8, 10 classes).

    test_data.py covers the loaders' messages one by one; these go through ``ssc eval``.
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 1, 8, 8)).astype(np.float32)
    y = np.arange(12) % 10
    cases: list[tuple[str, str, str]] = [("missing-npz", f"npz:{out / 'nope.npz'}", "not found")]

    def npz(name: str, says: str, **arrays: Any) -> None:
        path = out / f"{name}.npz"
        np.savez(path, **arrays)
        cases.append((name, f"npz:{path}", says))

    npz("npz-3d-images", "(n, c, h, w)", x=x[:, 0], y=y)
    npz("npz-uint8-images", "must be float", x=(x * 10).astype(np.uint8), y=y)
    npz("npz-float-labels", "1-d integer", x=x, y=y.astype(np.float32))
    npz("npz-2d-labels", "1-d integer", x=x, y=y.reshape(12, 1))
    npz("npz-labels-beyond-model", "model predicts 10 classes", x=x, y=y + 5)
    npz("npz-negative-labels", "negative", x=x, y=y - 3)
    npz("npz-length-mismatch", "12 samples but y has 5", x=x, y=y[:5])
    npz("npz-nan-images", "nan or infinite", x=x * np.nan, y=y)
    npz("npz-object-array", "cannot read", x=np.array([{"a": 1}] * 12, dtype=object), y=y)
    npz("npz-empty", "no test samples", x=x[:0], y=y[:0])
    np.save(out / "single.npy", x)
    cases.append(("npy-not-npz", f"npz:{out / 'single.npy'}", "got a .npy"))
    whole = (out / "npz-3d-images.npz").read_bytes()
    (out / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    cases.append(("npz-truncated", f"npz:{out / 'truncated.npz'}", "npz"))

    from PIL import Image

    def folder(name: str, says: str, files: dict[str, Any]) -> None:
        root = out / name
        for rel, content in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            elif content is None:
                path.mkdir()
            else:
                content.save(path)
        cases.append((name, f"folder:{root}", says))

    image = Image.new("L", (8, 8), 100)
    folder("folder-text-file", "notes.txt", {"a/1.png": image, "a/notes.txt": b"hello"})
    folder("folder-truncated-png", "broken.png", {"a/1.png": image, "b/broken.png": _png()[:30]})
    folder("folder-nested", "nested", {"a/1.png": image, "b/sub": None})
    folder("folder-sizes", "differs", {"a/1.png": image, "b/2.png": Image.new("L", (9, 8), 1)})
    folder("folder-empty-class", "no images", {"a/1.png": image, "b": None})
    (out / "folder-no-classes").mkdir()
    cases.append(("folder-no-classes", f"folder:{out / 'folder-no-classes'}", "no class"))

    def cifar(name: str, says: str, batch: Any, kind: str = "cifar10") -> None:
        root = out / name
        root.mkdir()
        target = root / "test_batch"  # CIFAR-10's name; CIFAR-100 calls its file "test"
        if isinstance(batch, bytes):
            target.write_bytes(batch)
        elif batch is None:
            target.mkdir()
        else:
            target.write_bytes(pickle.dumps(batch, protocol=2))
        cases.append((name, f"{kind}:{root}", says))

    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    cifar("cifar100-claiming-cifar10", "lacks", {b"data": data, b"fine_labels": [1, 2, 3, 4]})
    cifar("cifar10-claiming-cifar100", "not found", {b"data": data, b"labels": [0] * 4}, "cifar100")
    cifar("cifar-wrong-shape", "uint8 (n, 3072)", {b"data": data[:, :100], b"labels": [0] * 4})
    cifar("cifar-float-data", "uint8", {b"data": data.astype(np.float32), b"labels": [0] * 4})
    cifar("cifar-labels-out-of-range", "0..9", {b"data": data, b"labels": [0, 1, 2, 10]})
    cifar("cifar-label-count", "4 integers", {b"data": data, b"labels": [0, 1]})
    cifar("cifar-not-a-dict", "pickled dict", [data, [0, 1, 2, 3]])
    cifar("cifar-random-bytes", "not a readable cifar batch", rng.bytes(500))
    good = pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3]}, protocol=2)
    cifar("cifar-truncated", "not a readable cifar batch", good[: len(good) // 2])
    cifar("cifar-is-a-directory", "not found", None)
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer, _use_new_zipfile_serialization=False)
    cifar("cifar-is-a-torch-file", "expected a pickled dict", buffer.getvalue())
    # Unpickling errors can span lines ("... encountered,\nbut no persistent_load ..."): the
    # CLI still prints one.
    cifar("cifar-persistent-id", "persistent id", b"\x80\x02X\x01\x00\x00\x000Q.")
    cifar("cifar-memo-bomb", "lacks", b"\x80\x02}r\xff\xff\xff\x3f.")  # 16 GiB in C pickle
    return cases


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), 3).save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: list[str]) -> None:
    """Write every corpus file under ``argv[0]`` and list them."""
    if len(argv) != 1:
        raise SystemExit("usage: python tests/corpus/make_corpus.py DIR")
    out = Path(argv[0])
    marker = out / "MARKER"
    groups = {
        "hostile": hostile(out / "hostile", marker),
        "broken": broken(out / "broken"),
    }
    for group, cases in groups.items():
        for case in cases:
            print(f"{group}\t{case.name}\t{case.path}")
    for name, path in semantic(out / "semantic").items():
        print(f"semantic\t{name}\t{path}")
    for name, spec, _ in bad_data(out / "data"):
        print(f"data\t{name}\t{spec}")
    path, _ = inert(out / "inert", marker)
    print(f"inert\tinert\t{path}")


if __name__ == "__main__":
    main(sys.argv[1:])
