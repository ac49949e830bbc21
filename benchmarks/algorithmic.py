"""Thinking longer, measured fairly: plain, soft-shared, folded and recurrent networks on
prefix sums (1-d) and mazes, trained small and tested up to 8x larger, over several seeds.

    python benchmarks/algorithmic.py [--seeds 3] [--jobs N] [--full] [--device cuda]
    python benchmarks/algorithmic.py --quick                # a smoke run (seconds)
    python benchmarks/algorithmic.py --compare OLD.json     # rerun, then check OLD within noise

The paper's second claim (Savarese & Maire, ICLR 2019): networks with shared weights train
faster and extrapolate better beyond the training span. Bansal et al. (NeurIPS 2022) showed
what makes a loop extrapolate: recall of the input at every step and the progressive loss.
This script gives every kind of network that recipe's chance, end to end through the library
calls behind ``ssc train``, ``ssc fold`` and ``ssc eval``. Per task and seed it trains:

* ``plain``: an FCN of the trained depth T (blocks), the usual loss;
* ``small``: an FCN of depth T whose width gives about the shared network's parameters;
* ``shared``: the SFCN as the paper trains it (the usual loss, no regulariser);
* ``looped``: the SFCN with signed recurrent alignment and the progressive loss, folded
  (``ssc fold``) into a real loop;
* ``residual``: the RFCN, one block looped T times with recall (tied by construction), the
  block being the FCN's residual block (so it differs from the folded SFCN only in how it was
  tied), with the progressive loss;
* ``recurrent``: the same with Bansal et al.'s projection block (``--block projection``: the
  state recomputed from [state, recall] at every step instead of accumulated).

Measured: optimizer steps until 95 % of the training instances are solved exactly (each
epoch's on-the-fly training accuracy: the paper's "trains faster"), and the exact-solve rate on
fresh instances at 1x, 2x, 4x (prefix sums also 8x) the training size. Networks without a loop
run their own depth. The two looped ones run ``round(T x factor)`` iterations (``factor``: the
ratio of the test size to the training size, bits or cells per side) — a rule fixed before any
test instance is seen — and also ``auto`` (each instance stops when its prediction has not
changed for 3 iterations, capped at twice the rule's count). A sweep up to twice the rule's
count gives the test-chosen best count, reported in its own, labelled row: it looks at the
answers, so it is an upper bound, not a result.

Seeds change the data and the initial weights; the table gives the median over seeds and the
range. Trainings run in parallel processes of one torch thread each (``--jobs``, default: the
CPU count); ``--device cuda`` runs them one at a time on the GPU. Writes ``algorithmic.json``,
``algorithmic.md`` and ``algorithmic.png`` (``algorithmic_full.*`` with ``--full``) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = ("plain", "small", "shared", "looped", "residual", "recurrent")  # the table's order
LOOPS = ("looped", "residual", "recurrent")  # the networks that can run longer
LABELS = {
    "plain": "plain FCN, same depth",
    "small": "plain FCN, as few parameters",
    "shared": "SFCN, the paper's training",
    "looped": "SFCN + alignment + progressive loss, folded",
    "residual": "RFCN, the FCN's residual block, + progressive loss",
    "recurrent": "RFCN, projection block, + progressive loss",
}
COST = {"plain": 3, "small": 1, "shared": 3, "looped": 4, "residual": 1, "recurrent": 3}
AUTO_PATIENCE = 3


@dataclass(frozen=True)
class TaskBench:
    """One task: its networks' size and training, and the test sizes (``factors`` x train)."""

    kind: str  # "prefix-sums" (size = bits) or "maze" (size = cells per side)
    train_size: int
    factors: tuple[float, ...]
    blocks: int  # T: the depth of fcn/sfcn, the trained iterations of the rfcn
    width: int
    templates: int
    train_count: int
    test_count: int  # fresh instances at 1x; larger sizes get test_count / factor (>= 50)
    epochs: int
    batch_size: int
    lr: float
    progressive: float  # alpha of the progressive loss (looped and recurrent)
    align: float = 10.0  # signed recurrent alignment of the looped SFCN

    @property
    def option(self) -> str:
        return "size" if self.kind == "maze" else "length"

    @property
    def in_channels(self) -> int:
        return 3 if self.kind == "maze" else 1

    @property
    def sizes(self) -> list[int]:
        return [max(2, round(self.train_size * f)) for f in self.factors]

    def test_counts(self) -> list[int]:
        return [max(50, round(self.test_count / f)) for f in self.factors]

    def spec(self, size: int, count: int, seed: int) -> str:
        return f"{self.kind}:{self.option}={size},count={count},seed={seed}"

    def rule(self, trained: int) -> list[int]:
        """The iterations a loop runs at each test size: proportional to the size."""
        return [max(1, round(trained * f)) for f in self.factors]


PREFIX = TaskBench("prefix-sums", 32, (1.0, 2.0, 4.0, 8.0), blocks=30, width=64, templates=4,
                   train_count=6000, test_count=500, epochs=8, batch_size=60, lr=0.001,
                   progressive=1.0)  # fmt: skip
MAZE = TaskBench("maze", 4, (1.0, 2.0, 4.0), blocks=12, width=32, templates=4, train_count=4000,
                 test_count=500, epochs=12, batch_size=64, lr=0.002, progressive=0.5)  # fmt: skip


@dataclass(frozen=True)
class Setup:
    """The benchmark's knobs; ``--quick`` shrinks them for a smoke test, ``--full`` grows."""

    tasks: tuple[TaskBench, ...] = (PREFIX, MAZE)
    seeds: int = 3  # how many seeds: first_seed, first_seed + 1, ...
    first_seed: int = 0
    threshold: float = 0.99  # the fold's similarity threshold (ssc's default)
    device: str = "cpu"

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tasks"] = [
            {**asdict(t), "factors": list(t.factors), "sizes": t.sizes} for t in self.tasks
        ]
        return out


QUICK = Setup(
    tasks=(
        replace(PREFIX, train_size=6, blocks=3, width=8, templates=2, train_count=96,
                test_count=24, epochs=1, batch_size=32),
        replace(MAZE, train_size=3, factors=(1.0, 2.0), blocks=3, width=8, templates=2,
                train_count=96, test_count=24, epochs=1, batch_size=32),
    ),  # fmt: skip
    seeds=2,
)
FULL = Setup(
    tasks=(
        replace(PREFIX, train_count=10000, test_count=1000, epochs=20, batch_size=100),
        replace(MAZE, train_size=9, blocks=30, width=64, train_count=10000, test_count=1000,
                epochs=30),
    )
)  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One training (and its evaluation): a network of a task at a seed."""

    task: TaskBench
    seed: int
    network: str
    setup: Setup = field(repr=False)


def matched_width(task: TaskBench) -> int:
    """The FCN width whose parameter count is closest to the shared network's."""
    from soft_share_cli.models.params import count_parameters
    from soft_share_cli.models.registry import build_model

    dims = {"dims": 1} if task.kind == "prefix-sums" else {}
    common = {"blocks": task.blocks, "num_classes": 2, "in_channels": task.in_channels, **dims}
    shared = count_parameters(
        build_model("sfcn", width=task.width, num_templates=task.templates, **common)
    )

    def distance(width: int) -> int:
        return abs(count_parameters(build_model("fcn", width=width, **common)) - shared)

    return min(range(1, task.width + 1), key=distance)


def config_of(job: Job) -> Any:
    """The training configuration of ``job``'s network (see the module docstring)."""
    from soft_share_cli.training.regularizers import AlignMode
    from soft_share_cli.training.tasks import TaskTrainConfig

    t = job.task
    base = TaskTrainConfig(
        arch="fcn", num_templates=None, blocks=t.blocks, width=t.width, epochs=t.epochs,
        batch_size=t.batch_size, lr=t.lr, seed=job.seed, device=job.setup.device,
    )  # fmt: skip
    if job.network == "plain":
        return base
    if job.network == "small":
        return replace(base, width=matched_width(t))
    if job.network in ("residual", "recurrent"):
        block = "residual" if job.network == "residual" else "projection"
        return replace(base, arch="rfcn", progressive=t.progressive, block=block)
    shared = replace(base, arch="sfcn", num_templates=t.templates)
    if job.network == "shared":
        return shared
    return replace(shared, align=t.align, align_mode=AlignMode.SIGNED, progressive=t.progressive)


def run_job(job: Job, work: str) -> dict[str, Any]:
    """Train ``job``'s network and measure it at every test size."""
    from soft_share_cli.analysis.analyze import AnalysisOptions
    from soft_share_cli.pipeline.fold import FoldOptions, fold_checkpoint
    from soft_share_cli.pipeline.train import run_train

    start = time.perf_counter()
    s, task = job.setup, job.task
    config = config_of(job)
    stem = Path(work) / f"{task.kind}_{job.seed}_{job.network}"
    path = stem.with_suffix(".pt")
    report = run_train(config, task.spec(task.train_size, task.train_count, job.seed), path)
    result: dict[str, Any] = {
        "task": task.kind,
        "seed": job.seed,
        "network": job.network,
        "architecture": report.architecture,
        "width": config.width,
        "parameters": report.parameters,
        "steps_to_95": report.steps_to["train_exact_95"],
        "final_train_exact": report.history[-1].train_exact,
        "history": [
            {k: getattr(e, k) for k in ("epoch", "steps", "train_exact", "test_exact")}
            for e in report.history
        ],
        "train_seconds": report.seconds,
    }
    specs = [
        task.spec(size, n, job.seed) for size, n in zip(task.sizes, task.test_counts(), strict=True)
    ]
    if job.network not in LOOPS:
        from soft_share_cli.pipeline.eval import run_eval

        result["exact"] = [run_eval(path, spec, device=s.device).result.exact for spec in specs]
    else:
        loop_path = path
        if job.network == "looped":
            loop_path = stem.with_suffix(".safetensors")
            fold = fold_checkpoint(
                path, loop_path, FoldOptions(analysis=AnalysisOptions(threshold=s.threshold))
            )
            result["fold"] = {
                "parameters": fold.params.folded,
                "loops": list(fold.loops),
                "probe_max_abs_diff": fold.probe.max_abs_diff,
            }
        result.update(measure_loop(loop_path, task, specs, s.device))
    result["seconds"] = time.perf_counter() - start
    return result


def measure_loop(path: Path, task: TaskBench, specs: list[str], device: str) -> dict[str, Any]:
    """A looped network at each test size: the rule's count, ``auto``, and a sweep."""
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.evaluation.iterations import AutoOptions, evaluate_auto
    from soft_share_cli.evaluation.tasks import iteration_sweep
    from soft_share_cli.pipeline.network import open_network

    model, _, _ = open_network(load_checkpoint(path), path, None)  # as ssc eval opens it
    trained = int(model.trained_iterations)
    rule = task.rule(trained)
    out: dict[str, Any] = {
        "description": model.describe(),
        "trained_iterations": trained,
        "iterations": rule,
        "segments": len(getattr(model, "segments", [None])),
        "exact": [],
        "auto": [],
        "sweeps": [],
    }
    for spec, n in zip(specs, rule, strict=True):
        data = load_data(spec, "test")
        grid = sorted({*range(max(1, n // 4), 2 * n + 1, max(1, n // 8)), n, 2 * n})
        points = [p.to_dict() for p in iteration_sweep(model, data, grid, device=device)]
        out["sweeps"].append(points)
        out["exact"].append(next(p["exact"] for p in points if p["iterations"] == n))
        auto = evaluate_auto(
            model, data, AutoOptions(patience=AUTO_PATIENCE, max_iterations=2 * n), device=device
        )
        out["auto"].append(
            {"exact": auto.exact, "mean_iterations": auto.mean_iterations, "capped": auto.capped}
        )
    return out


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # parallel processes, one thread each: no thread-pool contention


def run_jobs(
    setup: Setup, work: Path, jobs: int, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Every job of ``setup``, ``jobs`` at a time (in this process when ``jobs`` is 1)."""
    todo = [
        Job(task, seed, network, setup)
        for task in setup.tasks
        for seed in setup.seed_list
        for network in NETWORKS
    ]
    todo.sort(key=lambda j: (j.task.kind != "maze", -COST[j.network], j.seed))  # long first
    results: list[dict[str, Any]] = []

    def done(r: dict[str, Any]) -> None:
        results.append(r)
        steps = r["steps_to_95"]
        log(
            f"  [{len(results)}/{len(todo)}] {r['task']} seed {r['seed']} {r['network']}: "
            f"steps to 95 % {steps if steps is not None else 'not reached'}, solved "
            + ", ".join(f"{x:.1f} %" for x in r["exact"])
            + f" ({r['seconds']:.0f} s)"
        )

    if jobs <= 1:
        for job in todo:
            done(run_job(job, str(work)))
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no torch state forked mid-flight
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init) as pool:
            futures = [pool.submit(run_job, job, str(work)) for job in todo]
            for future in as_completed(futures):
                done(future.result())
    order = {
        (t.kind, seed, n): i
        for i, (t, seed, n) in enumerate(
            (t, seed, n) for t in setup.tasks for seed in setup.seed_list for n in NETWORKS
        )
    }
    return sorted(results, key=lambda r: order[(r["task"], r["seed"], r["network"])])


# --- the summary: medians and ranges over seeds ---------------------------------------------


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min and max; None (never reached) counts as larger than anything."""
    keyed = sorted(values, key=lambda v: math.inf if v is None else v)
    finite = [v for v in keyed if v is not None]
    n = len(keyed)
    if n % 2:
        median = keyed[n // 2]
    else:
        lo, hi = keyed[n // 2 - 1], keyed[n // 2]
        median = None if lo is None or hi is None else (lo + hi) / 2
    return {
        "values": list(values),
        "median": median,
        "min": finite[0] if finite else None,
        "max": None if keyed[-1] is None else keyed[-1],
    }


def summarize(setup: Setup, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and row of the table: parameters, steps to 95 %, solve rates over the seeds."""
    summary: dict[str, Any] = {}
    for task in setup.tasks:
        rows: dict[str, Any] = {}
        of = {
            n: [r for r in runs if r["task"] == task.kind and r["network"] == n] for n in NETWORKS
        }
        sizes = range(len(task.sizes))
        for name in NETWORKS:
            rs = of[name]
            steps = [r["steps_to_95"] for r in rs]
            rows[name] = {
                "parameters": rs[0]["fold"]["parameters"] if name == "looped" else
                rs[0]["parameters"],
                "width": rs[0]["width"],
                "steps_to_95": _stats(steps),
                "reached_95": sum(v is not None for v in steps),
                "faster_than_plain": sum(
                    _before(r["steps_to_95"], p["steps_to_95"])
                    for r, p in zip(rs, of["plain"], strict=True)
                ),
                "exact": [_stats([r["exact"][i] for r in rs]) for i in sizes],
            }  # fmt: skip
            if name in LOOPS:
                rows[name]["iterations"] = rs[0]["iterations"]
                rows[f"{name}_auto"] = {
                    "parameters": rows[name]["parameters"],
                    "exact": [_stats([r["auto"][i]["exact"] for r in rs]) for i in sizes],
                    "mean_iterations": [
                        _stats([r["auto"][i]["mean_iterations"] for r in rs]) for i in sizes
                    ],
                }
                best = [[max(pts, key=lambda p: p["exact"]) for pts in r["sweeps"]] for r in rs]
                rows[f"{name}_best"] = {
                    "parameters": rows[name]["parameters"],
                    "exact": [_stats([b[i]["exact"] for b in best]) for i in sizes],
                    "iterations": [[b[i]["iterations"] for b in best] for i in sizes],
                }
        summary[task.kind] = rows
    return summary


ROWS = ("plain", "small", "shared", *(f"{n}{m}" for n in LOOPS for m in ("", "_auto", "_best")))


def _before(a: int | None, b: int | None) -> bool:
    return a is not None and (b is None or a < b)


def _cell(stat: dict[str, Any], unit: str = "") -> str:
    def show(v: float | None) -> str:
        if v is None:
            return "not reached"
        return f"{v:.1f}" if unit else f"{v:g}"

    if stat["min"] == stat["max"]:  # one seed, or all alike
        return show(stat["median"]) + (unit if stat["median"] is not None else "")
    spread = f"{show(stat['min'])}–{show(stat['max'])}"
    return f"{show(stat['median'])}{unit} ({spread})"


def _label(key: str, row: dict[str, Any]) -> str:
    base, _, mode = key.partition("_")
    if mode == "auto":
        return "  the same, `--iterations auto`"
    if mode == "best":
        return "  the same, best count *chosen on the test set* (optimistic)"
    return LABELS[base] + (f" (width {row['width']})" if key == "small" else "")


def table(results: dict[str, Any], task: TaskBench) -> str:
    """The summary of one task as a Markdown table (median over seeds, range in brackets)."""
    rows = results["summary"][task.kind]
    unit = "cells" if task.kind == "maze" else "bits"
    size = (lambda s: f"{s}x{s}") if task.kind == "maze" else (lambda s: f"{s} bits")
    head = " | ".join(
        f"solved at {size(s)} ({f:g}x)" for s, f in zip(task.sizes, task.factors, strict=True)
    )
    lines = [
        f"| network ({task.kind}, trained at {task.train_size} {unit}, T = {task.blocks}) "
        f"| parameters | steps to 95 % train solved | seeds reaching it | {head} |",
        "|---|---:|---:|---:|" + "---:|" * len(task.sizes),
    ]
    seeds = len(rows["plain"]["steps_to_95"]["values"])
    for key in ROWS:
        row = rows[key]
        if "steps_to_95" in row:
            steps = f"{_cell(row['steps_to_95'])} | {row['reached_95']}/{seeds}"
        else:
            steps = " | "
        cells = [_cell(stat, " %") for stat in row["exact"]]
        if key in LOOPS:
            cells = [f"{c}, {n} it." for c, n in zip(cells, row["iterations"], strict=True)]
        elif key.endswith("_auto"):
            its = [f"{_whole(m)} it." for m in row["mean_iterations"]]
            cells = [f"{c}, mean {n}" for c, n in zip(cells, its, strict=True)]
        elif key.endswith("_best"):
            cells = [f"{c}, {_span(n)} it." for c, n in zip(cells, row["iterations"], strict=True)]
        label = _label(key, row)
        lines.append(f"| {label} | {row['parameters']:,} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _whole(stat: dict[str, Any]) -> str:
    """A median (range) of iteration counts, to the whole iteration."""
    lo, mid, hi = (f"{stat[k]:.0f}" for k in ("min", "median", "max"))
    return mid if lo == hi else f"{mid} ({lo}–{hi})"


def _span(values: Sequence[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def per_seed_table(results: dict[str, Any], task: TaskBench) -> str:
    """Every run of one task: steps to 95 % and solved at each size, seed by seed."""
    sizes = " / ".join(str(s) for s in task.sizes)
    lines = [
        f"| {task.kind} network | seed | steps to 95 % | solved at {sizes} (%) | auto (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        if r["task"] != task.kind:
            continue
        steps = r["steps_to_95"] if r["steps_to_95"] is not None else "not reached"
        solved = " / ".join(f"{x:.1f}" for x in r["exact"])
        auto = " / ".join(f"{a['exact']:.1f}" for a in r.get("auto", []))
        name = r["network"]
        if name == "looped":
            name += f" ({r['segments']} segments)"
        lines.append(f"| {name} | {r['seed']} | {steps} | {solved} | {auto} |")
    return "\n".join(lines)


# --- the plot --------------------------------------------------------------------------------


def figure(results: dict[str, Any], setup: Setup) -> Any:
    """Per task: training curves, and the looped networks' solve rate against iterations."""
    import numpy as np
    from matplotlib.figure import Figure

    tasks = setup.tasks
    fig = Figure(figsize=(19, 4.0 * len(tasks)), layout="constrained")
    axes = fig.subplots(len(tasks), 1 + len(LOOPS), squeeze=False)
    colors = {
        "plain": "tab:blue",
        "small": "tab:cyan",
        "shared": "tab:orange",
        "looped": "tab:red",
        "residual": "tab:olive",
        "recurrent": "tab:green",
    }
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for (left, *loops), task in zip(axes, tasks, strict=True):
        runs = [r for r in results["runs"] if r["task"] == task.kind]
        for name in NETWORKS:
            curves = [r["history"] for r in runs if r["network"] == name]
            steps = [e["steps"] for e in curves[0]]
            values = np.array([[e["train_exact"] for e in h] for h in curves])
            c = colors[name]
            left.plot(steps, np.median(values, axis=0), "-o", ms=3, color=c, label=name)
            left.fill_between(steps, values.min(axis=0), values.max(axis=0), color=c, alpha=0.15)
        left.axhline(95, color="grey", lw=0.8, ls=":")
        left.set(xlabel="optimizer steps", ylabel="training instances solved (%)", ylim=(0, 101))
        left.set_title(f"{task.kind}: training (median, range over seeds)")
        left.legend()
        plain = results["summary"][task.kind]["plain"]["exact"]
        for ax, name in zip(loops, LOOPS, strict=True):
            mine = [r for r in runs if r["network"] == name]
            for i, size in enumerate(task.sizes):
                its = [p["iterations"] for p in mine[0]["sweeps"][i]]
                values = np.array([[p["exact"] for p in r["sweeps"][i]] for r in mine])
                c = palette[i % len(palette)]
                label = f"{size}x{size}" if task.kind == "maze" else f"{size} bits"
                ax.plot(its, np.median(values, axis=0), color=c, label=label)
                ax.fill_between(its, values.min(axis=0), values.max(axis=0), color=c, alpha=0.15)
                ax.axvline(mine[0]["iterations"][i], color=c, lw=0.8, ls=":")
                ax.axhline(plain[i]["median"], color=c, ls="--", lw=0.8)
            ax.set(xlabel="iterations", ylabel="test instances solved (%)", ylim=(0, 101))
            ax.set_xscale("log")
            ax.plot([], [], color="grey", ls="--", lw=0.8, label="plain FCN")
            ax.plot([], [], color="grey", ls=":", lw=0.8, label="the rule's count")
            ax.set_title(f"{task.kind}: {name}, run longer")
            ax.legend(title="test size", fontsize=8)
    return fig


# --- comparison with an earlier run ------------------------------------------------------------


def compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], int, int]:
    """Cells of ``new``'s summary set against ``old``'s: within noise when one run's median lies
    in the other's range over seeds. Returns the report lines, cells within noise, cells."""
    lines, within, total = [], 0, 0
    sizes = {t["kind"]: t["sizes"] for t in new["setup"]["tasks"]}
    for kind, rows in new["summary"].items():
        before = old.get("summary", {}).get(kind)
        if before is None:
            lines.append(f"{kind}: not in the earlier run")
            continue
        for key in ROWS:
            if key not in before:
                lines.append(f"{kind} {key}: not in the earlier run")
                continue
            stats = []
            if key in NETWORKS:
                stats.append(
                    ("steps to 95 %", rows[key]["steps_to_95"], before[key]["steps_to_95"])
                )
            for size, a, b in zip(
                sizes[kind], rows[key]["exact"], before[key]["exact"], strict=True
            ):
                stats.append((f"solved at size {size}", a, b))
            for what, a, b in stats:
                total += 1
                ok = _inside(a["median"], b) or _inside(b["median"], a)
                within += ok
                mark = "ok" if ok else "OUTSIDE"
                lines.append(f"{mark:8} {kind} {key} {what}: now {_cell(a)}, before {_cell(b)}")
    return lines, within, total


def _inside(value: float | None, stat: dict[str, Any]) -> bool:
    lo, hi = stat["min"], stat["max"]
    if value is None:
        return hi is None  # both include a seed that never got there
    return lo is not None and lo <= value and (hi is None or value <= hi)


# --- entry point ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    size.add_argument("--full", action="store_true", help="larger mazes, longer training")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 3; --quick 2)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ... (0)"
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel trainings (default: CPUs)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--out", type=Path, help="output folder (default benchmarks/results; --from-json: its own)"
    )
    parser.add_argument("--keep", type=Path, help="write the trained and folded networks here")
    parser.add_argument(
        "--from-json", type=Path, help="only redraw the table and plot of an earlier run's JSON"
    )
    parser.add_argument(
        "--compare", type=Path, help="after the run, check an earlier run's JSON within noise"
    )
    args = parser.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    if args.from_json is not None:
        try:
            results = json.loads(args.from_json.read_text())
            setup = _setup_of(results)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"--from-json {args.from_json}: not a run of this benchmark ({exc})")
        results["summary"] = summarize(setup, results["runs"])  # derived: redrawn from the runs
        out = args.from_json.parent if args.out is None else args.out
        out.mkdir(parents=True, exist_ok=True)
        write(results, setup, out, args.from_json.stem)
        return 0
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results"
    setup = QUICK if args.quick else FULL if args.full else Setup()
    if args.seeds is not None:
        setup = replace(setup, seeds=args.seeds)
    setup = replace(setup, first_seed=args.first_seed, device=args.device)
    jobs = 1 if args.device == "cuda" else args.jobs
    import torch

    start = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as every worker: results must not depend on --jobs
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) if args.keep is None else args.keep
            work.mkdir(parents=True, exist_ok=True)
            log(f"{len(NETWORKS) * setup.seeds * len(setup.tasks)} trainings, {jobs} at a time")
            runs = run_jobs(setup, work, jobs, log)
    finally:
        torch.set_num_threads(threads)
    results: dict[str, Any] = {
        "setup": setup.to_dict(),
        "runs": runs,
        "summary": summarize(setup, runs),
        "seconds": time.perf_counter() - start,
        "machine": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "threads_per_job": 1,
            "jobs": jobs,
            "cpus": os.cpu_count(),
            "processor": _processor(),
            "device": args.device,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/algorithmic.py"
        + (" --quick" if args.quick else " --full" if args.full else "")
        + (f" --seeds {args.seeds}" if args.seeds is not None else "")
        + (f" --first-seed {args.first_seed}" if args.first_seed else "")
        + (" --device cuda" if args.device == "cuda" else ""),
    }
    if args.compare is not None:
        lines, within, total = compare(json.loads(args.compare.read_text()), results)
        results["compare"] = {
            "against": str(args.compare),
            "within": within,
            "cells": total,
            "lines": lines,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "algorithmic_quick" if args.quick else "algorithmic_full" if args.full else "algorithmic"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    write(results, setup, args.out, stem)
    return 0


def _setup_of(results: dict[str, Any]) -> Setup:
    s = dict(results["setup"])
    tasks = []
    for t in s.pop("tasks"):
        t = {k: v for k, v in t.items() if k != "sizes"}
        tasks.append(TaskBench(**{**t, "factors": tuple(t["factors"])}))
    return Setup(tasks=tuple(tasks), **s)


def _processor() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write(results: dict[str, Any], setup: Setup, out: Path, stem: str) -> None:
    """Write the tables (``.md``) and the plot (``.png``) of ``results``; print the tables."""
    m = results["machine"]
    tables = "\n\n".join(table(results, task) for task in setup.tasks)
    seeds = "\n\n".join(per_seed_table(results, task) for task in setup.tasks)
    where = (
        "1 GPU" if m.get("device") == "cuda" else f"{m['jobs']} parallel jobs of 1 thread"
    )
    (out / f"{stem}.md").write_text(
        f"Command: `{results['command']}` ({results['seconds'] / 60:.1f} min, {where}, "
        f"{m['processor']}, torch {m['torch']}). Median over seeds {_span(setup.seed_list)}, "
        f"range in brackets. Loops run round(T x size factor) iterations unless the row says "
        f"otherwise.\n\n{tables}\n\nEvery run:\n\n{seeds}\n"
    )
    compared = results.get("compare")
    if compared is not None:
        with (out / f"{stem}.md").open("a") as md:
            md.write(
                f"\nCompared with `{compared['against']}`: {compared['within']} of "
                f"{compared['cells']} cells within noise (one run's median in the other's "
                "range over seeds):\n\n```\n" + "\n".join(compared["lines"]) + "\n```\n"
            )
    figure(results, setup).savefig(out / f"{stem}.png", dpi=100)
    print(tables)
    if compared is not None:
        print("\n".join(compared["lines"]))
        print(f"within noise of {compared['against']}: {compared['within']} of {compared['cells']}")
    print(f"({results['seconds'] / 60:.1f} min; wrote {out}/{stem}.md and .png)")


if __name__ == "__main__":
    sys.exit(main())
