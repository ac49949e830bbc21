"""Checks that a fold kept the network's function: a random probe, and BatchNorm recalibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from soft_share_cli.checkpoints.load import LoadedCheckpoint
from soft_share_cli.data.loaders import Dataset


@dataclass(frozen=True)
class Probe:
    """Function preservation on seeded random inputs, eval mode, no data needed."""

    shape: tuple[int, ...]
    max_abs_diff: float
    mean_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            **{k: getattr(self, k) for k in ("max_abs_diff", "mean_abs_diff")},
        }


def probe_input(ckpt: LoadedCheckpoint, model: nn.Module, samples: int, seed: int) -> Tensor:
    """Seeded random inputs with the network's input channels (sequences of 32 for a network
    of 1-d convolutions).

    8x8 for ssc's own (S)WRNs, which pool adaptively: every weight still acts (stages see 8, 4
    and 2 pixels) at 1/16 of the cost of 32x32, which on a WRN-28-10 is seconds per 16 samples.
    Other networks get their training data's size where known (8 for digits), else 32x32.
    """
    from soft_share_cli.models.wrn import SWRN, WRN

    preprocessing = ckpt.metadata.get("preprocessing")  # whatever the file says: maybe no dict
    digits = isinstance(preprocessing, dict) and preprocessing.get("dataset") == "digits"
    size = 8 if digits or isinstance(model, SWRN | WRN) else 32
    channels, dims = 3, 2
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            channels, dims = module.in_channels, 1 if isinstance(module, nn.Conv1d) else 2
            break
        weight = getattr(module, "templates", None)
        if isinstance(weight, Tensor) and weight.dim() in (4, 5):
            channels, dims = int(weight.shape[2]), weight.dim() - 3
            break
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(samples, channels, *(size,) * dims, generator=generator)


def compare_on_probe(original: nn.Module, folded: nn.Module, x: Tensor) -> Probe:
    """Max and mean absolute logit difference between the two networks in eval mode.

    On the CPU this runs on one thread: a probe is one small batch, whose cost is per-operation
    overhead rather than arithmetic, and a thread pool's synchronisation adds to that — on a
    machine whose cores are busy with other work, several times over (a WRN-28-10 probe took
    0.6 s on one thread and 2.5-3.8 s on two, on 2 shared cores). Inputs follow the networks'
    device.
    """
    original.eval(), folded.eval()
    x = x.to(next(original.parameters()).device)
    threads = torch.get_num_threads()
    if x.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            diff = (original(x) - folded(x)).abs()
    finally:
        torch.set_num_threads(threads)
    return Probe(tuple(x.shape), float(diff.max()), float(diff.mean()))


def recalibrate_batchnorm(model: nn.Module, data: Dataset, batches: int, batch_size: int) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` batches of ``data``.

    Statistics are reset and averaged over the batches (cumulative average, momentum None);
    weights are untouched; the model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i, xb in enumerate(data.x.split(batch_size)):
            if i >= batches:
                break
            model(xb.to(device))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()
