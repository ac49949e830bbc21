"""``ssc train`` interrupted (Ctrl-C) and resumed: no finished epoch lost, bit-identical weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import soft_share_cli.training.classification as training
import soft_share_cli.training.resume as resume_module
from soft_share_cli.training.resume import partial_path

# --augment: the shuffling generator also draws crops, so its saved state really matters.
ARGS = ("--data", "digits?limit=240", "--depth", "16", "--templates", "2", "--batch-size", "64")
ARGS += ("--epochs", "3", "--augment", "--seed", "3")


def train(ssc: Any, out: Path, *extra: str) -> Any:
    return ssc("train", *ARGS, "-o", str(out), "--json", *extra)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key  # bit for bit


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soft_share_cli.cli import _state, main

    out = tmp_path_factory.mktemp("full") / "full.pt"
    _state["debug"] = False
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *ARGS, "-o", str(out), "--json"])
    assert exit_info.value.code in (0, None)
    assert not partial_path(out).exists()  # removed once the run completed
    return out


def interrupt_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Ctrl-C right after the state of ``epoch`` was saved (the callback of that epoch)."""
    save = resume_module.save_state

    def save_then_interrupt(path: Any, state: Any, *args: Any) -> None:
        save(path, state, *args)
        if state.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume_module, "save_state", save_then_interrupt)


@pytest.mark.parametrize("epoch", [1, 2])
def test_interrupted_run_resumes_to_the_same_weights(
    ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted, epoch: int
) -> None:
    full = uninterrupted
    out = tmp_path / "run.pt"
    out.write_bytes(b"previous")  # an earlier result must survive the interruption
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, epoch)
        run = train(ssc, out)
    # stderr is not a terminal here: a line per finished epoch (train --json), then one error line
    lines = run.err.splitlines()
    assert run.code == 130 and run.out == "" and lines[-1].startswith("Error: ")
    assert [line.split()[1] for line in lines[:-1]] == [f"{e}/3" for e in range(1, len(lines))]
    assert f"the {epoch} finished epoch(s) are kept in {partial_path(out)}" in run.err
    assert "--resume" in run.err
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt", "run.pt.partial"]

    resumed = train(ssc, out, "--resume")
    assert resumed.code == 0, resumed.err
    report = resumed.json()
    assert report["resumed_epochs"] == epoch and len(report["history"]) == 3
    assert len(report["timing"]["epoch_seconds"]) == 3
    assert_same_weights(out, full)
    assert not partial_path(out).exists()
    # The history (timings aside) is the uninterrupted run's too.
    assert weights(out).keys() == weights(full).keys()
    meta, full_meta = (torch.load(p, weights_only=True)["metadata"] for p in (out, full))
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in meta["history"]]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in full_meta["history"]]
    assert meta["test_top1"] == full_meta["test_top1"]


def test_interrupted_in_the_middle_of_an_epoch(
    ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted
) -> None:
    """Ctrl-C during epoch 2's batches: epoch 1 is kept, epoch 2 is redone from its start."""
    full = uninterrupted
    batches = training._batches
    calls = []

    class Interrupting(list):
        def __iter__(self) -> Any:
            yield self[0]
            raise KeyboardInterrupt

    def interrupting_batches(*args: Any) -> list[torch.Tensor]:
        calls.append(1)
        made = batches(*args)
        return Interrupting(made) if len(calls) == 2 else made

    out = tmp_path / "run.pt"
    with monkeypatch.context() as patch:
        patch.setattr(training, "_batches", interrupting_batches)
        run = train(ssc, out)
    assert run.code == 130 and "the 1 finished epoch(s)" in run.err and not out.exists()
    assert train(ssc, out, "--resume").code == 0
    assert_same_weights(out, full)


def test_interrupted_before_the_first_epoch_leaves_nothing(
    ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_batches", interrupted)
    out = tmp_path / "run.pt"
    run = train(ssc, out)
    assert run.code == 130 and "nothing was written" in run.err and run.err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_write_interrupted_while_saving_the_state_keeps_the_previous_state(
    ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted
) -> None:
    """Ctrl-C in the middle of writing epoch 2's state: epoch 1's file is intact and resumes."""
    full = uninterrupted
    real_save = torch.save
    saves = []

    def half_written(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        saves.append(f)
        if len(saves) == 2:  # epoch 2's state
            name = f if isinstance(f, str | os.PathLike) else f.name  # torch.save: an open file
            Path(name).write_bytes(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt
        real_save(obj, f, *args, **kwargs)

    out = tmp_path / "run.pt"
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", half_written)
        run = train(ssc, out)
    assert run.code == 130 and "the 1 finished epoch(s)" in run.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt.partial"]  # no temp file
    assert train(ssc, out, "--resume").code == 0
    assert_same_weights(out, full)


def test_resume_refusals(ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run.pt"
    run = train(ssc, out, "--resume")
    assert run.code == 2 and "nothing to resume" in run.err

    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)
        assert train(ssc, out).code == 130
    run = train(ssc, out)  # a fresh run would overwrite the finished epoch: refused
    assert run.code == 2 and "pass --resume to continue it" in run.err
    run = ssc("train", *ARGS, "--lr", "0.05", "-o", str(out), "--resume")
    assert run.code == 2 and "lr 0.1 -> 0.05" in run.err and "belongs to another run" in run.err
    run = ssc("train", *ARGS[:1], "digits?limit=200", *ARGS[2:], "-o", str(out), "--resume")
    assert run.code == 2 and "data 'digits?limit=240' -> 'digits?limit=200'" in run.err
    assert run.err.count("\n") == 1

    # The state file is read like any downloaded checkpoint: code in it is refused.
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self) -> Any:
            import os

            return os.system, (f"touch {marker}",)

    torch.save({"model": {"w": torch.ones(1)}, "format": Payload()}, partial_path(out))
    run = train(ssc, out, "--resume")
    assert run.code == 3 and not marker.exists()
    partial_path(out).write_bytes(b"garbage")
    assert train(ssc, out, "--resume").code == 2
    torch.save({"model": {"w": torch.ones(1)}}, partial_path(out))
    run = train(ssc, out, "--resume")
    assert run.code == 2 and "not the saved state of an interrupted" in run.err


def test_the_state_file_is_an_ordinary_checkpoint(
    ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run.pt"
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 2)
        assert train(ssc, out).code == 130
    info = ssc("info", str(partial_path(out)), "--json").json()
    assert info["container"] == "wrapped:model" and info["placeholders"] == []
    assert info["architecture_name"] == "SWRN 16-1-2 (10 classes, 1 input channel)"
    state = torch.load(partial_path(out), weights_only=True)  # no custom globals either
    assert state["format"] == "ssc-train-state" and state["epoch"] == 2
    assert [e["epoch"] for e in state["history"]] == [1, 2]


# A task network (maze solver, AdamW with a per-step schedule) resumes the same way.
TASK_ARGS = ("--data", "maze:size=3,count=80", "--arch", "sfcn", "--blocks", "2")
TASK_ARGS += ("--channels", "4", "--templates", "2", "--epochs", "3", "--batch-size", "32")
TASK_ARGS += ("--align", "1", "--supervise", "2", "--seed", "5")


def test_an_interrupted_task_run_resumes_to_the_same_weights(
    ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = tmp_path / "full.pt"
    assert ssc("train", *TASK_ARGS, "-o", str(full), "--json").code == 0
    out = tmp_path / "run.pt"
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 2)
        run = ssc("train", *TASK_ARGS, "-o", str(out), "--json")
    assert run.code == 130 and "the 2 finished epoch(s) are kept" in run.err
    assert not out.exists() and partial_path(out).exists()
    refused = ssc("train", *TASK_ARGS[:-1], "6", "-o", str(out), "--resume")
    assert refused.code == 2 and "seed 5 -> 6" in refused.err
    resumed = ssc("train", *TASK_ARGS, "-o", str(out), "--resume", "--json")
    assert resumed.code == 0, resumed.err
    report = resumed.json()
    assert report["resumed_epochs"] == 2 and [e["steps"] for e in report["history"]] == [3, 6, 9]
    assert_same_weights(out, full)
    assert not partial_path(out).exists()
    meta, full_meta = (torch.load(p, weights_only=True)["metadata"] for p in (out, full))
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in meta["history"]]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in full_meta["history"]]
    assert meta["steps_to"] == full_meta["steps_to"]


@pytest.mark.parametrize(
    "args, name",
    [
        (("--data", "prefix-sums:length=8,count=60", "--arch", "rfcn", "--blocks", "3",
          "--channels", "4", "--progressive", "0.5", "--epochs", "2"),
         "RFCN 1x4 looped 3 times, projection block (2 classes, 1 input channel, 1-d)"),
        (TASK_ARGS, "SFCN 2x4, K=2 (2 classes, 3 input channels)"),
    ],
)  # fmt: skip
def test_a_task_networks_state_file_is_read_and_scored_like_its_checkpoint(
    ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], name: str
) -> None:
    """The train state stores the config, not the network's arguments: ssc info and eval
    rebuild the network from the config and the shapes, and score it as it was."""
    out = tmp_path / "run.pt"
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)
        assert ssc("train", *args, "-o", str(out), "--json").code == 130
    partial = str(partial_path(out))
    info = ssc("info", partial, "--json")
    assert info.code == 0, info.err
    assert info.json()["architecture_name"] == name
    data = args[args.index("--data") + 1]
    run = ssc("eval", partial, "--data", data, "--json")
    assert run.code == 0, run.err
    state = torch.load(partial, weights_only=True)
    assert run.json()["exact"] == pytest.approx(state["history"][-1]["test_exact"])
