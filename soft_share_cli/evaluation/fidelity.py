"""How faithfully a folded network reproduces its original where outputs are not class scores.

For networks whose output is not ``(batch, classes)`` — image restoration, dense regression, any
``(batch, ...)`` tensor — a fold is measured by the distance between the two networks' outputs
on real inputs: mean squared error, the largest absolute difference, and the PSNR
``10 log10(peak² / MSE)`` with ``peak`` the range (max − min) of the original's outputs on the
same inputs. When the data's targets have the outputs' shape, the same figures are given
against the targets for each network. Everything is summed on the device; the host syncs once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import DataError, InputError
from soft_share_cli.evaluation.loop import Measured, PassOptions, resolve_device

if TYPE_CHECKING:
    from typing_extensions import Unpack


def psnr(mse: float, peak: float) -> float | None:
    """``10 log10(peak² / mse)`` in dB; None where it is infinite (identical outputs) or
    undefined (a constant reference, peak 0)."""
    if mse <= 0.0 or peak <= 0.0:
        return None
    return 10.0 * math.log10(peak * peak / mse)


@dataclass(frozen=True)
class Fidelity(Measured):
    """A network's outputs against a reference network's (and the data's targets)."""

    samples: int
    mse: float  # mean over every output element of (output - reference)²
    max_abs: float  # the largest |output - reference|
    psnr: float | None  # dB, peak = the reference outputs' range; None when MSE is 0
    target_mse: float | None  # against the data's targets, when they have the outputs' shape
    target_psnr: float | None
    reference_target_mse: float | None  # the reference network against the same targets
    seconds: float
    throughput: float

    def scores(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "mse": self.mse,
            "max_abs": self.max_abs,
            "psnr": self.psnr,
            "target_mse": self.target_mse,
            "target_psnr": self.target_psnr,
            "reference_target_mse": self.reference_target_mse,
        }


def compare_outputs(
    model: nn.Module, reference: nn.Module, data: Dataset, **options: Unpack[PassOptions]
) -> Fidelity:
    """Run ``model`` and ``reference`` on ``data``'s inputs (eval mode, modes restored) and
    measure how far ``model``'s outputs are from ``reference``'s.

    Raises:
        DataError: no samples, or the two networks' outputs differ in shape.
        InputError: outputs that are not finite (the figures would mean nothing).
    """
    batch_size = options.get("batch_size", 256)
    progress = options.get("progress")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    total = len(data)
    if total == 0:
        raise DataError(f"{data.name}: no samples to evaluate")
    target = resolve_device(options.get("device", "cpu"))
    networks = (model, reference)
    modes = {m: m.training for net in networks for m in net.modules()}
    for net in networks:
        net.to(target).eval()
    sums: dict[str, list[Tensor]] = {"sq": [], "ref_sq": [], "max": [], "hi": [], "lo": []}
    targets_fit: bool | None = None
    elements = 0
    done = 0
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for xb, yb in zip(data.x.split(batch_size), data.y.split(batch_size), strict=True):
                xb = xb.to(target)
                out, ref = model(xb).double(), reference(xb).double()
                if out.shape != ref.shape:
                    raise DataError(
                        f"the folded network's output {tuple(out.shape)} differs in shape from "
                        f"the original's {tuple(ref.shape)}"
                    )
                if targets_fit is None:
                    targets_fit = tuple(yb.shape) == tuple(out.shape)
                sums["sq"].append((out - ref).square().sum())
                sums["max"].append((out - ref).abs().max())
                sums["hi"].append(ref.max())
                sums["lo"].append(ref.min())
                if targets_fit:
                    yt = yb.to(target).double()
                    sums.setdefault("t_sq", []).append((out - yt).square().sum())
                    sums["ref_sq"].append((ref - yt).square().sum())
                elements += out.numel()
                done += len(xb)
                if progress is not None:
                    progress(done, total)
        figures = {k: [float(v) for v in torch.stack(vs).cpu()] for k, vs in sums.items() if vs}
        seconds = time.perf_counter() - start
    finally:
        for module, mode in modes.items():
            module.training = mode
    mse = sum(figures["sq"]) / elements
    if not all(math.isfinite(v) for vs in figures.values() for v in vs):
        raise InputError(
            f"the networks' outputs on {data.name} are not finite; their weights hold NaN or "
            "infinite values or overflow"
        )
    peak = max(figures["hi"]) - min(figures["lo"])
    target_mse = sum(figures["t_sq"]) / elements if "t_sq" in figures else None
    reference_target = sum(figures["ref_sq"]) / elements if "ref_sq" in figures else None
    return Fidelity(
        samples=total,
        mse=mse,
        max_abs=max(figures["max"]),
        psnr=psnr(mse, peak),
        target_mse=target_mse,
        target_psnr=None if target_mse is None else psnr(target_mse, peak),
        reference_target_mse=reference_target,
        seconds=seconds,
        throughput=total / seconds if seconds > 0 else float("inf"),
    )


def scores_classes(model: nn.Module, data: Dataset) -> bool:
    """Whether ``model``'s output on ``data`` can be scored against its labels: one score per
    class (``(batch, classes)``) for image labels, per class and pixel for per-pixel labels."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            out = model(data.x[:1].to(device))
    finally:
        for module, mode in modes.items():
            module.training = mode
    if data.y.dim() == 1:
        return out.dim() == 2
    return out.dim() == data.y.dim() + 1 and tuple(out.shape[2:]) == tuple(data.y.shape[1:])
