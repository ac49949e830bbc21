"""Folds of networks whose outputs are not class scores: output fidelity instead of accuracy.

A small restoration-style network (image in, image out) built from one template bank is folded
with ``--model`` and ``--data``: the report gives the MSE, max |Δ| and PSNR of the folded
network's outputs against the original's, recomputed here independently from the written file.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch

import soft_share_cli
from soft_share_cli.data.loaders import load_data
from soft_share_cli.evaluation.fidelity import compare_outputs, psnr
from soft_share_cli.models.user import load_factory

DENOISER = textwrap.dedent(
    """
    import torch.nn.functional as F
    from torch import nn
    from soft_share_cli.models.layers import SConv2d, TemplateBank


    class Denoiser(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 6, 3, padding=1)
            self.bank = TemplateBank(2, 6, 6, 3)
            self.body = nn.ModuleList(SConv2d(self.bank, stride=1, padding=1) for _ in range(3))
            self.head = nn.Conv2d(6, 1, 3, padding=1)

        def forward(self, x):
            h = F.relu(self.stem(x))
            for conv in self.body:
                h = h + F.relu(conv(h))
            return x + self.head(h)
    """
)


@pytest.fixture
def denoiser(tmp_path: Path) -> tuple[str, Path, torch.nn.Module]:
    """(spec, checkpoint, network): three body layers, the last two exactly parallel."""
    source = tmp_path / "denoiser.py"
    source.write_text(DENOISER)
    spec = f"{source}:Denoiser"
    torch.manual_seed(0)
    model = load_factory(spec)().eval()
    with torch.no_grad():
        for layer, a in zip(model.body, ([1.0, 0.2], [0.5, -1.0], [-1.0, 2.0]), strict=True):
            layer.coefficients.copy_(torch.tensor(a).reshape(-1, 1, 1, 1, 1))
    checkpoint = tmp_path / "denoiser.pt"
    torch.save(model.state_dict(), checkpoint)
    return spec, checkpoint, model


def test_an_image_to_image_fold_reports_output_fidelity(ssc, tmp_path, denoiser) -> None:
    spec, checkpoint, original = denoiser
    out = tmp_path / "folded.safetensors"
    run = ssc("fold", str(checkpoint), "--model", spec, "-o", str(out), "--data",
              "digits?limit=40", "--json")  # fmt: skip
    assert run.code == 0, run.err
    report = run.json()
    assert report["data"] is None and report["loops"]
    fidelity = report["fidelity"]
    assert fidelity["spec"] == "digits?limit=40" and fidelity["samples"] == 40
    # independently: the written file's outputs against the original's on the same inputs
    folded = soft_share_cli.load_folded(out, model=spec)
    x = load_data("digits?limit=40", "test").x
    with torch.no_grad():
        diff = (folded(x).double() - original(x).double()).flatten()
        reference = original(x).double()
    mse = float(diff.square().mean())
    assert fidelity["folded"]["mse"] == pytest.approx(mse, rel=1e-6, abs=1e-18)
    assert fidelity["folded"]["max_abs"] == pytest.approx(float(diff.abs().max()), abs=1e-12)
    assert mse < 1e-10  # an exact fold: parallel layers
    expected_psnr = psnr(mse, float(reference.max() - reference.min()))
    got = fidelity["folded"]["psnr"]
    assert (got is None and expected_psnr is None) or got == pytest.approx(expected_psnr)
    # digits labels are one class per image, not images: no target figures
    assert fidelity["folded"]["target_mse"] is None
    text = ssc("fold", str(checkpoint), "--model", spec, "-o", str(tmp_path / "t.safetensors"),
               "--data", "digits?limit=40")  # fmt: skip
    assert text.code == 0 and "Output fidelity on digits?limit=40" in text.out, text.err


@pytest.mark.parametrize("gate", [["--max-drop", "1"], ["--threshold", "auto", "--max-drop", "1"]])
def test_accuracy_gates_are_refused_for_outputs_that_are_not_scores(ssc, tmp_path, denoiser, gate):
    spec, checkpoint, _ = denoiser
    out = tmp_path / "folded.safetensors"
    run = ssc("fold", str(checkpoint), "--model", spec, "-o", str(out), "--data", "digits", *gate)
    assert run.code == 2 and "not class scores" in run.err and not out.exists(), run.err


def test_fidelity_figures_and_targets() -> None:
    """compare_outputs on known answers: a constant offset, and targets shaped like outputs."""
    from soft_share_cli.data.loaders import Dataset

    class Shift(torch.nn.Module):
        def __init__(self, by: float) -> None:
            super().__init__()
            self.by = by

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.by

    x = torch.linspace(0, 1, 2 * 3 * 4).reshape(2, 3, 4)
    data = Dataset(name="ramp", split="test", x=x, y=x.clone(), num_classes=1)
    f = compare_outputs(Shift(0.1), Shift(0.0), data, batch_size=1)
    assert f.samples == 2 and f.mse == pytest.approx(0.01) and f.max_abs == pytest.approx(0.1)
    assert f.psnr == pytest.approx(10 * math.log10(1.0 / 0.01))  # peak: the reference's range 1
    assert f.target_mse == pytest.approx(0.01) and f.reference_target_mse == pytest.approx(0.0)
    same = compare_outputs(Shift(0.0), Shift(0.0), data)
    assert same.mse == 0.0 and same.psnr is None
