"""Post-hoc sharing (share + fine-tune + fold) against pruning and per-layer SVD, over seeds.

    .venv/bin/python benchmarks/share.py [--seeds 3] [--jobs 2] [--device cpu] [--quick]
    .venv/bin/python benchmarks/share.py --from-json benchmarks/results/share.json  # re-render

Issue 15's benchmark, through the library calls behind ``ssc train``, ``ssc share`` and
``ssc fold``, on the CPU. Per seed:

* **plain**: a WRN 28-1 trained on ``digits`` with ``ssc train --arch wrn --depth 28``'s
  defaults (30 epochs, SGD + Nesterov at lr 0.1, cosine, batch 64, weight decay 5e-4).
* **share + fold** at each K: ``share_wrn`` fits the SWRN's groups (conv1 and conv2 of blocks
  1-3 of each stage: 6 layers per group) with K templates by a cross-layer SVD, ``finetune``
  trains it (the fine-tune budget below), and ``ssc fold``'s ``fold_checkpoint`` writes the
  folded file, whose stored parameters and top-1 are reported (the SWRN's too, in the JSON).
  **share + align + fold** does the same with the alignment regulariser in the fine-tune.
* **prune**: global L1 magnitude pruning (``torch.nn.utils.prune.global_unstructured``) of the
  same 18 convs, to the parameters the share point stores (non-zeros counted), fine-tuned with
  the masks kept. Its MACs stay those of the dense net.
* **svd**: each of the same 18 convs factored on its own (3x3 conv C -> r, 1x1 conv r -> O) with
  the per-layer rank that spends what sharing spends on the layer's group, fine-tuned alike.
* the same on a third-party network, pytorchcv's ``resnet20_cifar10`` (installed without its
  dependencies; skipped with a message when absent), on digits upsampled bilinearly to 3x32x32,
  trained briefly from its own initialisation (``resnet_base_epochs``): share
  (``share_network(find_groups(...))``, no fold: a fold of a user network needs its code on the
  ``ssc fold --model`` path) against per-layer SVD at the same budgets; no pruning (the CPU
  budget: one resnet20 epoch costs about 30 WRN 28-1 epochs).

Every WRN fine-tune uses one budget, ``finetune_epochs`` at ``finetune_lr`` (the ``ssc train``
recipe otherwise); every resnet20 fine-tune ``resnet_finetune_epochs`` at that rate. Each
network and seed runs in a process of its own on one torch thread (``--jobs`` at once).
A *seed* seeds the plain net's initialisation and the shuffling of its training and of every
fine-tune (the SVD and the pruning are deterministic). The table gives
the median over the seeds and the range; MACs count one forward pass of one image with
``torch.utils.flop_counter`` (MACs = FLOPs / 2). Writes ``share.json`` and ``share.md`` to
``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import share_baselines as base  # noqa: E402  (benchmarks/share_baselines.py)


@dataclass(frozen=True)
class Setup:
    """The benchmark's knobs; ``--quick`` shrinks them for the test."""

    seeds: int = 3
    first_seed: int = 0
    depth: int = 28  # WRN 28-1: 4 blocks per stage, groups of 6 layers
    base_epochs: int = 30  # ssc train's default
    finetune_epochs: int = 8  # one fine-tune budget for every method
    finetune_lr: float = 0.01
    ks: tuple[int, ...] = (1, 2, 3, 6)  # 6 = the group size: exact, a control
    align: float = 1.0  # share + align: the regulariser's weight in the fine-tune
    align_ks: tuple[int, ...] = (2,)
    resnet: bool = True
    resnet_base_epochs: int = 3
    resnet_finetune_epochs: int = 3
    resnet_ks: tuple[int, ...] = (2,)  # the <= 50 % point (the CPU budget allows one)
    train_limit: int | None = None  # the first N training images (None: all 1437)
    resnet_test_limit: int | None = None  # resnet20: the first N test images (None: all 360)
    device: str = "cpu"

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUICK = Setup(
    seeds=1,
    depth=16,
    base_epochs=1,
    finetune_epochs=1,
    ks=(1, 2),
    align_ks=(1,),
    resnet_base_epochs=1,
    resnet_finetune_epochs=1,
    resnet_ks=(1,),
    train_limit=128,
    resnet_test_limit=96,
)


def _config(setup: Setup, seed: int, **changes: Any) -> Any:
    from soft_share_cli.training.classification import TrainConfig

    config = TrainConfig(
        arch="wrn", depth=setup.depth, width=1, num_templates=None, seed=seed, device=setup.device
    )
    return replace(config, **changes)


def _tuned(setup: Setup, seed: int, epochs: int | None = None, **changes: Any) -> Any:
    epochs = setup.finetune_epochs if epochs is None else epochs
    return _config(setup, seed, epochs=epochs, lr=setup.finetune_lr, **changes)


def _top1(model: Any, data: Any, device: str) -> float:
    from soft_share_cli.evaluation.classification import evaluate

    return evaluate(model, data, batch_size=512, device=device).top1


def _row(net: str, method: str, setting: str, seed: int, **values: Any) -> dict[str, Any]:
    return {"net": net, "method": method, "setting": setting, "seed": seed, **values}


def _fold(model: Any, work: Path, name: str) -> tuple[int, float, int, list[str]]:
    """Fold an SWRN as ``ssc fold --data digits`` does: stored parameters, top-1, MACs, loops."""
    from soft_share_cli.checkpoints.load import save_checkpoint
    from soft_share_cli.folding.swrn import load_folded
    from soft_share_cli.pipeline.fold import FoldOptions, fold_checkpoint

    kwargs = {
        "depth": model.depth,
        "width": model.width,
        "num_templates": model.num_templates,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
    }
    ckpt, out = work / f"{name}.pt", work / f"{name}.safetensors"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(ckpt, arch="swrn", arch_kwargs=kwargs, state_dict=state, metadata={})
    fold = fold_checkpoint(ckpt, out, FoldOptions(data="digits"))
    assert fold.data is not None and fold.output is not None
    folded = load_folded(out)
    return (
        fold.params.folded,
        fold.data.final.top1,
        base.macs(folded, (1, 8, 8)),
        [*fold.loops],
    )


def wrn_seed(setup: Setup, seed: int, work: Path, say: Any) -> list[dict[str, Any]]:
    """Every WRN measurement of one seed."""
    import copy

    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.models.params import count_parameters
    from soft_share_cli.sharing.convert import share_wrn
    from soft_share_cli.sharing.finetune import finetune
    from soft_share_cli.sharing.groups import wrn_groups
    from soft_share_cli.training.classification import train

    device = setup.device
    train_data, test_data = (
        _first(load_data("digits", "train"), setup.train_limit),
        load_data("digits", "test"),
    )
    start = time.perf_counter()
    plain = train(_config(setup, seed), train_data, test_data).model.cpu().eval()
    top1 = _top1(plain, test_data, device)
    shape = (1, 8, 8)
    rows = [
        _row(
            "wrn", "plain", "-", seed, params=count_parameters(plain), macs=base.macs(plain, shape),
            top1=top1, seconds=time.perf_counter() - start,
        )
    ]  # fmt: skip
    say(f"seed {seed}: plain WRN {top1:.2f} % ({rows[0]['seconds']:.0f} s)")
    n = plain.num_blocks
    shapes = [tuple(plain.get_submodule(f"stage_{s}.1.conv1").weight.shape) for s in (1, 2, 3)]
    groups = wrn_groups(n, shapes)
    variants = [("share", k, 0.0) for k in setup.ks]
    variants += [("share+align", k, setup.align) for k in setup.align_ks]
    budgets: dict[int, int] = {}
    for method, k, align in variants:
        start = time.perf_counter()
        shared, fits = share_wrn(copy.deepcopy(plain), groups, [k] * len(groups))
        converted = _top1(shared, test_data, device)
        finetune(shared, _tuned(setup, seed, align=align), train_data)
        shared = shared.cpu().eval()
        params = count_parameters(shared)
        budgets.setdefault(k, params)
        tuned = _top1(shared, test_data, device)
        stored, folded_top1, folded_macs, loops = _fold(shared, work, f"{method}_{k}_{seed}")
        rows.append(
            _row(
                "wrn", f"{method}+fold", f"K={k}", seed, k=k, params=stored, macs=folded_macs,
                top1=folded_top1, converted_top1=converted, shared_params=params,
                shared_top1=tuned, shared_macs=base.macs(shared, shape),
                relative_error=[f.relative_error for f in fits], loops=loops,
                seconds=time.perf_counter() - start,
            )
        )  # fmt: skip
        say(
            f"seed {seed}: {method} K={k}: {converted:.2f} -> {tuned:.2f} -> fold {folded_top1:.2f}"
        )
    evaluate = lambda model: _top1(model, test_data, device)  # noqa: E731
    for k in [k for k in setup.ks if k < len(groups[0].layers)]:
        tune = lambda model: finetune(model, _tuned(setup, seed), train_data)  # noqa: E731
        rows += base.baseline_rows("wrn", seed, plain, groups, k, budgets[k], tune, evaluate, shape)
        say(f"seed {seed}: WRN at {budgets[k]} parameters: prune {rows[-2]['top1']:.2f}, "
            f"svd {rows[-1]['top1']:.2f}")  # fmt: skip
    return rows


def _first(data: Any, limit: int | None) -> Any:
    """The first ``limit`` samples of ``data`` (all of them for None)."""
    if limit is None:
        return data
    return replace(data, x=data.x[:limit], y=data.y[:limit])


def _upsampled(data: Any, limit: int | None) -> Any:
    """Digits as 3x32x32 images (bilinear upsampling, the gray level in every channel)."""
    import torch.nn.functional as F

    data = _first(data, limit)
    big = F.interpolate(data.x, size=(32, 32), mode="bilinear", align_corners=False)
    return replace(data, name=f"{data.name} (3x32x32)", x=big.repeat(1, 3, 1, 1))


def resnet_seed(setup: Setup, seed: int, say: Any) -> list[dict[str, Any]]:
    """pytorchcv's resnet20_cifar10 on upsampled digits: plain, share and per-layer SVD."""
    import copy

    import torch
    from pytorchcv.models.resnet_cifar import resnet20_cifar10

    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.models.params import count_parameters
    from soft_share_cli.sharing.convert import share_network
    from soft_share_cli.sharing.finetune import finetune
    from soft_share_cli.sharing.groups import find_groups

    device = setup.device
    train_data = _upsampled(load_data("digits", "train"), setup.train_limit)
    test_data = _upsampled(load_data("digits", "test"), setup.resnet_test_limit)
    start = time.perf_counter()
    torch.manual_seed(seed)
    plain = resnet20_cifar10()
    finetune(plain, _config(setup, seed, epochs=setup.resnet_base_epochs), train_data)
    plain = plain.cpu().eval()
    shape = (3, 32, 32)
    evaluate = lambda model: _top1(model, test_data, device)  # noqa: E731
    top1 = evaluate(plain)
    rows = [
        _row(
            "resnet20", "plain", "-", seed, params=count_parameters(plain),
            macs=base.macs(plain, shape), top1=top1, seconds=time.perf_counter() - start,
        )
    ]  # fmt: skip
    say(f"seed {seed}: plain resnet20 {top1:.2f} % ({rows[0]['seconds']:.0f} s)")
    groups = find_groups(plain)

    def tune(model: Any) -> Any:
        config = _tuned(setup, seed, epochs=setup.resnet_finetune_epochs)
        return finetune(model, config, train_data)

    for k in setup.resnet_ks:
        start = time.perf_counter()
        shared = copy.deepcopy(plain)
        fits = share_network(shared, groups, [k] * len(groups))
        converted = evaluate(shared)
        tune(shared)
        shared = shared.cpu().eval()
        budget = count_parameters(shared)
        rows.append(
            _row(
                "resnet20", "share", f"K={k}", seed, k=k, params=budget,
                macs=base.macs(shared, shape), top1=evaluate(shared), converted_top1=converted,
                relative_error=[f.relative_error for f in fits],
                seconds=time.perf_counter() - start,
            )
        )  # fmt: skip
        rows += base.baseline_rows(
            "resnet20", seed, plain, groups, k, budget, tune, evaluate, shape, prune_too=False
        )
        say(
            f"seed {seed}: resnet20 K={k}: share {rows[-2]['top1']:.2f}, svd {rows[-1]['top1']:.2f}"
        )
    return rows


def _have_pytorchcv() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytorchcv") is not None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_job(setup: Setup, net: str, seed: int) -> list[dict[str, Any]]:
    """One network's measurements at one seed, on one torch thread (a process of its own)."""
    import torch

    torch.set_num_threads(1)
    if net == "resnet20":
        return resnet_seed(setup, seed, _say)
    with tempfile.TemporaryDirectory(prefix="ssc-share-bench-") as work:
        return wrn_seed(setup, seed, Path(work), _say)


def run(setup: Setup, jobs: int, quick: bool = False) -> dict[str, Any]:
    """Every measurement of ``setup`` (``jobs`` processes at once), the machine, the wall time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from run import machine  # benchmarks/run.py

    started = time.perf_counter()
    host = machine()
    skipped = None
    nets = ["wrn"]
    if setup.resnet and _have_pytorchcv():
        nets.insert(0, "resnet20")  # the longer jobs first
    elif setup.resnet:
        skipped = "pytorchcv is not installed: the third-party network (resnet20) was skipped"
        _say(skipped)
    work = [(net, seed) for net in nets for seed in setup.seed_list]
    host["jobs"] = jobs
    host["torch_threads"] = 1
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run_job, setup, net, seed) for net, seed in work]
        rows = [row for future in futures for row in future.result()]
    host["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return {
        "schema_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "setup": setup.to_dict(),
        "machine": host,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "skipped": skipped,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--device", default="cpu", help="torch device for training (cpu)")
    parser.add_argument("--quick", action="store_true", help="a smoke test of a few seconds")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: the cores)"
    )
    parser.add_argument("--no-resnet", action="store_true", help="skip the third-party network")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output folder")
    parser.add_argument("--from-json", type=Path, help="only re-render an earlier share.json")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
        _write(args.out, result)
        return 0
    setup = QUICK if args.quick else Setup()
    if args.seeds is not None:
        setup = replace(setup, seeds=args.seeds)
    setup = replace(setup, device=args.device, resnet=setup.resnet and not args.no_resnet)
    result = run(setup, args.jobs, args.quick)
    given = sys.argv[1:] if argv is None else argv
    result["command"] = " ".join([".venv/bin/python benchmarks/share.py", *given])
    _write(args.out, result)
    return 0


def _write(out: Path, result: dict[str, Any]) -> None:
    """Summarise ``result`` and write share.json and share.md (atomically); print the table."""
    from soft_share_cli.files import atomic_write

    result["summary"] = base.summarise(result["rows"])
    result["targets"] = base.targets(result["summary"])
    text = base.markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in (("share.json", json.dumps(result, indent=1) + "\n"), ("share.md", text)):
        atomic_write(out / name, lambda tmp, c=content: tmp.write_text(c))
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
