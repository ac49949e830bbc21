"""``ssc fold`` end to end: savings, accuracy that ``ssc eval`` confirms, gates, auto, BYO."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from soft_share_cli.folding.swrn import load_folded
from soft_share_cli.folding.swrn_blocks import LoopedBlock

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
ALIGNED = str(SAMPLES / "swrn28-1-4_digits_align.pt")
PLAIN = str(SAMPLES / "swrn28-1-4_digits.pt")


def test_fold_of_the_aligned_sample_saves_and_eval_confirms_its_accuracy(ssc, tmp_path: Path):
    out, plain = tmp_path / "folded.safetensors", tmp_path / "plain.pt"
    run = ssc(
        "fold", ALIGNED, "-o", str(out), "--data", "digits", "--materialize", str(plain), "--json"
    )
    assert run.code == 0, run.err
    report = run.json()
    assert report["passed"] and report["output"] == str(out)
    p = report["params"]
    assert p["folded"] < p["checkpoint_unique"] < p["unshared_equivalent"]
    assert p["savings_vs_checkpoint_pct"] > 30
    assert [b["after"] for b in report["banks"]] == [2, 2, 2]
    assert report["file_bytes"]["folded"] < report["file_bytes"]["checkpoint"]
    assert report["probe"]["max_abs_diff"] < 0.1
    data = report["data"]
    assert data["samples"] == 360 and data["delta_top1"] == pytest.approx(
        data["folded"]["top1"] - data["original"]["top1"]
    )
    # what fold reported for the folded file is what ssc eval measures on the saved file
    evaluated = ssc("eval", str(out), "--data", "digits", "--json").json()
    assert evaluated["top1"] == data["folded"]["top1"] == evaluated["recorded_top1"]
    assert ssc("eval", str(plain), "--data", "digits", "--json").json()["top1"] == evaluated["top1"]
    # the saved network has real loops and exactly the reported parameters
    folded = load_folded(out)
    assert sum(p.numel() for p in folded.parameters()) == p["folded"]
    loops = [m for m in folded.modules() if isinstance(m, LoopedBlock)]
    assert [m.iterations for m in loops] == [3, 3, 3]
    weights = {id(m.weights) for m in folded.modules() if hasattr(m, "weights")}
    assert len(weights) == 3  # one store per bank, two distinct weights in each
    assert sum(folded.bank(i).all_weights().shape[0] for i in (1, 2, 3)) == 6
    # analyze and plot-similarity accept folded files
    analysis = ssc("analyze", str(out), "--json").json()
    assert analysis["loops"] == report["loops"]
    # ... and count what the file stores; re-folding it at the same threshold changes nothing
    assert analysis["params"]["checkpoint_unique"] == analysis["params"]["folded"] == p["folded"]
    assert analysis["params"]["unshared_equivalent"] == p["unshared_equivalent"]
    assert ssc("plot-similarity", str(out), "-o", str(tmp_path / "f.png")).code == 0


def test_fold_without_data_still_checks_function_preservation(ssc, tmp_path: Path) -> None:
    run = ssc("fold", PLAIN, "-o", str(tmp_path / "f.safetensors"), "--threshold", "1", "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert report["data"] is None
    assert report["probe"]["max_abs_diff"] < 1e-4  # nothing merged at tau = 1: exact
    assert report["params"]["folded"] == report["params"]["checkpoint_unique"]


def test_gates_fail_with_exit_1_and_write_nothing(ssc, tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    run = ssc("fold", PLAIN, "-o", str(out), "--threshold", "0.3", "--atol", "1e-6")
    assert run.code == 1 and "--atol" in run.err and not out.exists()
    run = ssc(
        "fold",
        PLAIN,
        "-o",
        str(out),
        "--threshold",
        "0.1",
        "--data",
        "digits",
        "--max-drop",
        "0.5",
        "--json",
    )
    assert run.code == 1 and not out.exists()
    report = run.json()
    assert not report["passed"] and report["output"] is None
    assert -report["data"]["delta_top1"] > 0.5


def test_auto_threshold_picks_the_smallest_network_within_budget(ssc, tmp_path: Path) -> None:
    out, plot = tmp_path / "f.safetensors", tmp_path / "tradeoff.png"
    run = ssc(
        "fold",
        PLAIN,
        "-o",
        str(out),
        "--threshold",
        "auto",
        "--data",
        "digits",
        "--max-drop",
        "1.0",
        "--plot",
        str(plot),
        "--json",
    )
    assert run.code == 0, run.err
    report = run.json()
    rows = report["auto"]
    assert rows[0]["threshold"] == 1.0 and len(rows) > 3
    ok = [r for r in rows if r["within_budget"]]
    assert all((-r["delta_top1"] <= 1.0) == r["within_budget"] for r in rows)
    best = min(ok, key=lambda r: r["parameters"])
    assert report["threshold"] == best["threshold"]
    assert report["params"]["folded"] == best["parameters"]
    assert plot.read_bytes().startswith(b"\x89PNG")
    needs = ssc("fold", PLAIN, "-o", str(out), "--threshold", "auto")
    assert needs.code == 2 and "--data" in needs.err


def test_batchnorm_recalibration_is_reported_next_to_the_plain_fold(ssc, tmp_path: Path) -> None:
    run = ssc(
        "fold",
        PLAIN,
        "-o",
        str(tmp_path / "f.safetensors"),
        "--threshold",
        "0.5",
        "--data",
        "digits",
        "--recalibrate-bn",
        "5",
        "--json",
    )
    assert run.code == 0, run.err
    data = run.json()["data"]
    assert data["recalibrated"] is not None and data["folded"] is not None
    assert data["delta_top1"] == pytest.approx(
        data["recalibrated"]["top1"] - data["original"]["top1"]
    )
    saved = ssc("eval", str(tmp_path / "f.safetensors"), "--data", "digits", "--json").json()
    assert saved["top1"] == data["recalibrated"]["top1"]


def test_unfoldable_inputs_are_clear_errors(ssc, tmp_path: Path) -> None:
    from soft_share_cli.models.wrn import WRN

    torch.save(WRN(10, 1, in_channels=1).state_dict(), tmp_path / "wrn.pt")
    run = ssc("fold", str(tmp_path / "wrn.pt"), "-o", str(tmp_path / "x.safetensors"))
    assert run.code == 2 and "nothing to fold" in run.err
    run = ssc("fold", ALIGNED, "-o", str(tmp_path / "x.safetensors"), "--threshold", "1.5")
    assert run.code == 2
    run = ssc("fold", ALIGNED, "-o", str(tmp_path / "no" / "x.safetensors"))
    assert run.code == 2 and "does not exist" in run.err


USER_NET = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from soft_share_cli.models.layers import SConv2d, TemplateBank

    class ReadmeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 10, 3, padding=1)
            self.bank = TemplateBank(3, 10, 10, 3)
            self.conv2 = SConv2d(self.bank)
            self.conv3 = SConv2d(self.bank)
            self.conv4 = SConv2d(self.bank)
            self.head = nn.Linear(10, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = F.relu(self.conv3(x))
            x = F.relu(self.conv4(x))
            return self.head(x.mean((2, 3)))
    """
)


def test_bring_your_own_network(ssc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "readme_net.py").write_text(USER_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import readme_net  # type: ignore[import-not-found]

    torch.manual_seed(0)
    net = readme_net.ReadmeNet()
    direction = torch.randn(3)
    with torch.no_grad():
        for conv, scale in ((net.conv2, 1.0), (net.conv3, -2.5), (net.conv4, 0.3)):
            conv.coefficients.copy_((scale * direction).view(3, 1, 1, 1, 1))
    torch.save({"model": net.state_dict()}, tmp_path / "mine.pt")
    run = ssc(
        "fold",
        "mine.pt",
        "-o",
        "mine_folded.safetensors",
        "--model",
        "readme_net:ReadmeNet",
        "--json",
    )
    assert run.code == 0, run.err
    report = run.json()
    assert report["probe"]["max_abs_diff"] < 1e-5  # exactly parallel: lossless
    assert report["loops"] == ["bank: conv2-conv4 repeat one layer (A) 3 times"]
    d = 10 * 10 * 9
    assert report["params"]["folded"] == report["params"]["checkpoint_unique"] - 3 * d - 9 + d + 3
    # the folded file evaluates like the original and analyses without the factory
    rng = torch.Generator().manual_seed(1)
    import numpy as np

    np.savez("probe.npz", x=torch.randn(20, 1, 8, 8, generator=rng).numpy(), y=np.arange(20) % 10)
    original = ssc(
        "eval", "mine.pt", "--data", "npz:probe.npz", "--model", "readme_net:ReadmeNet", "--json"
    ).json()
    folded = ssc(
        "eval",
        "mine_folded.safetensors",
        "--data",
        "npz:probe.npz",
        "--model",
        "readme_net:ReadmeNet",
        "--json",
    ).json()
    assert folded["top1"] == original["top1"] and abs(folded["loss"] - original["loss"]) < 1e-5
    needs = ssc("eval", "mine_folded.safetensors", "--data", "npz:probe.npz")
    assert needs.code == 2 and "--model readme_net:ReadmeNet" in needs.err
    analysis = ssc("analyze", "mine_folded.safetensors", "--json").json()
    assert analysis["loops"] == report["loops"]
    assert analysis["banks"][0]["clusters"] == [[0, 1, 2]]
    assert analysis["params"]["checkpoint_unique"] == report["params"]["folded"]
    assert analysis["params"]["folded"] == report["params"]["folded"]
    bad = ssc("fold", "mine.pt", "-o", "x.safetensors", "--model", "readme_net:Nope")
    assert bad.code == 2 and "no attribute" in bad.err
    mat = ssc(
        "fold",
        "mine.pt",
        "-o",
        "x.safetensors",
        "--model",
        "readme_net:ReadmeNet",
        "--materialize",
        "m.pt",
    )
    assert mat.code == 2 and "materialize" in mat.err


def test_info_describes_folded_files(ssc, tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    assert ssc("fold", ALIGNED, "-o", str(out)).code == 0
    info = ssc("info", str(out), "--json").json()
    assert info["container"] == "ssc-folded"
    assert info["architecture_name"].endswith("with loops 3, 3, 3")
    assert info["unique_parameters"] == sum(p.numel() for p in load_folded(out).parameters())


def test_options_that_cannot_apply_are_refused(ssc, tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    cases = [
        (("--max-drop", "1"), "--max-drop needs --data"),
        (("--device", "cuda"), "--device cuda applies to the evaluation on --data"),
        (("--plot", str(tmp_path / "t.png")), "needs --threshold auto"),
        (("--recalibrate-bn", "2"), "--recalibrate-bn needs --data"),
        (("--batch-size", "7"), "--batch-size applies to the evaluation on --data"),
        (("--signed",), "a fold is the same without it"),
    ]
    for args, message in cases:
        run = ssc("fold", ALIGNED, "-o", str(out), *args)
        assert run.code == 2 and message in run.err, run.err
        assert run.err.count("\n") == 1
    misnamed = ssc("fold", ALIGNED, "-o", str(tmp_path / "f.pt"))
    assert misnamed.code == 2 and "name it *.safetensors" in misnamed.err
    plain = ssc("fold", ALIGNED, "-o", str(out), "--materialize", str(tmp_path / "p.safetensors"))
    assert plain.code == 2 and "name it *.pt" in plain.err
    assert list(tmp_path.iterdir()) == []


def test_both_deltas_are_labelled_after_a_recalibration(ssc, tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    args = ("--data", "digits?limit=100", "--recalibrate-bn", "2", "--threshold", "0.8")
    run = ssc("fold", PLAIN, "-o", str(out), *args)
    assert run.code == 0, run.err
    text = " ".join(run.out.split())
    report = ssc("fold", PLAIN, "-o", str(tmp_path / "g.safetensors"), *args, "--json").json()
    data = report["data"]
    before = data["folded"]["top1"] - data["original"]["top1"]
    assert f"Δ top-1 (folded − original): {before:+.2f} points" in text
    assert (
        f"Δ top-1 (folded, BN recalibrated − original): {data['delta_top1']:+.2f} points"
        " (the network written)" in text
    )
