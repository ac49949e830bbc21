"""Plain vs soft-shared vs folded-and-looped on mazes and prefix sums, over several seeds.

    python benchmarks/algorithmic.py [--seeds 3] [--jobs N] [--quick] [--out benchmarks/results]
    python benchmarks/algorithmic.py --compare OLD.json     # rerun, then check OLD within noise

The paper's second claim (Savarese & Maire, ICLR 2019): on algorithmic tasks, networks with
shared weights train faster and extrapolate better beyond the training span. This script
measures it on the maze and prefix-sums tasks of Schwarzschild et al. (2021), end to end through
the library calls behind ``ssc train``, ``ssc fold`` and ``ssc eval``, on the CPU. Per task and
seed it trains, with one recipe (AdamW, deep supervision of the last blocks):

* ``plain``: an FCN of the same depth and width as the shared network;
* ``small``: an FCN of the same depth whose width gives about the shared network's parameters;
* ``shared``: the SFCN as the paper trains it (no regulariser);
* ``aligned``: the SFCN with ssc's signed recurrent alignment regulariser, which pulls
  consecutive blocks towards one loop; it is folded (``ssc fold``) into a looped network.

Each is measured by the optimizer steps until 95 % of the training instances are solved exactly,
and by the exact-solve rate on fresh instances of 1x, 1.5x and 2x the training size. The looped
network runs its block ``round(T * factor)`` times, T being the trained count: a rule fixed in
advance, not chosen on the test instances; a sweep over the iteration count goes to the JSON
and the plot.

Seeds change everything random (the data and the initial weights). A run is deterministic on
one machine, but another CPU computes the same float operations in another order, and training
amplifies that into differences of the size seeds make (seen: one epoch of steps, a few points
of exact-solve rate). So the table gives, per cell, the median over the seeds and their range,
and ``--compare`` checks a run against an earlier one cell by cell. Trainings run in parallel
processes of one torch thread each (``--jobs``, default: the CPU count). Writes
``algorithmic.json``, ``algorithmic.md`` and ``algorithmic.png`` to ``--out``.
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
NETWORKS = ("plain", "small", "shared", "aligned")  # in order of the table
LABELS = {
    "plain": "plain FCN",
    "small": "plain FCN, as few parameters",
    "shared": "shared SFCN (the paper's training)",
    "aligned": "shared SFCN + alignment",
    "folded": "folded from it, looped",
    "best": "folded, best iteration count (chosen on the test set: optimistic)",
}
COST = {"plain": 3, "small": 1, "shared": 3, "aligned": 4}  # relative, to start long jobs first


@dataclass(frozen=True)
class TaskBench:
    """One task of the benchmark: train at ``train_size``, test at ``factors`` times it."""

    kind: str  # "maze" (size = cells per side) or "prefix-sums" (size = bits)
    train_size: int
    factors: tuple[float, ...] = (1.0, 1.5, 2.0)

    @property
    def option(self) -> str:
        return "size" if self.kind == "maze" else "length"

    @property
    def in_channels(self) -> int:
        return 3 if self.kind == "maze" else 1

    @property
    def sizes(self) -> list[int]:
        return [max(2, round(self.train_size * f)) for f in self.factors]

    def spec(self, size: int, count: int, seed: int) -> str:
        return f"{self.kind}:{self.option}={size},count={count},seed={seed}"


@dataclass(frozen=True)
class Setup:
    """The benchmark's knobs; ``--quick`` shrinks them for a smoke test."""

    tasks: tuple[TaskBench, ...] = (TaskBench("maze", 4), TaskBench("prefix-sums", 16))
    seeds: int = 3  # how many seeds: first_seed, first_seed + 1, ...
    first_seed: int = 0
    train_count: int = 4000  # training instances (one epoch)
    test_count: int = 1000  # fresh instances per test size
    epochs: int = 15
    blocks: int = 12
    width: int = 32
    templates: int = 4
    align: float = 10.0  # signed recurrent alignment: no BatchNorm here to absorb a sign flip
    supervise: int = 6  # every network scores the read-outs of its last 6 blocks
    threshold: float = 0.99  # the fold's similarity threshold (ssc's default)
    sweep_max: float = 3.0  # iteration sweep up to this multiple of the trained count

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
    tasks=(TaskBench("maze", 3), TaskBench("prefix-sums", 6)),
    seeds=2,
    train_count=96,
    test_count=24,
    epochs=1,
    blocks=3,
    width=8,
    templates=2,
    supervise=2,
)


@dataclass(frozen=True)
class Job:
    """One training (and its evaluation): a network of a task at a seed."""

    task: TaskBench
    seed: int
    network: str
    setup: Setup = field(repr=False)


def matched_width(setup: Setup, task: TaskBench) -> int:
    """The FCN width whose parameter count is closest to the shared network's."""
    from soft_share_cli.models.params import count_parameters
    from soft_share_cli.models.registry import build_model

    common = {"blocks": setup.blocks, "num_classes": 2, "in_channels": task.in_channels}
    shared = count_parameters(
        build_model("sfcn", width=setup.width, num_templates=setup.templates, **common)
    )

    def distance(width: int) -> int:
        return abs(count_parameters(build_model("fcn", width=width, **common)) - shared)

    return min(range(1, setup.width + 1), key=distance)


def _config(job: Job) -> Any:
    from soft_share_cli.training.regularizers import AlignMode
    from soft_share_cli.training.tasks import TaskTrainConfig

    s = job.setup
    base = TaskTrainConfig(
        arch="fcn",
        num_templates=None,
        blocks=s.blocks,
        width=s.width,
        epochs=s.epochs,
        supervise=s.supervise,
        seed=job.seed,
    )
    if job.network == "plain":
        return base
    if job.network == "small":
        return replace(base, width=matched_width(s, job.task))
    shared = replace(base, arch="sfcn", num_templates=s.templates)
    if job.network == "shared":
        return shared
    return replace(shared, align=s.align, align_mode=AlignMode.SIGNED)


def run_job(job: Job, work: str) -> dict[str, Any]:
    """Train ``job``'s network, evaluate it at every test size (fold and sweep if aligned)."""
    from soft_share_cli.analysis.analyze import AnalysisOptions
    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.evaluation.tasks import iteration_sweep
    from soft_share_cli.folding.looped import load_looped
    from soft_share_cli.pipeline.eval import run_eval
    from soft_share_cli.pipeline.fold import FoldOptions, fold_checkpoint
    from soft_share_cli.pipeline.train import run_train

    start = time.perf_counter()
    s, task = job.setup, job.task
    config = _config(job)
    stem = Path(work) / f"{task.kind}_{job.seed}_{job.network}"
    path = stem.with_suffix(".pt")
    report = run_train(config, task.spec(task.train_size, s.train_count, job.seed), path)
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
    specs = [task.spec(size, s.test_count, job.seed) for size in task.sizes]
    result["exact"] = [run_eval(path, spec).result.exact for spec in specs]
    if job.network == "aligned":
        folded_path = stem.with_suffix(".safetensors")
        fold = fold_checkpoint(
            path, folded_path, FoldOptions(analysis=AnalysisOptions(threshold=s.threshold))
        )
        looped = load_looped(folded_path)
        trained = looped.trained_iterations
        rule = [max(1, round(trained * f)) for f in task.factors]
        grid = sorted({*range(1, round(trained * s.sweep_max) + 1), *rule})
        sweeps = [
            [p.to_dict() for p in iteration_sweep(looped, load_data(spec, "test"), grid)]
            for spec in specs
        ]
        by_count = [{p["iterations"]: p["exact"] for p in points} for points in sweeps]
        result["folded"] = {
            "architecture": looped.describe(),
            "parameters": fold.params.folded,
            "loops": list(fold.loops),
            "segments": len(looped.segments),
            "probe_max_abs_diff": fold.probe.max_abs_diff,
            "trained_iterations": trained,
            "iterations": rule,
            "exact": [exact[n] for exact, n in zip(by_count, rule, strict=True)],
            "sweeps": sweeps,
        }
    result["seconds"] = time.perf_counter() - start
    return result


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
    # Longest first (mazes cost more than bit strings): fewer idle workers at the end.
    todo.sort(key=lambda j: (j.task.kind != "maze", -COST[j.network], j.seed))
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
    """Per task and network: parameters, steps to 95 % and exact-solve rates over the seeds."""
    summary: dict[str, Any] = {}
    for task in setup.tasks:
        rows: dict[str, Any] = {}
        of = {
            n: [r for r in runs if r["task"] == task.kind and r["network"] == n] for n in NETWORKS
        }
        for name in NETWORKS:
            rs = of[name]
            steps = [r["steps_to_95"] for r in rs]
            rows[name] = {
                "parameters": rs[0]["parameters"],
                "width": rs[0]["width"],
                "steps_to_95": _stats(steps),
                "reached_95": sum(v is not None for v in steps),
                # seeds where it got to 95 % in fewer steps than the plain FCN of the same seed
                "faster_than_plain": sum(
                    _before(r["steps_to_95"], p["steps_to_95"])
                    for r, p in zip(rs, of["plain"], strict=True)
                ),
                "exact": [_stats([r["exact"][i] for r in rs]) for i in range(len(task.sizes))],
            }
        folded = [r["folded"] for r in of["aligned"]]
        rows["folded"] = {
            "parameters": folded[0]["parameters"],
            "iterations": folded[0]["iterations"],
            "exact": [_stats([f["exact"][i] for f in folded]) for i in range(len(task.sizes))],
            "loops": [f["loops"] for f in folded],
            "segments": [f["segments"] for f in folded],
        }
        best = [[max(points, key=lambda p: p["exact"]) for points in f["sweeps"]] for f in folded]
        rows["best"] = {
            "parameters": folded[0]["parameters"],
            "exact": [_stats([b[i]["exact"] for b in best]) for i in range(len(task.sizes))],
            "iterations": [[b[i]["iterations"] for b in best] for i in range(len(task.sizes))],
        }
        summary[task.kind] = rows
    return summary


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


def table(results: dict[str, Any], task: TaskBench) -> str:
    """The summary of one task as a Markdown table (median over seeds, range in brackets)."""
    rows = results["summary"][task.kind]
    unit = "cells" if task.kind == "maze" else "bits"
    size = (lambda s: f"{s}x{s}") if task.kind == "maze" else (lambda s: f"{s} bits")
    head = " | ".join(
        f"solved at {size(s)} ({f:g}x)" for s, f in zip(task.sizes, task.factors, strict=True)
    )
    lines = [
        f"| network ({task.kind}, trained at {task.train_size} {unit}) | parameters "
        f"| steps to 95 % train solved | seeds reaching it | {head} |",
        "|---|---:|---:|---:|" + "---:|" * len(task.sizes),
    ]
    seeds = len(rows["plain"]["steps_to_95"]["values"])
    for key in (*NETWORKS, "folded", "best"):
        row = rows[key]
        label = LABELS[key]
        if key == "small":
            label += f" (width {row['width']})"
        if key in ("folded", "best"):
            steps = "(= aligned) | " if key == "folded" else " | "
        else:
            steps = f"{_cell(row['steps_to_95'])} | {row['reached_95']}/{seeds}"
        cells = [_cell(stat, " %") for stat in row["exact"]]
        if key == "folded":
            cells = [f"{c}, {n} it." for c, n in zip(cells, row["iterations"], strict=True)]
        if key == "best":
            cells = [
                f"{c}, {_span(its)} it." for c, its in zip(cells, row["iterations"], strict=True)
            ]
        lines.append(f"| {label} | {row['parameters']:,} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _span(values: Sequence[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def per_seed_table(results: dict[str, Any], task: TaskBench) -> str:
    """Every run of one task: steps to 95 % and solved at each size, seed by seed."""
    sizes = " / ".join(str(s) for s in task.sizes)
    lines = [
        f"| {task.kind} network | seed | steps to 95 % | solved at {sizes} (%) |",
        "|---|---:|---:|" + "---:|",
    ]
    for r in results["runs"]:
        if r["task"] != task.kind:
            continue
        steps = r["steps_to_95"] if r["steps_to_95"] is not None else "not reached"
        solved = " / ".join(f"{x:.1f}" for x in r["exact"])
        lines.append(f"| {r['network']} | {r['seed']} | {steps} | {solved} |")
        if "folded" in r:
            f = r["folded"]
            solved = " / ".join(
                f"{x:.1f} ({n} it.)" for x, n in zip(f["exact"], f["iterations"], strict=True)
            )
            lines.append(f"| folded ({f['segments']} segments) | {r['seed']} | | {solved} |")
    return "\n".join(lines)


# --- the plot --------------------------------------------------------------------------------


def figure(results: dict[str, Any], setup: Setup) -> Any:
    """Per task: training curves, and the looped network's solve rate against iterations."""
    import numpy as np
    from matplotlib.figure import Figure

    tasks = setup.tasks
    fig = Figure(figsize=(11, 4.0 * len(tasks)), layout="constrained")
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    colors = {
        "plain": "tab:blue",
        "small": "tab:cyan",
        "shared": "tab:orange",
        "aligned": "tab:red",
    }
    for (left, right), task in zip(axes, tasks, strict=True):
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
        left.set_title(f"{task.kind}: training speed (median, range over seeds)")
        left.legend()
        aligned = [r["folded"] for r in runs if r["network"] == "aligned"]
        trained = aligned[0]["trained_iterations"]
        plain = results["summary"][task.kind]["plain"]["exact"]
        palette = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
        for i, size in enumerate(task.sizes):
            its = [p["iterations"] for p in aligned[0]["sweeps"][i]]
            values = np.array([[p["exact"] for p in f["sweeps"][i]] for f in aligned])
            c = palette[i % len(palette)]
            label = f"{size}x{size}" if task.kind == "maze" else f"{size} bits"
            right.plot(its, np.median(values, axis=0), color=c, label=label)
            right.fill_between(its, values.min(axis=0), values.max(axis=0), color=c, alpha=0.15)
            right.axhline(plain[i]["median"], color=c, ls="--", lw=0.8)
        right.axvline(trained, color="grey", lw=0.8, ls=":")
        right.set(xlabel="iterations of the looped network", ylabel="test instances solved (%)")
        right.set_ylim(0, 101)
        right.plot([], [], color="grey", ls="--", lw=0.8, label="plain FCN")
        right.set_title(f"{task.kind}: the folded network, run longer")
        right.legend(title="test size")
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
        for key in (*NETWORKS, "folded", "best"):
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
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 3; --quick 2)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ... (0)"
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel trainings (default: CPUs)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
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
        results = json.loads(args.from_json.read_text())
        setup = _setup_of(results)
        results["summary"] = summarize(setup, results["runs"])  # derived: redrawn from the runs
        write(results, setup, args.from_json.parent, args.from_json.stem)
        return 0
    setup = QUICK if args.quick else Setup()
    if args.seeds is not None:
        setup = replace(setup, seeds=args.seeds)
    setup = replace(setup, first_seed=args.first_seed)
    import torch

    start = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as every worker: results must not depend on --jobs
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) if args.keep is None else args.keep
            work.mkdir(parents=True, exist_ok=True)
            log(
                f"{len(NETWORKS) * setup.seeds * len(setup.tasks)} trainings, {args.jobs} at a time"
            )
            runs = run_jobs(setup, work, args.jobs, log)
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
            "jobs": args.jobs,
            "cpus": os.cpu_count(),
            "processor": _processor(),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/algorithmic.py"
        + (" --quick" if args.quick else "")
        + (f" --seeds {args.seeds}" if args.seeds is not None else "")
        + (f" --first-seed {args.first_seed}" if args.first_seed else ""),
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
    stem = "algorithmic_quick" if args.quick else "algorithmic"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    write(results, setup, args.out, stem)
    return 0


def _setup_of(results: dict[str, Any]) -> Setup:
    s = dict(results["setup"])
    tasks = tuple(
        TaskBench(t["kind"], t["train_size"], tuple(t["factors"])) for t in s.pop("tasks")
    )
    return Setup(tasks=tasks, **s)


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
    (out / f"{stem}.md").write_text(
        f"Command: `{results['command']}` ({results['seconds'] / 60:.1f} min, {m['jobs']} "
        f"parallel jobs of 1 thread, {m['processor']}, torch {m['torch']}). Median over "
        f"seeds {_span(setup.seed_list)}, range in brackets.\n\n{tables}\n\nEvery run:\n\n{seeds}\n"
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
