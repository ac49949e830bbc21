"""Tests of checkpoint loading and saving: containers, prefixes, safety, broken files, atomicity."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib.util
import io
import json
import os
import pickle
import random
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model

from soft_share_cli.checkpoints import policy, scan
from soft_share_cli.checkpoints.containers import WRAPPER_KEYS
from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint
from soft_share_cli.checkpoints.testing import UTILS_SOURCE
from soft_share_cli.errors import CheckpointError, InputError, UnsafeCheckpointError
from soft_share_cli.files import atomic_write
from soft_share_cli.models.wrn import SWRN

LEGACY = {"_use_new_zipfile_serialization": False}
FORMATS = [pytest.param({}, id="zip"), pytest.param(LEGACY, id="legacy")]


def tiny_model(depth: int = 10) -> SWRN:
    torch.manual_seed(0)
    return SWRN(depth, 1, 2, num_classes=10, in_channels=1)


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for key, tensor in expected.items():
        torch.testing.assert_close(actual[key], tensor, rtol=0, atol=0)


class _Payload:
    """Pickles as ``func(*args)``: what a hostile checkpoint does."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


@contextlib.contextmanager
def fake_module(name: str, source: str, directory: Path) -> Iterator[types.ModuleType]:
    """Import ``source`` as module ``name`` only while saving; gone from sys.modules afterwards."""
    file = directory / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        yield module
    finally:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
        file.unlink()  # not importable from anywhere while loading


# --- containers and prefixes ---------------------------------------------------------------------


def test_own_format_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "ours.pt"
    metadata = {"epochs": 3, "note": "tiny", "acc": [0.5, None], "nested": {"ok": True}}
    kwargs = {"depth": 10, "width": 1, "num_templates": 2, "num_classes": 10, "in_channels": 1}
    save_checkpoint(
        path, arch="swrn", arch_kwargs=kwargs, state_dict=model.state_dict(), metadata=metadata
    )
    loaded = load_checkpoint(path)
    assert (loaded.format, loaded.container, loaded.arch) == ("zip", "ssc", "swrn")
    assert loaded.arch_kwargs == kwargs and loaded.metadata == metadata
    assert loaded.stripped_prefix is None and loaded.placeholders == () and loaded.extras == {}
    assert_same_tensors(loaded.state_dict, model.state_dict())
    # Loadable by plain torch too: the format needs no custom globals.
    assert torch.load(path, weights_only=True)["format"] == "ssc-checkpoint"
    assert json.dumps(loaded.to_dict())  # JSON-ready summary


def test_save_checkpoint_refuses_non_plain_metadata(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="numpy"):
        save_checkpoint(
            tmp_path / "x.pt",
            arch="swrn",
            arch_kwargs={},
            state_dict={"w": torch.ones(1)},
            metadata={"acc": np.float32(0.5)},
        )
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("save_kwargs", FORMATS)
def test_bare_state_dict(tmp_path: Path, save_kwargs: dict[str, Any]) -> None:
    state = tiny_model().state_dict()
    torch.save(state, tmp_path / "bare.pt", **save_kwargs)
    loaded = load_checkpoint(tmp_path / "bare.pt")
    assert loaded.container == "state_dict" and loaded.arch is None and loaded.metadata == {}
    assert loaded.format == ("legacy" if save_kwargs else "zip")
    assert_same_tensors(loaded.state_dict, state)


@pytest.mark.parametrize("key", WRAPPER_KEYS)
def test_wrapper_keys(tmp_path: Path, key: str) -> None:
    state = tiny_model().state_dict()
    torch.save({key: state, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "w.pt")
    loaded = load_checkpoint(tmp_path / "w.pt")
    assert loaded.container == f"wrapped:{key}"
    assert loaded.extras == {"epoch": 7, "optimizer": {"lr": 0.1}}
    assert_same_tensors(loaded.state_dict, state)


def test_wrapper_keys_are_tried_in_documented_order(tmp_path: Path) -> None:
    first, second = {"a": torch.zeros(1)}, {"b": torch.ones(1)}
    torch.save({"net": second, "model": first}, tmp_path / "w.pt")
    assert load_checkpoint(tmp_path / "w.pt").container == "wrapped:model"


@pytest.mark.parametrize(
    ("prefix", "reported"),
    [("module.", "module."), ("_orig_mod.", "_orig_mod."), ("_orig_mod.module.", None)],
)
def test_prefixes_are_stripped_when_every_key_has_them(
    tmp_path: Path, prefix: str, reported: str | None
) -> None:
    state = tiny_model().state_dict()
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "p.pt")
    loaded = load_checkpoint(tmp_path / "p.pt")
    assert loaded.stripped_prefix == (reported or prefix)
    assert_same_tensors(loaded.state_dict, state)


def test_mixed_prefixes_are_left_alone(tmp_path: Path) -> None:
    state = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    torch.save(state, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.stripped_prefix is None and list(loaded.state_dict) == ["module.a", "b"]


@pytest.mark.parametrize("mmap", [True, False])
def test_shared_templates_still_share_storage(tmp_path: Path, mmap: bool) -> None:
    torch.save(tiny_model(depth=16).state_dict(), tmp_path / "s.pt")
    state = load_checkpoint(tmp_path / "s.pt", mmap=mmap).state_dict
    keys = [k for k in state if k.endswith("templates") and ("bank_1" in k or "stage_1" in k)]
    assert len(keys) == 4
    assert len({state[k].data_ptr() for k in keys}) == 1


# --- the authors' training checkpoints ------------------------------------------------------------


def write_authors_checkpoint(path: Path, save_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    with fake_module("utils", UTILS_SOURCE, path.parent) as utils:
        recorder = utils.RecorderMeter(4)
        recorder.current_epoch = 2
        recorder.epoch_accuracy[:, 1] = [61.5, 72.25, 99.0, 0.0]  # row 2 is beyond current_epoch
        state = {"module." + k: v for k, v in model.state_dict().items()}
        checkpoint = {"epoch": 2, "arch": "swrn", "state_dict": state, "recorder": recorder}
        checkpoint["optimizer"] = optimizer.state_dict()
        torch.save(checkpoint, path, **save_kwargs)
    return model.state_dict()


@pytest.mark.parametrize("save_kwargs", FORMATS)
def test_authors_training_checkpoint(tmp_path: Path, save_kwargs: dict[str, Any]) -> None:
    before = sys.modules.get("utils")
    expected = write_authors_checkpoint(tmp_path / "checkpoint.pth.tar", save_kwargs)
    loaded = load_checkpoint(tmp_path / "checkpoint.pth.tar")
    assert loaded.container == "authors-training" and loaded.arch == "swrn"
    assert loaded.placeholders == ("utils.RecorderMeter",)
    assert loaded.stripped_prefix == "module."
    assert loaded.metadata == {"epoch": 2, "best_val_accuracy": 72.25}
    assert_same_tensors(loaded.state_dict, expected)
    recorder = loaded.extras["recorder"]
    assert isinstance(recorder, policy.InertObject)
    assert type(recorder).__module__ == "utils" and type(recorder).__qualname__ == "RecorderMeter"
    assert recorder.epoch_losses.dtype == np.float32 and recorder.total_epoch == 4
    assert set(loaded.extras["optimizer"]) == {"state", "param_groups"}
    assert sys.modules.get("utils") is before  # nothing was imported to load it


def test_main_module_class_becomes_placeholder(tmp_path: Path, monkeypatch: Any) -> None:
    thing = type("Thing", (), {"__module__": "__main__"})
    monkeypatch.setattr(sys.modules["__main__"], "Thing", thing, raising=False)
    obj = thing()
    obj.value = 3
    torch.save({"state_dict": {"w": torch.ones(2)}, "thing": obj}, tmp_path / "m.pt")
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.placeholders == ("__main__.Thing",)
    assert vars(loaded.extras["thing"]) == {"value": 3}


def test_argparse_namespace_becomes_placeholder(tmp_path: Path) -> None:
    args = argparse.Namespace(lr=0.1, arch="swrn")
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": args}, tmp_path / "a.pt")
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded.placeholders == ("argparse.Namespace",)
    assert vars(loaded.extras["args"]) == {"lr": 0.1, "arch": "swrn"}


# --- hostile files --------------------------------------------------------------------------------


def hostile_payloads(marker: Path) -> dict[str, _Payload]:
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Payload(os.system, (f"touch {marker}",)),
        "exec": _Payload(builtins.exec, (code,)),
        "eval": _Payload(builtins.eval, (code,)),
        "subprocess": _Payload(subprocess.call, (["touch", str(marker)],)),
    }


def nest(where: str, payload: _Payload) -> Any:
    state = {"w": torch.ones(2)}
    if where == "state_dict":
        return {**state, "evil": payload}
    if where == "optimizer":
        return {"state_dict": state, "optimizer": {"state": {0: {"momentum": payload}}}}
    return {"state_dict": state, "history": [1, [payload]]}


@pytest.mark.parametrize("save_kwargs", FORMATS)
@pytest.mark.parametrize("where", ["state_dict", "optimizer", "list"])
@pytest.mark.parametrize("kind", ["os.system", "exec", "eval", "subprocess"])
def test_hostile_pickles_are_refused(
    tmp_path: Path, save_kwargs: dict[str, Any], where: str, kind: str
) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save(nest(where, hostile_payloads(marker)[kind]), path, **save_kwargs)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"refusing to load {path}: it references ") and "\n" not in message
    expected = {"os.system": f"{os.system.__module__}.system", "subprocess": "subprocess.call"}
    assert expected.get(kind, f"builtins.{kind}") in message  # named by the scan, not by torch
    assert info.value.exit_code == 3
    assert not marker.exists()


@pytest.mark.parametrize("save_kwargs", FORMATS)
def test_stack_global_through_the_memo_is_seen(tmp_path: Path, save_kwargs: dict[str, Any]) -> None:
    marker = tmp_path / "MARKER"
    payloads = hostile_payloads(marker)
    obj = {"w": torch.ones(1), "a": payloads["exec"], "b": payloads["eval"]}
    torch.save(obj, tmp_path / "p4.pt", pickle_protocol=4, **save_kwargs)
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval.*builtins\.exec"):
        load_checkpoint(tmp_path / "p4.pt")
    assert not marker.exists()


def _text(value: str) -> bytes:
    return b"\x8c" + bytes([len(value)]) + value.encode()  # SHORT_BINUNICODE


def test_scan_follows_memo_mark_and_dup() -> None:
    proto, stack_global, stop = b"\x80\x04", b"\x93", b"."
    memoize_then_pop, binget_0 = b"\x940", b"h\x00"
    mark, pop_mark, dup = b"(", b"1", b"2"
    via_memo = proto + _text("os") + memoize_then_pop + binget_0 + _text("system") + stack_global
    via_mark = proto + _text("nt") + _text("system") + mark + _text("x") + pop_mark + stack_global
    via_dup = proto + _text("posix") + dup + _text("system") + stack_global
    computed = proto + b"K\x01" + _text("system") + stack_global  # BININT1 is no module name
    assert scan.scan_pickle(io.BytesIO(via_memo + stop)).globals == {"os.system"}
    assert scan.scan_pickle(io.BytesIO(via_mark + stop)).globals == {"nt.system"}
    assert scan.scan_pickle(io.BytesIO(via_dup + stop)).globals == {"posix.system"}
    assert policy.classify(scan.scan_pickle(io.BytesIO(computed + stop)).globals).refused
    with pytest.raises(scan.PickleScanError):
        scan.scan_pickle(io.BytesIO(via_memo))  # no STOP: truncated


def test_classification() -> None:
    verdict = policy.classify(
        [
            "torch._utils._rebuild_tensor_v2",
            "collections.OrderedDict",
            "numpy.core.multiarray._reconstruct",
            "numpy.dtypes.Float32DType",
            "utils.RecorderMeter",
            "models.swrn.Foo",
            "__main__.Thing",
            "posix.system",
            "copy_reg._reconstructor",
            "__builtin__.eval",
            "torch.nn.modules.linear.Linear",
            "numpy.testing.run_module_suite",
            "dill._dill._create_code",
            "<extension registry code 7>",
        ]
    )
    assert verdict.placeholders == ("__main__.Thing", "models.swrn.Foo", "utils.RecorderMeter")
    assert set(verdict.refused) == {
        "posix.system",
        "copy_reg._reconstructor",
        "__builtin__.eval",
        "torch.nn.modules.linear.Linear",
        "numpy.testing.run_module_suite",
        "dill._dill._create_code",
        "<extension registry code 7>",
    }


def test_scan_maps_python2_names() -> None:
    old = b"\x80\x02c__builtin__\neval\nq\x00."
    assert scan.scan_pickle(io.BytesIO(old)).globals == {"builtins.eval"}


def legacy_file(path: Path, pickles: list[bytes]) -> Path:
    path.write_bytes(b"".join(pickles))
    return path


def legacy_header() -> list[bytes]:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    return [pickle.dumps(p, protocol=2) for p in (0x1950A86A20F9469CFC6C, 1001, sys_info)]


def test_every_legacy_pickle_is_scanned(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    magic, version, _ = legacy_header()
    evil = pickle.dumps(hostile_payloads(marker)["os.system"], protocol=2)
    path = legacy_file(tmp_path / "l.pt", [magic, version, evil, pickle.dumps({}), b"\x80\x02]."])
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_what_torch_rejects_after_the_scan_is_refused(tmp_path: Path) -> None:
    # BUILD on a plain dict names no global, so only torch's unpickler can object.
    path = legacy_file(tmp_path / "l.pt", [*legacy_header(), b"\x80\x02}}b.", b"\x80\x02]."])
    with pytest.raises(UnsafeCheckpointError, match="weights-only loader rejected"):
        load_checkpoint(path)


def test_plain_pickle_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"w": [1, 2]}, protocol=2))
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint(tmp_path / "x.pkl")


# --- broken input ---------------------------------------------------------------------------------


def assert_checkpoint_error(path: Path, match: str | None = None) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    assert info.value.exit_code == 2


def test_missing_directory_and_empty(tmp_path: Path) -> None:
    assert_checkpoint_error(tmp_path / "nope.pt", "no such file")
    assert_checkpoint_error(tmp_path, "directory")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert_checkpoint_error(tmp_path / "empty.pt", "empty")


def test_permission_denied(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "locked.pt"
    torch.save({"w": torch.ones(1)}, path)
    real_open = Path.open

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        # chmod 000 does not stop root (CI containers), so simulate what the OS would say.
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    assert_checkpoint_error(path, "permission denied")


@pytest.mark.parametrize("save_kwargs", FORMATS)
@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.3, 0.5, 0.9, 0.999])
def test_truncated_files(tmp_path: Path, save_kwargs: dict[str, Any], fraction: float) -> None:
    source = tmp_path / "full.pt"
    torch.save(tiny_model().state_dict(), source, **save_kwargs)
    data = source.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: max(1, int(len(data) * fraction))])
    assert_checkpoint_error(cut)


def test_random_bytes(tmp_path: Path) -> None:
    for seed in range(5):
        path = tmp_path / f"random{seed}.pt"
        path.write_bytes(random.Random(seed).randbytes(4096))
        assert_checkpoint_error(path)


def rewrite_zip(source: Path, target: Path, drop: str) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if not info.filename.endswith(drop):
                new.writestr(info, old.read(info))
    return target


def test_zip_with_missing_members(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "full.pt")
    assert_checkpoint_error(rewrite_zip(tmp_path / "full.pt", tmp_path / "a.pt", "data/0"))
    assert_checkpoint_error(rewrite_zip(tmp_path / "full.pt", tmp_path / "b.pt", "data.pkl"))


@pytest.mark.parametrize("save_kwargs", FORMATS)
@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([torch.ones(1)], "holds a list"),
        ({"epoch": 3, "lr": 0.1}, "top-level keys: 'epoch', 'lr'"),
        ({}, "top-level keys: \\(none\\)"),
        ({"model": {"w": torch.ones(1), "n": 2}}, "top-level keys: 'model'"),
    ],
)
def test_content_without_a_state_dict(
    tmp_path: Path, save_kwargs: dict[str, Any], content: Any, match: str
) -> None:
    torch.save(content, tmp_path / "c.pt", **save_kwargs)
    assert_checkpoint_error(tmp_path / "c.pt", match)


# --- safetensors ----------------------------------------------------------------------------------


def test_safetensors_with_ssc_metadata(tmp_path: Path) -> None:
    state = {"a.weight": torch.randn(3, 2), "module_free": torch.arange(4)}
    info = {"arch": "swrn", "arch_kwargs": {"depth": 10}, "metadata": {"epochs": 1}}
    save_file(state, tmp_path / "w.safetensors", metadata={"ssc": json.dumps(info)})
    loaded = load_checkpoint(tmp_path / "w.safetensors")
    assert (loaded.format, loaded.container, loaded.arch) == ("safetensors", "ssc", "swrn")
    assert loaded.arch_kwargs == {"depth": 10} and loaded.metadata == {"epochs": 1}
    assert_same_tensors(loaded.state_dict, state)


def test_safetensors_save_model(tmp_path: Path) -> None:
    model = tiny_model(depth=16)
    save_model(model, str(tmp_path / "m.safetensors"))
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.container == "state_dict" and loaded.arch is None
    expected = model.state_dict()
    assert set(loaded.state_dict) <= set(expected)  # save_model keeps one name per storage
    for key, tensor in loaded.state_dict.items():
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=0)


def test_safetensors_corrupt_header(tmp_path: Path) -> None:
    save_file({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    data = bytearray((tmp_path / "w.safetensors").read_bytes())
    data[10:14] = b"\xff\xfe!!"
    (tmp_path / "w.safetensors").write_bytes(bytes(data))
    assert_checkpoint_error(tmp_path / "w.safetensors", "safetensors")


# --- atomic writes --------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_leaves_nothing_behind(tmp_path: Path, error: BaseException) -> None:
    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise error

    with pytest.raises(type(error)):
        atomic_write(tmp_path / "new.bin", failing)
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "old.bin").write_bytes(b"previous")
    with pytest.raises(type(error)):
        atomic_write(tmp_path / "old.bin", failing)
    assert [p.name for p in tmp_path.iterdir()] == ["old.bin"]
    assert (tmp_path / "old.bin").read_bytes() == b"previous"


def test_atomic_write_replaces_and_reports_os_errors(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("old")
    atomic_write(tmp_path / "out.txt", lambda tmp: tmp.write_text("new"))
    assert (tmp_path / "out.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(InputError, match="cannot write"):
        atomic_write(tmp_path / "missing" / "out.txt", lambda tmp: tmp.write_text("x"))


def test_save_checkpoint_failure_keeps_existing_file(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "ours.pt"
    save_checkpoint(path, arch="swrn", arch_kwargs={}, state_dict={"w": torch.ones(1)}, metadata={})
    before = path.read_bytes()

    def broken_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f if isinstance(f, str | os.PathLike) else f.name).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(InputError, match="No space left"):
        save_checkpoint(path, arch="swrn", arch_kwargs={}, state_dict=OrderedDict(), metadata={})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ours.pt"]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_the_authors_layout_writer_makes_what_the_loader_expects(
    tmp_path: Path, legacy: bool
) -> None:
    from soft_share_cli.checkpoints.testing import save_authors_checkpoint

    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    previous = sys.modules.get("utils")
    path = tmp_path / "run.pth.tar"
    save_authors_checkpoint(
        model, path, legacy=legacy, history=[(2.0, 40.0, 55.5), (1.0, 70.0, 61.0)]
    )
    assert sys.modules.get("utils") is previous  # the stand-in was only there while pickling
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind
    loaded = load_checkpoint(path)
    assert loaded.format == ("legacy" if legacy else "zip")
    assert loaded.container == "authors-training" and loaded.stripped_prefix == "module."
    assert loaded.placeholders == ("utils.RecorderMeter",)
    assert loaded.metadata == {"epoch": 2, "best_val_accuracy": 61.0}
    assert_same_tensors(loaded.state_dict, before)  # the weights are the model's, unmoved
    groups = loaded.extras["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.0, 5e-4] and groups[0]["nesterov"]
    momentum = loaded.extras["optimizer"]["state"]
    assert len(momentum) == len(list(model.parameters()))
    assert all(float(s["momentum_buffer"].abs().max()) > 0 for s in momentum.values())
