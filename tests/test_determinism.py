"""The same command on the same input prints byte-identical JSON; only ``timing`` may differ.

``ssc analyze --json`` is covered by test_analysis.py::test_json_is_deterministic (it has no
timings at all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
ALIGNED = str(SAMPLES / "swrn28-1-4_digits_align.pt")


def twice(ssc: Any, *args: str) -> tuple[str, str]:
    first, second = ssc(*args), ssc(*args)
    assert first.code == second.code == 0, first.err + second.err
    return first.out, second.out


def assert_identical_but_timing(first: str, second: str, timing_keys: set[str]) -> None:
    # timing is the last key: everything before it must match byte for byte.
    head_a, marker, _ = first.partition('\n  "timing": ')
    head_b, _, _ = second.partition('\n  "timing": ')
    assert marker and head_a == head_b
    a, b = json.loads(first), json.loads(second)
    assert list(a)[-1] == "timing" and set(a["timing"]) == timing_keys == set(b["timing"])
    assert not {"seconds", "throughput"} & set(a)  # no wall time outside timing


def test_eval_json(ssc) -> None:
    first, second = twice(ssc, "eval", ALIGNED, "--data", "digits?limit=100", "--json")
    assert_identical_but_timing(first, second, {"seconds", "throughput"})


def test_info_json(ssc) -> None:
    first, second = twice(ssc, "info", ALIGNED, "--json")
    assert first == second


def test_train_json_and_weights(ssc, tmp_path: Path) -> None:
    out = tmp_path / "tiny.pt"
    args = ("train", "--data", "digits?limit=200", "--depth", "16", "--templates", "2")
    args += ("--epochs", "2", "--augment", "-o", str(out), "--json")
    first = ssc(*args)
    weights = torch.load(out, weights_only=True)["state_dict"]
    second = ssc(*args)
    assert first.code == second.code == 0
    assert_identical_but_timing(first.out, second.out, {"seconds", "epoch_seconds"})
    report = json.loads(first.out)
    assert all("seconds" not in epoch for epoch in report["history"])
    again = torch.load(out, weights_only=True)["state_dict"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_fold_json(ssc, tmp_path: Path) -> None:
    args = ("fold", ALIGNED, "-o", str(tmp_path / "f.safetensors"), "--data", "digits?limit=100")
    first, second = twice(ssc, *args, "--materialize", str(tmp_path / "m.pt"), "--json")
    assert_identical_but_timing(first, second, {"seconds"})


def test_task_train_and_eval_json(ssc, tmp_path: Path) -> None:
    out = tmp_path / "maze.pt"
    args = ("train", "--data", "maze:size=3,count=48", "--arch", "sfcn", "--blocks", "2")
    args += ("--channels", "4", "--templates", "2", "--epochs", "2", "-o", str(out), "--json")
    first, second = ssc(*args), ssc(*args)
    assert first.code == second.code == 0, first.err
    assert_identical_but_timing(first.out, second.out, {"seconds", "epoch_seconds"})
    assert all("seconds" not in epoch for epoch in json.loads(first.out)["history"])
    evaluated = twice(ssc, "eval", str(out), "--data", "maze:size=4,count=32", "--json")
    assert_identical_but_timing(*evaluated, {"seconds", "throughput"})


def test_written_files_are_byte_identical(ssc, tmp_path: Path) -> None:
    # safetensors writes its metadata map in a random order: ssc sorts it (files._canonical_header)
    outputs = []
    for run in ("a", "b"):
        folded, plain = tmp_path / f"{run}.safetensors", tmp_path / f"{run}.pt"
        result = ssc("fold", ALIGNED, "-o", str(folded), "--materialize", str(plain))
        assert result.code == 0, result.err
        outputs.append((folded.read_bytes(), plain.read_bytes()))
    assert outputs[0] == outputs[1]
    again = ssc("info", str(tmp_path / "a.safetensors"), "--json")
    assert again.code == 0 and json.loads(again.out)["container"] == "ssc-folded"
