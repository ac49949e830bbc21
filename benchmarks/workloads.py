"""What the benchmarks measure: generated checkpoints and the in-process measurements.

Run by ``benchmarks/run.py``, never imported by ssc. The generators write into a temporary
directory; the measurement tasks run in a subprocess of their own and print one JSON object:

    python benchmarks/workloads.py bare-eval CKPT DATA.npz BATCH DEVICE
    python benchmarks/workloads.py inference CKPT WORKDIR REPEATS SIZE DEVICE ROUNDS
    python benchmarks/workloads.py scaling WORKDIR DEPTHS KS K_DEPTH REPEATS
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint
from soft_share_cli.checkpoints.testing import save_authors_checkpoint, write_utils_module
from soft_share_cli.models.wrn import SWRN


def write_authors_checkpoints(
    directory: Path, depth: int, width: int, templates: int
) -> tuple[Path, Path]:
    """An SWRN training checkpoint in the authors' layout, zip and legacy, from random weights.

    ``{epoch, arch, state_dict, recorder, optimizer}`` (:mod:`soft_share_cli.checkpoints.testing`),
    with
    ``directory/utils.py`` defining the recorder's class, so that a naive
    ``torch.load(weights_only=False)`` run from ``directory`` can unpickle it, as it must.
    """
    torch.manual_seed(0)
    model = SWRN(depth, width, templates, num_classes=10, in_channels=3)
    write_utils_module(directory)
    name = f"authors_swrn{depth}-{width}-{templates}"
    zipped, legacy = directory / f"{name}.pth.tar", directory / f"{name}_legacy.pth.tar"
    save_authors_checkpoint(model, zipped)
    save_authors_checkpoint(model, legacy, legacy=True)
    return zipped, legacy


def exactly_foldable_swrn(depth: int, width: int, templates: int, seed: int = 0) -> SWRN:
    """An SWRN whose shared layers are exactly parallel within two clusters per bank.

    Per stage, every conv1 mixes the templates along one direction and every conv2 along
    another (orthogonal to the first), each with its own scale (signs vary for conv1);
    BatchNorms get random affine parameters and the statistics of two random batches. Folding
    then gives two weights per bank and changes the function only by float rounding.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SWRN(depth, width, templates, num_classes=10, in_channels=3)
    with torch.no_grad():
        for i in (1, 2, 3):
            # Orthonormal directions (K >= 2): the two clusters stay apart at any threshold.
            directions = torch.randn(templates, 2, generator=generator)
            directions = torch.linalg.qr(directions).Q.T if templates >= 2 else directions.T
            for block in list(getattr(model, f"stage_{i}"))[1:]:
                for role, conv in enumerate((block.conv1, block.conv2)):
                    scale = float(torch.empty(1).uniform_(0.5, 1.5, generator=generator))
                    if role == 0 and float(torch.rand(1, generator=generator)) < 0.5:
                        scale = -scale
                    conv.coefficients.copy_((scale * directions[role]).view_as(conv.coefficients))
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5, generator=generator)
            norm.bias.normal_(0.0, 0.1, generator=generator)
            norm.reset_running_stats()
            norm.momentum = None  # cumulative averages over the calibration batches
        # Statistics of real forward passes keep the activations (and logits) at a sane scale.
        model.train()
        for _ in range(2):
            model(torch.randn(16, 3, 16, 16, generator=generator))
        for norm in norms:
            norm.momentum = 0.1
    return model.eval()


def save_swrn(model: SWRN, path: Path) -> Path:
    """``model`` as an ssc checkpoint (architecture stored)."""
    kwargs = {
        "depth": model.depth,
        "width": model.width,
        "num_templates": model.num_templates,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
    }
    save_checkpoint(
        path, arch="swrn", arch_kwargs=kwargs, state_dict=model.state_dict(), metadata={}
    )
    return path


def write_eval_data(path: Path, samples: int, size: int, seed: int = 0) -> Path:
    """Random 3-channel images and labels as an ``npz:`` data set (x, y)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 3, size, size), dtype=np.float32)
    y = rng.integers(0, 10, samples)
    np.savez(path, x=x, y=y)
    return path


# --- measurement tasks (each in its own subprocess) --------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_eval(checkpoint: str, data: str, batch_size: int, device: str) -> dict[str, Any]:
    """The obvious alternative to ``ssc eval``: a bare ``inference_mode`` loop, timed the same way.

    Same network (rebuilt as ssc does), same tensors, same batches; the clock covers the loop
    and the final device sync, as :func:`soft_share_cli.evaluation.classification.evaluate`'s does.
    """
    from soft_share_cli.models.builder import rebuild_model

    model, _ = rebuild_model(load_checkpoint(checkpoint))
    model = model.to(device).eval()
    with np.load(data) as archive:
        x = torch.from_numpy(archive["x"])
    start = time.perf_counter()
    with torch.inference_mode():
        for xb in x.split(batch_size):
            model(xb.to(device))
    _sync(device)
    seconds = time.perf_counter() - start
    return {"samples": len(x), "seconds": seconds, "throughput": len(x) / seconds}


def _throughput(model: torch.nn.Module, x: torch.Tensor, iterations: int, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(iterations):
            model(x)
    _sync(device)
    return iterations * len(x) / (time.perf_counter() - start)


class ChannelsLast(torch.nn.Module):
    """``module`` fed channels-last inputs: what the soft-shared network gains from the layout
    the folded one uses (its generated weights stay in the default layout, made every call)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last))


def inference(
    checkpoint: str, workdir: str, repeats: int, size: int, device: str, iterations: int
) -> dict[str, Any]:
    """Throughput of the soft-shared original, its fold and the materialized WRN, interleaved,
    and two controls that separate folding from memory layout: the fold computing in the
    original's layout, and the original fed channels-last inputs.

    With torch's default threads and, on a CPU with more, again on one thread (see
    :func:`_timed_batches`); plus whether the two networks predict alike.
    """
    from soft_share_cli.folding.swrn import load_folded, materialize
    from soft_share_cli.models.builder import rebuild_model
    from soft_share_cli.pipeline.fold import fold_checkpoint

    folded_path = Path(workdir) / "folded.safetensors"
    report = fold_checkpoint(checkpoint, folded_path)
    original, spec = rebuild_model(load_checkpoint(checkpoint))
    folded = load_folded(folded_path)
    same_layout = load_folded(folded_path)
    same_layout.memory_format = torch.contiguous_format  # folding alone, the original's layout
    models = {
        "original": original.to(device).eval(),
        "folded": folded.to(device).eval(),
        "materialized": materialize(folded).to(device).eval(),
        "folded_contiguous": same_layout.to(device).eval(),
        "original_channels_last": ChannelsLast(original).to(device).eval(),
    }
    generator = torch.Generator().manual_seed(1)
    check = torch.randn(256 if size >= 32 else 64, 3, size, size, generator=generator).to(device)
    with torch.inference_mode():
        logits = {name: m(check) for name, m in models.items()}
    agree = bool(torch.equal(logits["original"].argmax(1), logits["folded"].argmax(1)))
    result: dict[str, Any] = {
        "architecture": spec.describe(),
        "folded": folded.describe(),
        "device": device,
        "input": [3, size, size],
        "probe_max_abs_diff": report.probe.max_abs_diff,
        "check_samples": len(check),
        "identical_predictions": agree,
        "max_abs_logit_diff": float((logits["original"] - logits["folded"]).abs().max()),
        "threads": torch.get_num_threads(),
    }
    result["batches"] = _timed_batches(models, size, device, repeats, iterations)
    threads = torch.get_num_threads()
    if device == "cpu" and threads > 1:
        # The same on one thread: at batch 1 a CPU forward pass is mostly per-operation
        # overhead, and on a machine whose cores are busy a thread pool's synchronisation adds
        # to every operation of both networks alike, burying what folding saves.
        torch.set_num_threads(1)
        result["one_thread"] = _timed_batches(models, size, device, repeats, iterations)
        torch.set_num_threads(threads)
    return result


def _timed_batches(
    models: dict[str, torch.nn.Module], size: int, device: str, repeats: int, iterations: int
) -> dict[str, Any]:
    """Median samples/s of each network at batch 1 and 64.

    ``repeats * iterations`` rounds at batch 1 (a quarter of that, at least two per repeat, at
    batch 64) after two untimed passes; each round times one forward pass of every network.
    """
    generator = torch.Generator().manual_seed(2)
    batches: dict[str, Any] = {}
    for batch in (1, 64):
        x = torch.randn(batch, 3, size, size, generator=generator).to(device)
        rounds = repeats * (iterations if batch == 1 else max(2, iterations // 4))
        for model in models.values():  # warm-up: allocator, oneDNN primitives, caches
            _throughput(model, x, 2, device)
        # One forward pass of each network per round, the order rotating: whatever else the
        # machine does hits all three alike, and the median ignores the rounds it spoils.
        runs: dict[str, list[float]] = {name: [] for name in models}
        for r in range(rounds):
            names = list(models)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                runs[name].append(_throughput(models[name], x, 1, device))
        batches[str(batch)] = {
            "rounds": rounds,
            "samples_per_s": runs,
            "median": {name: statistics.median(values) for name, values in runs.items()},
        }
    return batches


def scaling(
    workdir: str, depths: list[int], ks: list[int], k_depth: int, repeats: int
) -> dict[str, Any]:
    """Time ``analyze_checkpoint`` and ``fold_checkpoint`` against depth (K = 4) and K.

    SWRN d-1-K checkpoints in ssc's format; the K sweep is at depth ``k_depth``.
    """
    from soft_share_cli.pipeline.analyze import analyze_checkpoint
    from soft_share_cli.pipeline.fold import fold_checkpoint

    def timed(work: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    rows = []
    configs = [(d, 4, "depth") for d in depths] + [(k_depth, k, "K") for k in ks]
    for depth, k, axis in configs:
        torch.manual_seed(0)
        model = SWRN(depth, 1, k, num_classes=10, in_channels=3)
        path = save_swrn(model, Path(workdir) / f"swrn{depth}-1-{k}.pt")
        out = Path(workdir) / f"swrn{depth}-1-{k}.safetensors"
        analyze_checkpoint(path)  # warm-up
        rows.append(
            {
                "axis": axis,
                "depth": depth,
                "K": k,
                "layers": 3 * 2 * (model.num_blocks - 1),
                "parameters": sum(p.numel() for p in model.parameters()),
                "analyze_s": timed(lambda p=path: analyze_checkpoint(p)),
                "fold_s": timed(lambda p=path, o=out: fold_checkpoint(p, o)),
            }
        )
    return {"rows": rows}


def main(argv: list[str]) -> None:
    task, *args = argv
    if task == "bare-eval":
        result = bare_eval(args[0], args[1], int(args[2]), args[3])
    elif task == "inference":
        result = inference(args[0], args[1], int(args[2]), int(args[3]), args[4], int(args[5]))
    elif task == "scaling":
        depths = [int(v) for v in args[1].split(",")]
        ks = [int(v) for v in args[2].split(",")]
        result = scaling(args[0], depths, ks, int(args[3]), int(args[4]))
    else:
        raise SystemExit(f"unknown task {task!r}")
    result["torch"] = torch.__version__
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
