"""Turn what ``benchmarks/run.py`` measured into targets, a table, BENCHMARKS.md and a plot."""

from __future__ import annotations

import math
import statistics
from typing import Any

# Why a target can miss, and what would close it: printed under the table for every miss.
EXPLANATIONS = {
    "startup": "ssc imports only click at start-up; a miss means a heavy import crept into "
    "soft_share_cli.cli or the package __init__ (tests/test_cli.py checks which).",
    "analyze-time": "analysis reads the file without torch; a miss means the file needed "
    "torch's loader (see soft_share_cli/checkpoints/mapped.py for what it declines) "
    "or an import of "
    "torch/scikit-learn crept into the analysis path (tests check that it stays out).",
    "analyze-memory": "only coefficients are read, and bank scans hand their pages back; a "
    "miss means something touched the templates or the optimizer state.",
    "fold": "ssc fold must import torch (~1 s here) and run the network twice on a probe; "
    "the WRN-28-10's convolutions on 16 samples dominate on a loaded CPU. A smaller "
    "--probe would close it, at the price of a weaker check.",
    "inference": "folding removes the per-call weight mixing (K templates into every shared "
    "layer's weight), which on these CPUs is 10-15 % of a forward pass; the folded network also "
    "keeps its static weights and activations channels-last, which lets oneDNN run every "
    "convolution (the soft-shared network rebuilds its weights on every call and cannot keep "
    "them laid out). A miss means one of the two stopped applying: see the control rows.",
    "eval": "ssc eval's loop adds loss, top-1/top-5 bookkeeping per batch on the device; a "
    "miss at this size is usually timer noise (other processes on the same cores).",
    "scaling": "a super-linear exponent points at a quadratic step (per-layer work repeated "
    "per layer); profile analyze_checkpoint on the deepest checkpoint.",
}


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (the growth exponent)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len({p[0] for p in points}) < 2:
        return None
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    var = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / var


def _per_unit(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of y against x: the marginal cost of one more unit."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def _marginal(r: dict[str, Any]) -> str:
    rows = [row for row in r["scaling"]["rows"] if row["axis"] == "depth"]
    costs = []
    for step in ("analyze", "fold"):
        slope = _per_unit([row["layers"] for row in rows], [row[f"{step}_s"] for row in rows])
        if slope is not None:
            costs.append(f"`{step}` {slope * 1e3:.2f} ms")
    return (
        f" Fitted straight: each further shared layer costs {' and '.join(costs)}; the "
        "exponents below 1 come from fixed costs that dominate the shallow end."
        if costs
        else ""
    )


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of issue 6 with its measured value, goal and verdict."""
    m = r["measurements"]
    wall = {k: v["median_wall_s"] for k, v in m.items()}
    rss = {k: v["median_maxrss_mb"] for k, v in m.items()}
    rows: list[dict[str, Any]] = []

    def add(key: str, what: str, value: float, goal: float, at_most: bool, why: str,
            measured: str, baseline: str) -> None:  # fmt: skip
        met = value <= goal if at_most else value >= goal
        rows.append(
            {
                "id": key,
                "what": what,
                "measured": measured,
                "baseline": baseline,
                "value": round(value, 4),
                "goal": f"{'≤' if at_most else '≥'} {goal:g}",
                "met": bool(met),
                "explanation": why,
            }
        )

    torch_s, torch_mb = wall["import_torch"], rss["import_torch"]
    for cmd in ("help", "version"):
        add(f"1-{cmd}", f"`ssc --{cmd}` time vs `python -c 'import torch'`",
            _ratio(wall[f"ssc_{cmd}"], torch_s), 0.25, True, "startup",
            f"{wall[f'ssc_{cmd}']:.3f} s", f"{torch_s:.3f} s")  # fmt: skip
    for fmt in ("zip", "legacy"):
        naive_s, naive_mb = wall[f"naive_load_{fmt}"], rss[f"naive_load_{fmt}"]
        add(f"2-{fmt}-time", f"`ssc analyze --json` ({fmt}) time vs naive `torch.load`",
            _ratio(wall[f"analyze_{fmt}"], naive_s), 0.9, True, "analyze-time",
            f"{wall[f'analyze_{fmt}']:.3f} s", f"{naive_s:.3f} s")  # fmt: skip
        above = rss[f"analyze_{fmt}"] - torch_mb
        add(f"2-{fmt}-memory",
            f"`ssc analyze` ({fmt}) peak RSS above `import torch`, vs the naive load's",
            _ratio(above, naive_mb - torch_mb), 0.10, True, "analyze-memory",
            f"{rss[f'analyze_{fmt}']:.0f} MB ({above:+.0f})",
            f"{naive_mb:.0f} MB ({naive_mb - torch_mb:+.0f})")  # fmt: skip
    inference = r["inference"]
    for batch, goal in (("64", 1.0), ("1", 1.3)):  # torch's default threads, as users run it
        med = inference["batches"][batch]["median"]
        add(f"3-batch{batch}", f"folded vs soft-shared throughput, batch {batch} "
            f"({inference['device']})", _ratio(med["folded"], med["original"]), goal, False,
            "inference", f"{med['folded']:.1f}/s", f"{med['original']:.1f}/s")  # fmt: skip
    add("3-predictions", "folded predictions identical to the original's (exact fold)",
        1.0 if inference["identical_predictions"] else 0.0, 1.0, False, "inference",
        f"max |Δlogit| {inference['max_abs_logit_diff']:.1e}",
        f"{inference['check_samples']} samples")  # fmt: skip
    ssc_eval, bare = statistics.median(r["eval"]["ssc"]), statistics.median(r["eval"]["bare"])
    add(
        "4-eval",
        "`ssc eval` throughput vs a bare `inference_mode` loop",
        _ratio(ssc_eval, bare),
        0.95,
        False,
        "eval",
        f"{ssc_eval:.0f}/s",
        f"{bare:.0f}/s",
    )
    add("5-fold", "`ssc fold` (no data) time vs naive `torch.load`",
        _ratio(wall["fold_zip"], wall["naive_load_zip"]), 2.0, True, "fold",
        f"{wall['fold_zip']:.3f} s", f"{wall['naive_load_zip']:.3f} s")  # fmt: skip
    for axis, x_key, label in (("depth", "layers", "layers"), ("K", "K", "K")):
        rows_ = [row for row in r["scaling"]["rows"] if row["axis"] == axis]
        for step in ("analyze", "fold"):
            slope = _slope([row[x_key] for row in rows_], [row[f"{step}_s"] for row in rows_])
            if slope is not None:
                first, last = rows_[0], rows_[-1]
                add(f"6-{step}-{axis}", f"`{step}` time growth exponent in {label}",
                    slope, 1.3, True, "scaling",
                    f"{last[f'{step}_s']:.3f} s at {label} {last[x_key]}",
                    f"{first[f'{step}_s']:.3f} s at {label} {first[x_key]}")  # fmt: skip
    return rows


def table(r: dict[str, Any]) -> str:
    """The targets as a Markdown table."""
    lines = [
        "| target | ssc | baseline | ratio | goal | met |",
        "|---|---:|---:|---:|---|:-:|",
    ]
    for t in r["targets"]:
        lines.append(
            f"| {t['what']} | {t['measured']} | {t['baseline']} | {t['value']:.3g} "
            f"| {t['goal']} | {'✓' if t['met'] else '✗'} |"
        )
    return "\n".join(lines)


def _measurements(r: dict[str, Any]) -> str:
    lines = ["| command | median wall | median peak RSS | runs (s) |", "|---|---:|---:|---|"]
    for name, v in r["measurements"].items():
        runs = ", ".join(f"{w:.3f}" for w in v["wall_s"])
        lines.append(
            f"| `{name}` | {v['median_wall_s']:.3f} s | {v['median_maxrss_mb']:.0f} MB | {runs} |"
        )
    return "\n".join(lines)


def _scaling(r: dict[str, Any]) -> str:
    lines = [
        "| depth | K | layers | parameters | analyze | fold |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["scaling"]["rows"]:
        lines.append(
            f"| {row['depth']} | {row['K']} | {row['layers']} | {row['parameters']:,} "
            f"| {row['analyze_s'] * 1e3:.1f} ms | {row['fold_s'] * 1e3:.0f} ms |"
        )
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    """BENCHMARKS.md: the latest table, how it was measured, what missed and why."""
    mach = r["machine"]
    inference = r["inference"]
    missed = [t for t in r["targets"] if not t["met"]]
    quick = " — **quick mode: small workloads, the ratios mean little**" if r["quick"] else ""
    parts = [
        "# Benchmarks",
        "",
        f"Latest run: {r['date']}{quick}. Regenerate with `{r['command'].strip()}` "
        f"(about {r['seconds']:.0f} s); raw numbers in "
        "[`benchmarks/results/latest.json`](benchmarks/results/latest.json).",
        "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, Python "
        f"{mach['python']} ({mach['platform']}); load average {mach['load_average_before']} "
        f"before, {mach['load_average_after']} after (other processes share these cores: "
        "ratios are measured side by side, interleaved, to cancel that out).",
        "",
        "## Targets",
        "",
        table(r),
        "",
        f"Medians of {r['repeats']} interleaved rounds, each command a fresh process (wall time "
        "around it; peak RSS from `wait4`). Memory ratios subtract what a bare `import torch` "
        "takes from both sides; `ssc analyze` never imports torch, so it stays below that "
        "baseline and its ratio is negative. Analysed checkpoint: SWRN-"
        f"{'-'.join(map(str, r['sizes']['big']))} training checkpoint in the authors' layout "
        f"(`module.` keys, pickled `utils.RecorderMeter`, SGD momentum buffers): "
        f"{mach['checkpoint_mb']['zip']} MB zip, {mach['checkpoint_mb']['legacy']} MB legacy. "
        "The naive load runs where the authors' `utils.py` is importable, as it must.",
        "",
    ]
    if missed:
        parts += ["### Missed, and why", ""]
        for key in dict.fromkeys(t["explanation"] for t in missed):
            rows = "; ".join(
                f"{t['what']} ({t['value']:.3g}, goal {t['goal']})"
                for t in missed
                if t["explanation"] == key
            )
            parts.append(f"- **{rows}**: {EXPLANATIONS[key]}")
        parts.append("")
    parts += [
        "## What makes ssc fast here",
        "",
        "- `ssc analyze` and `ssc info` never import torch (about 1 s here) or scikit-learn "
        "(0.9 s): after the safety scan, zip and legacy files are unpickled by a restricted "
        "unpickler into read-only numpy views of the memory-mapped file "
        "(`soft_share_cli/checkpoints/mapped.py`); only coefficients are read, templates once "
        "in chunks "
        "whose pages are handed back, optimizer state never. Clustering uses SciPy's "
        "algorithms reimplemented in numpy, tie for tie (`clustering.linkage_tree`).",
        "- Rebuilding a network builds a storage-less skeleton (meta device) and takes the "
        "checkpoint's memory-mapped tensors as its weights: no 27 million initial weights drawn "
        "and overwritten. The NaN/Inf check reads each storage once (`aminmax`), not once per "
        "alias of a bank: 3.3 s → 0.1 s on the WRN-28-10.",
        "- `ssc fold` builds the folded network as an uninitialised skeleton too (without "
        "`to_empty`, whose meta-tensor path imports sympy: 0.6 s), skips the recurrence graph "
        "(and networkx) it does not report, and probes ssc's own networks at 8×8 (every 3×3 "
        "tap still acts at 2×2 in the last stage) on one thread: a probe is small batches of "
        "per-operation overhead, where a thread pool's synchronisation costs several times the "
        "work on a busy machine.",
        "- The safety scan reads torch's uncompressed pickle members whole and walks their "
        "opcodes from memory (compressed ones stream, so a compression bomb costs nothing).",
        "- A folded SWRN keeps its distinct weights laid out once, channels-last like its "
        "activations, so every convolution runs in oneDNN without a per-call reorder (below).",
        "- `ssc --help` imports click and nothing heavy (tests check the imports).",
        "",
        "## Folded inference",
        "",
        f"{inference['architecture']} → {inference['folded']}, inputs "
        f"{'×'.join(map(str, inference['input']))} on {inference['device']}; coefficients "
        "exactly parallel within two clusters per bank, so the fold is exact: predictions "
        f"identical on {inference['check_samples']} random inputs: "
        f"{'yes' if inference['identical_predictions'] else 'NO'} (max |Δlogit| "
        f"{inference['max_abs_logit_diff']:.1e}).",
        "",
        "| threads | batch | soft-shared | folded | materialized WRN | folded, original layout "
        "| soft-shared, channels-last input |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for threads, batches in (
        (inference.get("threads", "default"), inference["batches"]),
        (1, inference.get("one_thread", {})),
    ):
        for batch, b in batches.items():
            med = b["median"]
            parts.append(
                f"| {threads} | {batch} | {med['original']:.1f}/s | {med['folded']:.1f}/s "
                f"| {med['materialized']:.1f}/s | {med['folded_contiguous']:.1f}/s "
                f"| {med['original_channels_last']:.1f}/s |"
            )
    parts += [
        "",
        "The soft-shared network mixes K templates into a weight for every layer on every call; "
        "the folded one stores its few distinct weights and loops over them, with weights and "
        "activations channels-last (`FoldedSWRN.memory_format`): at batch 1 PyTorch sends "
        "convolutions of fewer than 20,480 input numbers to its im2col path unless the input "
        "is channels-last, and oneDNN is faster on these CPUs. The last two columns separate "
        "the two: the fold computing in the original's layout (folding alone), and the "
        "original fed channels-last inputs (layout alone; its weights, rebuilt every call, stay "
        "in the default layout). The materialized WRN is a plain WRN in the default layout. "
        "The targets use torch's default threads; the 1-thread rows show the same comparison "
        "without thread-pool synchronisation.",
        "",
        *_decomposition(inference),
        "",
        "## Scaling",
        "",
        f"![analyze and fold time against depth and K]({r['scaling']['plot']})",
        "",
        f"SWRN d-1-4 checkpoints against depth, SWRN {r['sizes']['k_depth']}-1-K against K (ssc "
        "format), in process (no start-up). Expected complexity, per bank of L layers and K "
        "templates: bank discovery O(keys), similarity O(L²K), clustering O(L²) (nearest-"
        "neighbour chain), fold planning O(LK): linear in depth and nearly flat in K at these "
        "sizes, where per-key work dominates. `fold` adds what is linear in the parameters "
        "(rebuild, fold, save) and in depth (the probe forward passes). The growth exponents "
        "in the table are log-log least-squares slopes over these points." + _marginal(r),
        "",
        _scaling(r),
        "",
        "## All measurements",
        "",
        _measurements(r),
        "",
    ]
    return "\n".join(parts)


def scaling_figure(rows: list[dict[str, Any]]) -> Any:
    """Two panels: time against layers (K = 4) and against K (depth 28); analyze and fold."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6), layout="constrained")
    for ax, (axis, key, label) in zip(
        figure.subplots(1, 2),
        (("depth", "layers", "shared layers (SWRN d-1-4)"), ("K", "K", "templates K (SWRN d-1-K)")),
        strict=True,
    ):
        chosen = [row for row in rows if row["axis"] == axis]
        xs = [row[key] for row in chosen]
        for step, marker in (("analyze", "o"), ("fold", "s")):
            ys = [row[f"{step}_s"] for row in chosen]
            slope = _slope(xs, ys)
            tag = f" (∝ n^{slope:.2f})" if slope is not None else ""
            ax.plot(xs, ys, marker=marker, label=f"{step}{tag}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    return figure


def _decomposition(inference: dict[str, Any]) -> list[str]:
    """Folding alone and layout alone, as ratios over the soft-shared network, per batch size."""
    lines = []
    for batch, b in inference["batches"].items():
        med = b["median"]
        if "folded_contiguous" not in med:  # results of an older run
            return []
        ours, alone, layout = (
            med[k] / med["original"]
            for k in ("folded", "folded_contiguous", "original_channels_last")
        )
        lines.append(
            f"- batch {batch}: folded {ours:.2f}× the soft-shared network; folding alone (same "
            f"layout) {alone:.2f}×, layout alone {layout:.2f}×."
        )
    return lines
