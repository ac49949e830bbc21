"""Issue 11, section 3: sizes a file declares are checked before they drive an allocation.

Every case is forged at test time from a real file (a folded SWRN, a looped maze network, an
ssc checkpoint, hand-written pickles) and must end in exit 2 with one ``Error:`` line naming the
limit or the malformed field -- never exit 4, never a build of what the file asks for.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from soft_share_cli import limits
from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
ALIGNED = SAMPLES / "swrn28-1-4_digits_align.pt"
MAZE = SAMPLES / "tasks" / "maze_shared.pt"


def one_error(run: Any, *words: str) -> None:
    assert run.code == 2, (run.code, run.err)
    assert run.err.startswith("Error: ") and run.err.count("\n") == 1, run.err
    assert "Traceback" not in run.err
    for word in words:
        assert word in run.err, (word, run.err)


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from soft_share_cli.cli import main

    root = tmp_path_factory.mktemp("limits")
    out = {"swrn": root / "swrn.safetensors", "looped": root / "looped.safetensors"}
    for source, target in ((ALIGNED, out["swrn"]), (MAZE, out["looped"])):
        with pytest.raises(SystemExit) as done:
            main(["fold", str(source), "-o", str(target), "--threshold", "0.9"])
        assert done.value.code == 0
    return out


def forge(source: Path, target: Path, key: str, edit: Any) -> Path:
    """Copy the folded file ``source`` with its header entry ``key`` edited."""
    with safe_open(str(source), "pt") as reader:
        meta = dict(reader.metadata())
        tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    if callable(edit):
        program = json.loads(meta[key])
        result = edit(program)
        meta[key] = result if isinstance(result, str) else json.dumps(program)
    else:
        meta[key] = edit
    save_file(tensors, str(target), metadata=meta)
    return target


def _set(**values: Any) -> Any:
    return lambda program: program.update(values)


SWRN_FORGERIES = {
    "depth": _set(depth=6 * 10**8 + 4),
    "width": _set(width=10**5),
    "classes": _set(num_classes=10**9),
    "in-channels": _set(in_channels=10**9),
    "bool-width": _set(width=True),
    "float-width": _set(width=1.5),
    "infinite-depth": lambda p: json.dumps(p).replace('"depth": 28', '"depth": Infinity'),
    "deep-json": lambda p: "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("name", sorted(SWRN_FORGERIES))
def test_forged_folded_swrn_programs_are_refused(ssc, folded, tmp_path, name) -> None:
    target = forge(folded["swrn"], tmp_path / f"{name}.safetensors", "program",
                   SWRN_FORGERIES[name])
    for command in ("info", "analyze"):
        one_error(ssc(command, str(target)))


def test_forged_bank_counts_are_refused(ssc, folded, tmp_path) -> None:
    def clusters(program: dict) -> None:
        bank = next(iter(program["banks"].values()))
        bank["clusters"] = 10**7

    def templates(program: dict) -> None:
        bank = next(iter(program["banks"].values()))
        bank["K"] = 10**7

    for name, edit in (("clusters", clusters), ("templates", templates)):
        target = forge(folded["swrn"], tmp_path / f"{name}.safetensors", "program", edit)
        one_error(ssc("info", str(target)))


LOOPED_FORGERIES = {
    "width": _set(width=10**5),
    "classes": _set(num_classes=10**9),
    "iterations": lambda p: p["segments"][-1].update(iterations=10**9),
    "infinite-width": lambda p: json.dumps(p).replace(
        f'"width": {p["width"]}', '"width": Infinity'
    ),
}


@pytest.mark.parametrize("name", sorted(LOOPED_FORGERIES))
def test_forged_looped_programs_are_refused(ssc, folded, tmp_path, name) -> None:
    target = forge(folded["looped"], tmp_path / f"{name}.safetensors", "program",
                   LOOPED_FORGERIES[name])
    one_error(ssc("info", str(target)))


def test_iteration_limit_is_named(ssc, folded, tmp_path) -> None:
    target = forge(folded["looped"], tmp_path / "it.safetensors", "program",
                   LOOPED_FORGERIES["iterations"])
    one_error(ssc("info", str(target)), "MAX_ITERATIONS")


def test_deep_json_report_is_refused(ssc, folded, tmp_path) -> None:
    deep = '{"a":' * 50_000 + "1" + "}" * 50_000
    target = forge(folded["swrn"], tmp_path / "report.safetensors", "report", deep)
    one_error(ssc("info", str(target)), "MAX_NESTING")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 6 * 10**8 + 4},
        {"width": 10**6},
        {"width": 1.5},
        {"width": float("nan")},
        {"width": "4"},
        {"width": True},
        {"num_classes": -5},
        {"num_classes": 10**9},
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_forged_arch_kwargs_are_refused_before_building(ssc, tmp_path, kwargs) -> None:
    base = load_checkpoint(ALIGNED)
    target = tmp_path / "forged.pt"
    save_checkpoint(target, arch=base.arch or "swrn",
                    arch_kwargs={**(base.arch_kwargs or {}), **kwargs},
                    state_dict=base.state_dict, metadata={})
    one_error(ssc("eval", str(target), "--data", "digits"))


def test_task_arch_kwargs_are_bounded(ssc, tmp_path) -> None:
    base = load_checkpoint(MAZE)
    for kwargs in ({"blocks": 10**9}, {"width": 10**5}, {"num_templates": 10**8}):
        target = tmp_path / "forged.pt"
        save_checkpoint(target, arch=base.arch or "sfcn",
                        arch_kwargs={**(base.arch_kwargs or {}), **kwargs},
                        state_dict=base.state_dict, metadata={})
        one_error(ssc("eval", str(target), "--data", "maze:size=4,count=8"))


def _zip_with_pickle(path: Path, data: bytes) -> Path:
    """A torch zip checkpoint whose data.pkl is ``data`` (and one real storage beside it)."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(
        path, "w", zipfile.ZIP_STORED
    ) as target:
        for info in source.infolist():
            payload = data if info.filename.endswith("data.pkl") else source.read(info)
            target.writestr(info, payload)
    return path


@pytest.mark.parametrize("depth", [150, 1_000, 100_000])
def test_deeply_nested_pickles_are_refused(ssc, tmp_path, depth) -> None:
    # {"w": [[[...]]]}: protocol 2 with EMPTY_LIST/APPEND, nested ``depth`` levels.
    body = b"\x80\x02}q\x00X\x01\x00\x00\x00w" + b"]" * depth + b"a" * (depth - 1) + b"s."
    pickle.loads(body) if depth < 500 else None  # a well-formed pickle (checked where Python can)
    target = _zip_with_pickle(tmp_path / f"deep{depth}.pt", body)
    for command in ("info", "analyze"):
        one_error(ssc(command, str(target)))


def test_limits_are_plain_integers_and_documented() -> None:
    readme = (SAMPLES.parent / "README.md").read_text()
    for name in ("MAX_KEYS", "MAX_LAYERS_PER_BANK", "MAX_NESTING", "MAX_ITERATIONS",
                 "MAX_IMAGE_PIXELS", "MAX_SAMPLES"):
        value = getattr(limits, name)
        assert type(value) is int and value > 0
        assert f"`{name}`" in readme or name in readme
    with pytest.raises(ValueError):
        limits.count(True, "x", limit=10, name="MAX_KEYS")
    with pytest.raises(ValueError):
        limits.count(2.0, "x", limit=10, name="MAX_KEYS")
    with pytest.raises(Exception, match="MAX_KEYS"):
        limits.count(11, "x", limit=10, name="MAX_KEYS")
    assert limits.count(10, "x", limit=10, name="MAX_KEYS") == 10


@pytest.mark.parametrize("data", ['"digits"', "[1, 2]", '{"spec": "digits", "folded": 7}',
                                  '{"spec": "digits", "folded": {"top1": "x"}}'])
def test_forged_report_shapes_do_not_crash_eval(ssc, folded, tmp_path, data) -> None:
    def edit(report: dict) -> None:
        report["data"] = json.loads(data)

    target = forge(folded["swrn"], tmp_path / "report.safetensors", "report", edit)
    run = ssc("eval", str(target), "--data", "digits", "--json")
    assert run.code == 0, run.err  # the stored report is provenance only: eval measures anew
    assert run.json()["top1"] > 90
