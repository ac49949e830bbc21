"""End-to-end CLI tests: the sample checkpoints, exit codes, one-line errors, no partial files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"


def test_help_and_version_do_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from soft_share_cli.cli import main\n"
        "for args in (['--help'], ['--version'], ['eval', '--help']):\n"
        "    try: main(args)\n"
        "    except SystemExit as e: assert e.code == 0, e.code\n"
        "heavy = {'torch', 'matplotlib', 'sklearn', 'networkx', 'numpy', 'scipy'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "soft_share_cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "ssc, version" in out.stdout


@pytest.mark.parametrize(
    "name",
    [
        "swrn28-1-4_digits_align.pt",
        "swrn28-1-4_digits.pt",
        "authors_swrn28-1-4_digits_align.pth.tar",
        "authors_legacy_swrn28-1-4_digits.pth.tar",
    ],
)
def test_eval_on_each_sample_reports_the_listed_accuracy(ssc, manifest, name: str) -> None:
    run = ssc("eval", str(SAMPLES / name), "--data", "digits", "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert report["top1"] == manifest[name]["test_top1"]
    assert report["samples"] == 360
    assert report["architecture"] == "SWRN 28-1-4 (10 classes, 1 input channel)"
    # the README of the samples lists the same figure
    listed = f"| {manifest[name]['test_top1']:.2f} % |"
    assert any(
        name in line and listed in line for line in (SAMPLES / "README.md").read_text().splitlines()
    )


def test_samples_fit_the_size_budget() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.iterdir())
    assert total < 25e6


def test_info_on_the_authors_layout(ssc) -> None:
    run = ssc("info", str(SAMPLES / "authors_legacy_swrn28-1-4_digits.pth.tar"), "--json")
    assert run.code == 0, run.err
    info = run.json()
    assert info["format"] == "legacy"
    assert info["container"] == "authors-training"
    assert info["stripped_prefix"] == "module."
    assert info["placeholders"] == ["utils.RecorderMeter"]
    assert info["architecture"]["source"] == "inferred"
    assert info["architecture"]["kwargs"] == {
        "depth": 28,
        "width": 1,
        "num_templates": 4,
        "num_classes": 10,
        "in_channels": 1,
    }
    from soft_share_cli.models.wrn import SWRN

    model = SWRN(28, 1, 4, num_classes=10, in_channels=1)
    assert info["unique_parameters"] == sum(p.numel() for p in model.parameters())


def test_human_report_is_a_table(ssc) -> None:
    run = ssc("eval", str(SAMPLES / "swrn28-1-4_digits.pt"), "--data", "digits")
    assert run.code == 0
    assert "top-1" in run.out and "98.89 %" in run.out


def _hostile(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Payload()}, path)


def test_hostile_checkpoint_is_refused_with_exit_3_and_nothing_runs(ssc, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    bad = tmp_path / "bad.pt"
    _hostile(bad, marker)
    for command in (("info", str(bad)), ("eval", str(bad), "--data", "digits")):
        run = ssc(*command)
        assert run.code == 3
        assert run.err.startswith("Error: ") and run.err.count("\n") == 1
        assert "system" in run.err
        assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), ""),
        (lambda p: p.write_bytes((SAMPLES / "swrn28-1-4_digits.pt").read_bytes()[:5000]), ""),
    ],
    ids=["missing", "directory", "empty", "random", "truncated"],
)
def test_bad_files_give_one_line_and_exit_2(ssc, tmp_path: Path, make, expected: str) -> None:
    path = tmp_path / "ckpt.pt"
    make(path)
    run = ssc("eval", str(path), "--data", "digits")
    assert run.code == 2, run.err
    assert run.err.startswith("Error: ") and run.err.count("\n") == 1
    assert expected in run.err.lower()
    assert "Traceback" not in run.err


def test_mismatched_shapes_and_unknown_architecture(ssc, tmp_path: Path) -> None:
    from soft_share_cli.models.layers import SConv2d, TemplateBank

    state = torch.load(SAMPLES / "swrn28-1-4_digits.pt", weights_only=True)["state_dict"]
    state["classifier.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad_shape.pt")
    run = ssc("eval", str(tmp_path / "bad_shape.pt"), "--data", "digits")
    assert run.code == 2 and "classifier.bias" in run.err

    bank = TemplateBank(3, 10, 10, 3)
    net = torch.nn.ModuleDict({"bank": bank, "conv2": SConv2d(bank), "conv3": SConv2d(bank)})
    torch.save(net.state_dict(), tmp_path / "readme_net.pt")
    run = ssc("eval", str(tmp_path / "readme_net.pt"), "--data", "digits")
    assert run.code == 2 and "known architecture" in run.err
    info = ssc("info", str(tmp_path / "readme_net.pt"), "--json").json()
    assert info["architecture"] is None and "known architecture" in info["architecture_error"]


def test_debug_shows_the_traceback(ssc, tmp_path: Path) -> None:
    run = ssc("eval", str(tmp_path / "nope.pt"), "--data", "digits", "--debug")
    assert run.code == 2 and "Traceback" in run.err


def test_bad_data_spec_and_usage_errors(ssc) -> None:
    ckpt = str(SAMPLES / "swrn28-1-4_digits.pt")
    run = ssc("eval", ckpt, "--data", "imagenet:/nowhere")
    assert run.code == 2 and run.err.startswith("Error: ")
    run = ssc("eval", ckpt)
    assert run.code == 2 and "--data" in run.err
    run = ssc("eval", ckpt, "--data", "cifar10:/definitely/missing")
    assert run.code == 2


def test_channel_mismatch_between_data_and_model(ssc, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "rgb.npz"
    np.savez(data, x=rng.normal(size=(8, 3, 8, 8)).astype(np.float32), y=np.arange(8) % 10)
    run = ssc("eval", str(SAMPLES / "swrn28-1-4_digits.pt"), "--data", f"npz:{data}")
    assert run.code == 2 and "input channel" in run.err


def test_train_then_eval_reproduces_the_recorded_accuracy(ssc, tmp_path: Path) -> None:
    out = tmp_path / "tiny.pt"
    run = ssc(
        "train",
        "--data",
        "digits",
        "--depth",
        "16",
        "--templates",
        "2",
        "--epochs",
        "2",
        "-o",
        str(out),
        "--json",
    )
    assert run.code == 0, run.err
    trained = run.json()
    assert trained["architecture"] == "SWRN 16-1-2 (10 classes, 1 input channel)"
    assert len(trained["history"]) == 2
    evaluated = ssc("eval", str(out), "--data", "digits", "--json").json()
    assert evaluated["top1"] == trained["test_top1"] == evaluated["recorded_top1"]
    info = ssc("info", str(out), "--json").json()
    assert info["metadata"]["command"].startswith("ssc ")
    assert info["metadata"]["config"]["epochs"] == 2


def test_train_to_an_unwritable_place_leaves_nothing(ssc, tmp_path: Path) -> None:
    target = tmp_path / "missing_dir" / "out.pt"
    run = ssc("train", "--data", "digits", "--depth", "16", "--epochs", "1", "-o", str(target))
    assert run.code == 2 and run.err.startswith("Error: ")
    assert "does not exist" in run.err and "epoch" not in run.out  # refused before training
    assert not target.parent.exists()


def test_cifar_reader_refuses_code(ssc, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    run = ssc("eval", str(SAMPLES / "swrn28-1-4_digits.pt"), "--data", f"cifar10:{tmp_path}")
    assert run.code == 2 and not marker.exists()


def test_every_option_of_every_command_says_what_it_does() -> None:
    import click

    from soft_share_cli.cli import cli

    missing = [
        f"ssc {name} {param.opts[0]}"
        for name, command in cli.commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert not missing, missing


def test_piped_output_keeps_whole_names_and_never_cuts_cells() -> None:
    import os
    import subprocess
    import sys

    sample = str(SAMPLES / "authors_swrn28-1-4_digits_align.pth.tar")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    command = [sys.executable, "-m", "soft_share_cli", "analyze", sample]
    piped = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    assert "│ stage_3.3.conv2 │" in piped and "…" not in piped
    narrow = subprocess.run(
        command, capture_output=True, text=True, env={**env, "COLUMNS": "60"}, check=True
    ).stdout
    assert "…" not in narrow and max(len(line) for line in narrow.splitlines()) <= 60
