"""The two baselines of ``benchmarks/share.py`` and the measures every method is compared by.

* Global magnitude pruning (:func:`prune_layers`): ``torch.nn.utils.prune.global_unstructured``
  with the L1 criterion over the weights of the given conv layers, removing just enough weights
  that the network stores a given number of parameters. The masks stay during the fine-tune
  (``weight = weight_orig * mask``) and are made permanent afterwards (:func:`finish_pruning`).
* Per-layer truncated SVD (:func:`factor_layers`): each k x k conv C -> O, on its own, becomes a
  k x k conv C -> r (the top r right singular vectors of its ``O x (C k k)`` weight matrix, same
  stride and padding) followed by a 1x1 conv r -> O (left singular vectors times singular
  values, the layer's bias if any): the best rank-r fit of that layer in the Frobenius norm.
* :func:`stored_parameters` counts what a file of the network holds (non-zeros of pruned
  weights, every other parameter by storage); :func:`macs` counts multiply-accumulates of one
  forward pass with ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from soft_share_cli.sharing.groups import ShareGroup


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    if isinstance(holder, nn.ModuleDict | nn.ModuleList | nn.Sequential):
        holder._modules[attr] = new
    else:
        setattr(holder, attr, new)


def macs(model: nn.Module, shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of a ``(1, *shape)`` input (eval mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *shape, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def stored_parameters(model: nn.Module) -> int:
    """Parameters a file of ``model`` stores: non-zeros of pruned weights, all others."""
    total = 0
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            mask = getattr(module, f"{name[: -len('_orig')]}_mask", None)
            if name.endswith("_orig") and mask is not None:
                total += int(torch.count_nonzero(p.detach() * mask))
            elif getattr(module, "_ssc_pruned", False) and name == "weight":
                total += int(torch.count_nonzero(p.detach()))
            else:
                total += p.numel()
    return total


def group_weights(model: nn.Module, groups: Sequence[ShareGroup]) -> int:
    """How many weights the convs of ``groups`` hold (what pruning may remove)."""
    return sum(model.get_submodule(n).weight.numel() for g in groups for n in g.layers)


def prune_layers(model: nn.Module, layers: Sequence[str], budget: int) -> int:
    """Prune the weights of ``layers`` globally by magnitude (L1) so that ``model`` stores
    ``budget`` parameters; returns how many weights were removed. In place; masks are kept."""
    convs = [model.get_submodule(name) for name in layers]
    removable = sum(conv.weight.numel() for conv in convs)
    remove = stored_parameters(model) - budget
    if not 0 <= remove <= removable:
        raise ValueError(f"a budget of {budget} parameters is out of pruning's reach")
    prune.global_unstructured(
        [(conv, "weight") for conv in convs], pruning_method=prune.L1Unstructured, amount=remove
    )
    return remove


def finish_pruning(model: nn.Module) -> None:
    """Make every pruning mask permanent (zeros stay zeros; the weight is a plain parameter)."""
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
            module._ssc_pruned = True  # stored_parameters counts its non-zeros


def factored_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """``conv`` as a k x k conv to ``rank`` channels then a 1x1 conv: its best rank-r fit."""
    out_planes = conv.out_channels
    weight = conv.weight.detach().to(torch.float64).reshape(out_planes, -1)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    first = nn.Conv2d(
        conv.in_channels,
        rank,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=False,
    )
    second = nn.Conv2d(rank, out_planes, 1, bias=conv.bias is not None)
    like = conv.weight
    with torch.no_grad():
        first.weight.copy_(vh[:rank].reshape(first.weight.shape))
        second.weight.copy_((u[:, :rank] * s[:rank]).reshape(second.weight.shape))
        if conv.bias is not None:
            assert second.bias is not None
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second).to(device=like.device, dtype=like.dtype)


def layer_rank(conv: nn.Conv2d, budget: float) -> int:
    """The rank whose factored layer's parameters are nearest ``budget`` (at least 1, at most
    the weight matrix's rank)."""
    k = conv.kernel_size[0] * conv.kernel_size[1]
    per_rank = conv.in_channels * k + conv.out_channels
    full = min(conv.out_channels, conv.in_channels * k)
    return max(1, min(full, round(budget / per_rank)))


def ranks_for(model: nn.Module, groups: Sequence[ShareGroup], ks: Sequence[int]) -> dict[str, int]:
    """Per-layer ranks spending what sharing spends on each group (K templates plus one
    coefficient per layer and template), split equally between the group's layers."""
    ranks = {}
    for group, k in zip(groups, ks, strict=True):
        per_layer = (k * group.layer_parameters + k * len(group.layers)) / len(group.layers)
        for name in group.layers:
            ranks[name] = layer_rank(model.get_submodule(name), per_layer)
    return ranks


def factor_layers(model: nn.Module, ranks: Mapping[str, int]) -> nn.Module:
    """Replace each named conv of ``model`` by its factored form, in place."""
    for name, rank in ranks.items():
        _replace(model, name, factored_conv(model.get_submodule(name), rank))
    return model


def baseline_rows(
    net: str,
    seed: int,
    plain: nn.Module,
    groups: Sequence[ShareGroup],
    k: int,
    budget: int,
    tune: Callable[[nn.Module], object] | None,
    evaluate: Callable[[nn.Module], float],
    shape: Sequence[int],
    prune_too: bool = True,
) -> list[dict[str, Any]]:
    """Pruning to ``budget`` stored parameters and per-layer SVD at the ranks matching K
    templates, each from a copy of ``plain``, fine-tuned by ``tune`` (None: not at all)."""
    rows = []
    layers = [name for g in groups for name in g.layers]
    if prune_too:
        start = time.perf_counter()
        pruned = copy.deepcopy(plain)
        removed = prune_layers(pruned, layers, budget)
        converted = evaluate(pruned)
        if tune is not None:
            tune(pruned)
        finish_pruning(pruned.cpu().eval())
        sparsity = removed / group_weights(plain, groups)
        rows.append(
            {
                "net": net, "method": "prune", "k": k, "setting": f"{100 * sparsity:.1f} % sparse",
                "seed": seed, "params": stored_parameters(pruned), "macs": macs(pruned, shape),
                "top1": evaluate(pruned), "converted_top1": converted, "budget": budget,
                "seconds": time.perf_counter() - start,
            }
        )  # fmt: skip
    start = time.perf_counter()
    ranks = ranks_for(plain, groups, [k] * len(groups))
    factored = factor_layers(copy.deepcopy(plain), ranks)
    converted = evaluate(factored)
    if tune is not None:
        tune(factored)
    factored = factored.cpu().eval()
    rows.append(
        {
            "net": net, "method": "svd", "k": k,
            "setting": "r=" + "/".join(str(ranks[g.layers[0]]) for g in groups),
            "seed": seed, "params": stored_parameters(factored), "macs": macs(factored, shape),
            "top1": evaluate(factored), "converted_top1": converted, "budget": budget,
            "seconds": time.perf_counter() - start,
        }
    )  # fmt: skip
    return rows


# --- the table -----------------------------------------------------------------------------------

METHODS = ("plain", "share+fold", "share+align+fold", "share", "prune", "svd")
LABELS = {
    "plain": "plain",
    "share+fold": "share + fine-tune + fold",
    "share+align+fold": "share + fine-tune with align + fold",
    "share": "share + fine-tune (no fold)",
    "prune": "global L1 pruning + fine-tune (masks kept)",
    "svd": "per-layer truncated SVD + fine-tune",
}


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One line per network, method and setting: medians over the seeds, and the range."""
    plain = {(r["net"], r["seed"]): r for r in rows if r["method"] == "plain"}
    cells: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["net"], r["method"], r["setting"]), []).append(r)
    out = []
    for (net, method, setting), group in cells.items():
        top1 = [r["top1"] for r in group]
        deltas = [r["top1"] - plain[net, r["seed"]]["top1"] for r in group]
        params = statistics.median(r["params"] for r in group)
        dense = statistics.median(p["params"] for (n, _), p in plain.items() if n == net)
        line = {
            "net": net, "method": method, "setting": setting, "k": group[0].get("k"),
            "seeds": sorted(r["seed"] for r in group), "params": params,
            "params_pct": 100.0 * params / dense,
            "macs": statistics.median(r["macs"] for r in group),
            "top1": statistics.median(top1), "top1_min": min(top1), "top1_max": max(top1),
            "delta": statistics.median(deltas),
        }  # fmt: skip
        for key in ("converted_top1", "shared_top1", "shared_params"):
            if key in group[0]:
                line[key] = statistics.median(r[key] for r in group)
        out.append(line)
    nets = sorted(dict.fromkeys(line["net"] for line in out), key=lambda n: (n != "wrn", n))
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(
        out,
        key=lambda s: (nets.index(s["net"]), s["k"] or 0, order[s["method"]], -s["params"]),
    )


def _share_lines(summary: Sequence[Mapping[str, Any]], net: str) -> list[Mapping[str, Any]]:
    return [s for s in summary if s["net"] == net and s["method"].startswith("share")]


def targets(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Issue 15's targets, measured: each with what was compared and whether it was met."""
    out = []
    for net in dict.fromkeys(s["net"] for s in summary):
        shares = _share_lines(summary, net)
        small = [s for s in shares if s["params_pct"] <= 50.0]
        best = max(small, key=lambda s: s["delta"], default=None)
        out.append(
            {
                "net": net, "target": "share reaches <= 50 % of the parameters within 1 point",
                "met": best is not None and best["delta"] >= -1.0,
                "evidence": "no share point at <= 50 %" if best is None else (
                    f"{best['method']} {best['setting']}: {best['params_pct']:.1f} % of the "
                    f"parameters, {best['delta']:+.2f} points"
                ),
            }
        )  # fmt: skip
        for rival in ("svd", "prune"):
            for s in shares:
                other = [
                    o for o in summary
                    if o["net"] == net and o["method"] == rival and o["k"] == s["k"]
                ]  # fmt: skip
                if not other or s["method"] == "share+align+fold":
                    continue
                o = other[0]
                out.append(
                    {
                        "net": net, "target": f"share at least as accurate as {rival}",
                        "met": s["top1"] >= o["top1"],
                        "evidence": (
                            f"K={s['k']}: {s['method']} {s['top1']:.2f} % with "
                            f"{s['params']:,.0f} parameters and {s['macs']:,.0f} MACs; {rival} "
                            f"{o['top1']:.2f} % with {o['params']:,.0f} and {o['macs']:,.0f} MACs"
                        ),
                    }
                )  # fmt: skip
    return out


def _cell(s: Mapping[str, Any]) -> str:
    return f"{s['top1']:.2f} [{s['top1_min']:.2f}, {s['top1_max']:.2f}]"


def _align_note(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the alignment regulariser did for the fold, measured (one line per K)."""
    out = []
    for a in (s for s in summary if s["method"] == "share+align+fold"):
        plain = [s for s in summary if s["method"] == "share+fold" and s["k"] == a["k"]]
        if plain:
            p = plain[0]
            out.append(
                f"- Alignment at K={a['k']}: the fold stores {p['params'] - a['params']:,.0f} "
                f"fewer parameters than without it, top-1 {a['top1'] - p['top1']:+.2f} points."
            )
    return out


def markdown(result: Mapping[str, Any]) -> str:
    """The tables and the targets, with the command and the machine."""
    mach, setup = result["machine"], result["setup"]
    lines = [
        "# Post-hoc sharing against pruning and per-layer SVD (issue 15)",
        "",
        f"`{result['command']}` — {mach['cpu']}, {mach['cores']} cores, {mach.get('jobs', 1)} "
        f"jobs of {mach['torch_threads']} torch thread, torch {mach['torch']}, Python "
        f"{mach['python']}; wall time {result['wall_seconds'] / 60:.1f} min; load average "
        f"{mach['load_average_before'][0]} before, {mach['load_average_after'][0]} after (the "
        "machine was shared with other work).",
    ]
    if result["quick"]:
        lines += ["", "**quick mode**: a smoke test; the numbers mean nothing."]
    lines += [
        "",
        f"- Seeds {setup['first_seed']}..{setup['first_seed'] + setup['seeds'] - 1}: a seed "
        "seeds the plain net's initialisation and the shuffling of its training and of every "
        "fine-tune. Top-1 on digits' 360 test images: median [min, max] over the seeds; "
        "delta: median of the per-seed differences to the plain net. Parameters: what the "
        "file stores (pruning: non-zeros). MACs: one image, `torch.utils.flop_counter`.",
        f"- Fine-tune budget, every method: WRN {setup['finetune_epochs']} epochs, resnet20 "
        f"{setup['resnet_finetune_epochs']}, at lr {setup['finetune_lr']} (cosine, the `ssc "
        f"train` recipe otherwise); share + align uses `--align {setup['align']}`. The plain "
        f"WRN 28-1: `ssc train --arch wrn --depth 28` ({setup['base_epochs']} epochs).",
        "- Share + fold: the file `ssc fold --data digits` writes (threshold 0.99), its stored "
        "parameters and top-1 (the SWRN before the fold is in share.json). Pruning and SVD "
        "act on the convs the share groups hold (WRN: conv1/conv2 of blocks 1-3 of each "
        "stage; resnet20: the runs `find_groups` finds), at the share point's parameters. "
        "Where share + fold's MACs exceed the dense net's, the folded file keeps templates "
        "and mixes each conv's weight from them on every forward pass (counted as a matmul).",
        f"- resnet20: pytorchcv's `resnet20_cifar10` on digits upsampled bilinearly to "
        f"3x32x32, trained {setup['resnet_base_epochs']} epochs from its own initialisation "
        "(lr 0.1); share without a fold and no pruning (CPU budget); a shared conv's MACs "
        "include mixing its weight from the templates. Its plain net is trained briefly, so "
        "the fine-tune's extra epochs can lift a compressed net above it: compare share with "
        "SVD.",
    ]
    lines += _align_note(result["summary"])
    for net in dict.fromkeys(s["net"] for s in result["summary"]):
        lines += [
            "",
            f"## {net}",
            "",
            "| method | K / rank / sparsity | parameters | % of plain | MACs | before fine-tune "
            "| top-1 % | delta |",
            "|---|---|---:|---:|---:|---:|---|---:|",
        ]
        for s in (s for s in result["summary"] if s["net"] == net):
            before = f"{s['converted_top1']:.2f}" if "converted_top1" in s else "-"
            lines.append(
                f"| {LABELS[s['method']]} | {s['setting']} | {s['params']:,.0f} | "
                f"{s['params_pct']:.1f} | {s['macs']:,.0f} | {before} | {_cell(s)} | "
                f"{s['delta']:+.2f} |"
            )
    if result.get("skipped"):
        lines += ["", f"Skipped: {result['skipped']}."]
    lines += ["", "## Targets", ""]
    for t in result["targets"]:
        lines.append(f"- {t['net']}: {t['target']}: **{'met' if t['met'] else 'missed'}** "
                     f"({t['evidence']})")  # fmt: skip
    return "\n".join(lines) + "\n"
