"""Plain vs soft-shared vs folded-and-looped on mazes: training speed, extrapolation, iterations.

    python benchmarks/algorithmic.py [--quick] [--out benchmarks/results]

The paper's second claim (Savarese & Maire, ICLR 2019): on algorithmic tasks, networks with
shared weights train faster and extrapolate better beyond the training span. This script
measures it on the maze task of Schwarzschild et al. (2021), end to end through the library
calls behind ``ssc train``, ``ssc fold`` and ``ssc eval``, on the CPU:

1. train a plain FCN and a soft-shared SFCN of the same depth and width on small mazes with
   the same recipe (Adam, deep supervision of the last 6 blocks; the SFCN also with the signed
   recurrent alignment regulariser, which pulls consecutive blocks towards one loop), recording
   the steps until 95 % of the training mazes are solved exactly;
2. fold the SFCN (``ssc fold``) into a looped network;
3. measure the exact-solve rate of all three on fresh mazes of 1x, 1.5x and 2x the training size
   (cells per side). The looped network runs its block ``round(T * factor)`` times, T being the
   trained count: the rule is fixed in advance, not chosen on the test mazes. A sweep over the
   iteration count at every size goes to the JSON and the plot.

Everything is seeded; the numbers are reproducible on the same torch build up to the
nondeterminism of CPU thread scheduling (none observed). Writes ``algorithmic.json``,
``algorithmic.md`` and ``algorithmic.png`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setup:
    """The benchmark's knobs; ``--quick`` shrinks them for a smoke test."""

    train_size: int = 4  # cells per side of the training mazes
    factors: tuple[float, ...] = (1.0, 1.5, 2.0)  # test sizes, relative to the training size
    train_count: int = 4000  # training mazes (one epoch)
    test_count: int = 1000  # fresh mazes per test size
    epochs: int = 15
    blocks: int = 12
    width: int = 32
    templates: int = 4
    align: float = 10.0  # signed recurrent alignment: no BatchNorm here to absorb a sign flip
    supervise: int = 6  # both networks score the read-outs of their last 6 blocks
    threshold: float = 0.99  # the fold's similarity threshold (ssc's default)
    sweep_max: float = 3.0  # iteration sweep up to this multiple of the trained count
    seed: int = 0


QUICK = Setup(train_count=128, test_count=32, epochs=1, blocks=3, width=8, templates=2, supervise=2)


def _spec(size: int, count: int, seed: int) -> str:
    return f"maze:size={size},count={count},seed={seed}"


def _epoch_logger(log: Any) -> Any:
    """A progress callback that logs each finished epoch."""

    def progress(stage: str, done: int, total: int) -> None:
        if done == total:
            log(f"  {stage} done")

    return progress


def run(setup: Setup, work: Path, log: Any = print) -> dict[str, Any]:
    """Train, fold, evaluate; return the results as a plain dict."""
    from soft_share_cli.analysis import AnalysisOptions
    from soft_share_cli.conversion import FoldOptions, fold_checkpoint
    from soft_share_cli.data import load_data
    from soft_share_cli.looped import load_looped
    from soft_share_cli.regularizers import AlignMode
    from soft_share_cli.task_evaluation import iteration_sweep
    from soft_share_cli.task_pipeline import run_task_eval, run_task_train
    from soft_share_cli.task_training import TaskTrainConfig

    train_spec = _spec(setup.train_size, setup.train_count, setup.seed)
    base = TaskTrainConfig(
        blocks=setup.blocks,
        width=setup.width,
        epochs=setup.epochs,
        supervise=setup.supervise,
        seed=setup.seed,
    )
    configs = {
        "plain": replace(base, arch="fcn", num_templates=None),
        "shared": replace(
            base,
            arch="sfcn",
            num_templates=setup.templates,
            align=setup.align,
            align_mode=AlignMode.SIGNED,
        ),
    }
    models: dict[str, Any] = {}
    for name, config in configs.items():
        log(f"training {name} ({config.arch}) on {train_spec} ...")
        path = work / f"{name}.pt"
        report = run_task_train(config, train_spec, path, progress=_epoch_logger(log))
        history = [
            {k: getattr(e, k) for k in ("epoch", "steps", "train_exact", "test_exact")}
            for e in report.history
        ]
        models[name] = {
            "architecture": report.architecture,
            "parameters": report.parameters,
            "config": config.to_dict(),
            "steps_to_95": report.steps_to["train_exact_95"],
            "final_train_exact": report.history[-1].train_exact,
            "history": history,
            "train_seconds": report.seconds,
            "path": path,
        }
        log(f"  {report.architecture}: steps to 95 % {report.steps_to['train_exact_95']}")

    log("folding the shared network ...")
    folded_path = work / "shared_looped.safetensors"
    fold = fold_checkpoint(
        models["shared"]["path"],
        folded_path,
        FoldOptions(analysis=AnalysisOptions(threshold=setup.threshold)),
    )
    looped = load_looped(folded_path)
    trained = looped.trained_iterations
    models["folded"] = {
        "architecture": looped.describe(),
        "parameters": fold.params.folded,
        "loops": list(fold.loops),
        "segments": len(looped.segments),
        "probe_max_abs_diff": fold.probe.max_abs_diff,
        "trained_iterations": trained,
    }

    sizes = [max(2, round(setup.train_size * f)) for f in setup.factors]
    exact: dict[str, list[dict[str, Any]]] = {"plain": [], "shared": [], "folded": []}
    sweeps = []
    for factor, size in zip(setup.factors, sizes, strict=True):
        spec = _spec(size, setup.test_count, setup.seed)
        log(f"evaluating on {spec} ...")
        for name in ("plain", "shared"):
            r = run_task_eval(models[name]["path"], spec).result
            exact[name].append({"size": size, "exact": r.exact, "iterations": None})
        n = max(1, round(trained * factor))
        r = run_task_eval(folded_path, spec, iterations=n).result
        exact["folded"].append({"size": size, "exact": r.exact, "iterations": n})
        grid = sorted({*range(1, round(trained * setup.sweep_max) + 1), n})
        points = iteration_sweep(looped, load_data(spec, "test"), grid)
        sweeps.append({"size": size, "points": [p.to_dict() for p in points]})
    for name in ("plain", "shared"):
        models[name]["path"] = str(models[name]["path"].name)
    return {
        "setup": {**setup.__dict__, "factors": list(setup.factors), "sizes": sizes},
        "train_spec": train_spec,
        "models": models,
        "exact": exact,
        "sweeps": sweeps,
    }


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    setup, models, exact = results["setup"], results["models"], results["exact"]
    head = " | ".join(
        f"solved at {s}x{s} ({f:g}x)" for s, f in zip(setup["sizes"], setup["factors"], strict=True)
    )
    lines = [
        f"| network | parameters | steps to 95 % train solved | {head} |",
        "|---|---:|---:|" + "---:|" * len(setup["sizes"]),
    ]
    names = {
        "plain": "plain FCN",
        "shared": "shared SFCN",
        "folded": "folded SFCN, looped",
    }
    for key, label in names.items():
        m = models[key]
        steps = m.get("steps_to_95", "-") if key != "folded" else "(= shared)"
        steps = "not reached" if steps is None else steps
        cells = []
        for row in exact[key]:
            its = f" ({row['iterations']} it.)" if row["iterations"] is not None else ""
            cells.append(f"{row['exact']:.1f} %{its}")
        lines.append(f"| {label} | {m['parameters']:,} | {steps} | " + " | ".join(cells) + " |")
    best = [max(s["points"], key=lambda p: p["exact"]) for s in results["sweeps"]]
    cells = [f"{p['exact']:.1f} % ({p['iterations']} it.)" for p in best]
    label = "folded, best iteration count (chosen on the test mazes: optimistic)"
    lines.append(f"| {label} | {models['folded']['parameters']:,} | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(results: dict[str, Any]) -> Any:
    """Training curves and the exact-solve rate against iterations, one Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for key, style in (("plain", "-o"), ("shared", "-s")):
        h = results["models"][key]["history"]
        left.plot([e["steps"] for e in h], [e["train_exact"] for e in h], style, label=key)
    left.axhline(95, color="grey", lw=0.8, ls=":")
    left.set(xlabel="optimizer steps", ylabel="training mazes solved (%)", ylim=(0, 101))
    left.set_title("training speed")
    left.legend()
    trained = results["models"]["folded"]["trained_iterations"]
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for i, sweep in enumerate(results["sweeps"]):
        pts = sweep["points"]
        c = colors[i % len(colors)]
        size = sweep["size"]
        right.plot(
            [p["iterations"] for p in pts],
            [p["exact"] for p in pts],
            color=c,
            label=f"{size}x{size}",
        )
        plain = results["exact"]["plain"][i]["exact"]
        right.axhline(plain, color=c, ls="--", lw=0.8)
    right.axvline(trained, color="grey", lw=0.8, ls=":")
    right.set(
        xlabel="iterations of the looped block", ylabel="test mazes solved (%)", ylim=(0, 101)
    )
    right.set_title("folded network thinking longer (dashed: plain FCN)")
    right.legend(title="maze cells")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--keep", type=Path, help="write the trained and folded networks here")
    parser.add_argument(
        "--from-json", type=Path, help="only redraw the table and plot of an earlier run's JSON"
    )
    # One thread by default: on a machine whose cores are busy with other work, torch's
    # thread pool can spin-wait and run several times slower than a single thread.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        write(results, args.from_json.parent, args.from_json.stem)
        return
    setup = QUICK if args.quick else Setup()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        results = run(setup, work, log=lambda m: print(m, file=sys.stderr, flush=True))
    results["seconds"] = time.perf_counter() - start
    results["machine"] = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }
    results["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["command"] = "python benchmarks/algorithmic.py" + (" --quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "algorithmic_quick" if args.quick else "algorithmic"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    write(results, args.out, stem)


def write(results: dict[str, Any], out: Path, stem: str) -> None:
    """Write the table (``.md``) and the plot (``.png``) of ``results``; print the table."""
    md = table(results)
    threads = results["machine"]["threads"]
    (out / f"{stem}.md").write_text(
        f"Command: `{results['command']}` ({results['seconds'] / 60:.1f} min, {threads} CPU "
        f"thread{'s' if threads != 1 else ''}, torch {results['machine']['torch']}).\n\n"
        + md
        + "\n"
    )
    figure(results).savefig(out / f"{stem}.png", dpi=110)
    print(md)
    print(f"({results['seconds'] / 60:.1f} min; wrote {out}/{stem}.json, .md, .png)")


if __name__ == "__main__":
    main()
