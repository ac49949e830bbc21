"""Measure ssc against the obvious alternatives, side by side, and write BENCHMARKS.md.

    python benchmarks/run.py [--quick] [--device cuda] [--repeats N]

Everything is generated in a temporary directory (an SWRN-28-10-4 training checkpoint in the
authors' layout with optimizer state, zip and legacy; an exactly foldable SWRN; random images),
then each comparison runs interleaved ``--repeats`` times: every command is a fresh subprocess
whose wall time is taken around it and whose peak resident memory comes from ``os.wait4`` (its
own ``ru_maxrss``), so one command never inherits another's memory. Medians are compared as
ratios measured in the same run on the same machine. Results go to
``benchmarks/results/latest.json``, the scaling plot next to it, and ``BENCHMARKS.md``.

``--quick`` shrinks every workload (a smoke test for the test suite; its ratios mean little).
This script imports neither torch nor ssc itself: the workloads run in subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (benchmarks/report.py, next to this file)


@dataclass(frozen=True)
class Sizes:
    """Workload sizes: the full run, or the quick smoke test."""

    big: tuple[int, int, int]  # the authors'-layout training checkpoint (depth, width, K)
    inference: tuple[int, int, int]  # the exactly foldable SWRN
    inference_size: int  # input height = width
    inference_iterations: int  # rounds per repeat at batch 1 (a quarter of them at batch 64)
    eval_net: tuple[int, int, int]
    eval_samples: int
    eval_size: int
    depths: tuple[int, ...]
    ks: tuple[int, ...]
    k_depth: int  # depth of the K sweep
    scaling_repeats: int


FULL = Sizes((28, 10, 4), (28, 2, 4), 32, 16, (16, 2, 4), 1024, 32,
             (16, 28, 52, 100, 148, 202), (1, 2, 4, 8, 16, 32, 64), 28, 3)  # fmt: skip
QUICK = Sizes((16, 2, 4), (16, 1, 2), 8, 2, (10, 1, 2), 64, 8, (16, 22), (1, 2), 16, 1)


@dataclass
class Sample:
    """One run of one command."""

    wall_s: float
    maxrss_mb: float
    stdout: str


@dataclass
class Measured:
    """All runs of one command."""

    name: str
    command: list[str]
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(s.wall_s for s in self.samples)

    @property
    def rss(self) -> float:
        return statistics.median(s.maxrss_mb for s in self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": shlex.join(self.command),
            "wall_s": [round(s.wall_s, 4) for s in self.samples],
            "maxrss_mb": [round(s.maxrss_mb, 1) for s in self.samples],
            "median_wall_s": round(self.wall, 4),
            "median_maxrss_mb": round(self.rss, 1),
        }


def run_once(command: list[str], cwd: Path) -> Sample:
    """Run ``command``; its wall time, its own peak RSS (``wait4``), its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return Sample(wall, usage.ru_maxrss * scale, stdout)


def interleave(group: list[Measured], repeats: int, cwd: Path, warm_up: bool = True) -> None:
    """One untimed warm-up of each, then ``repeats`` rounds, rotating the order every round."""
    for m in group if warm_up else ():
        run_once(m.command, cwd)
    for r in range(repeats):
        shift = r % len(group)
        for m in group[shift:] + group[:shift]:
            m.samples.append(run_once(m.command, cwd))
            print(f"  {m.name:<22} {m.samples[-1].wall_s:7.3f} s", file=sys.stderr)


def ssc_command() -> list[str]:
    """The installed ``ssc`` entry point next to this Python, else ``python -m soft_share_cli``."""
    script = Path(sys.executable).with_name("ssc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "soft_share_cli"]


def machine() -> dict[str, Any]:
    """CPU model, cores, versions: what the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }


def workload_json(args: list[str], cwd: Path) -> tuple[dict[str, Any], Sample]:
    sample = run_once([sys.executable, str(HERE / "workloads.py"), *args], cwd)
    return json.loads(sample.stdout.strip().splitlines()[-1]), sample


def _throughput(stdout: str) -> float:
    """Samples per second from the JSON a run printed last (``ssc eval`` nests it in ``timing``)."""
    try:
        report = json.loads(stdout)  # ssc --json: one (indented) object
    except json.JSONDecodeError:
        report = json.loads(stdout.strip().splitlines()[-1])
    return float(report.get("timing", report)["throughput"])


def generate(work: Path, sizes: Sizes) -> dict[str, Path]:
    """Write every input the comparisons need; a subprocess, so this process stays torch-free."""
    code = f"""
import sys; sys.path.insert(0, {str(HERE)!r})
from pathlib import Path
import workloads as w
work = Path({str(work)!r})
zipped, legacy = w.write_authors_checkpoints(work, *{sizes.big!r})
w.save_swrn(w.exactly_foldable_swrn(*{sizes.inference!r}), work / "foldable.pt")
w.save_swrn(w.exactly_foldable_swrn(*{sizes.eval_net!r}, seed=1), work / "eval.pt")
w.write_eval_data(work / "eval.npz", {sizes.eval_samples}, {sizes.eval_size})
print(zipped.name, legacy.name)
"""
    sample = run_once([sys.executable, "-c", code], work)
    zipped, legacy = sample.stdout.split()
    return {
        "zip": work / zipped,
        "legacy": work / legacy,
        "foldable": work / "foldable.pt",
        "eval": work / "eval.pt",
        "eval_data": work / "eval.npz",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads (smoke test)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (inference and eval)")
    parser.add_argument("--repeats", type=int, help="rounds per comparison (default 5; quick 1)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="JSON/PNG folder")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 5)
    ssc = ssc_command()
    py = sys.executable
    info = machine()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ssc-bench-") as tmp:
        work = Path(tmp)
        print("generating workloads ...", file=sys.stderr)
        files = generate(work, sizes)
        info["checkpoint_mb"] = {
            fmt: round(files[fmt].stat().st_size / 1e6, 1) for fmt in ("zip", "legacy")
        }

        def naive(path: Path) -> list[str]:
            return [py, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"]

        m = {
            "python": Measured("python", [py, "-c", "pass"]),
            "import_torch": Measured("import_torch", [py, "-c", "import torch"]),
            "ssc_help": Measured("ssc_help", [*ssc, "--help"]),
            "ssc_version": Measured("ssc_version", [*ssc, "--version"]),
        }
        for fmt in ("zip", "legacy"):
            path = files[fmt]
            m[f"naive_load_{fmt}"] = Measured(f"naive_load_{fmt}", naive(path))
            m[f"analyze_{fmt}"] = Measured(f"analyze_{fmt}", [*ssc, "analyze", "--json", str(path)])
        out = work / "folded_big.safetensors"
        m["fold_zip"] = Measured("fold_zip", [*ssc, "fold", str(files["zip"]), "-o", str(out)])
        spec = f"npz:{files['eval_data']}"
        device = ["--device", args.device]
        m["ssc_eval"] = Measured(
            "ssc_eval", [*ssc, "eval", str(files["eval"]), "--data", spec, "--json", *device]
        )
        m["bare_eval"] = Measured(
            "bare_eval",
            [py, str(HERE / "workloads.py"), "bare-eval", str(files["eval"]),
             str(files["eval_data"]), "256", args.device],
        )  # fmt: skip

        warm = not args.quick
        print("start-up, analysis, fold ...", file=sys.stderr)
        startup = [m[k] for k in ("python", "import_torch", "ssc_help", "ssc_version")]
        interleave(startup, repeats, work, warm)
        for fmt in ("zip", "legacy"):
            interleave([m[f"naive_load_{fmt}"], m[f"analyze_{fmt}"]], repeats, work, warm)
        interleave([m["naive_load_zip"], m["fold_zip"]], repeats, work, warm)
        print("evaluation ...", file=sys.stderr)
        interleave([m["bare_eval"], m["ssc_eval"]], repeats, work, warm)
        print("folded inference ...", file=sys.stderr)
        inference, _ = workload_json(
            ["inference", str(files["foldable"]), str(work), str(repeats),
             str(sizes.inference_size), args.device, str(sizes.inference_iterations)],
            work,
        )  # fmt: skip
        print("scaling ...", file=sys.stderr)
        scaling, _ = workload_json(
            ["scaling", str(work), ",".join(map(str, sizes.depths)),
             ",".join(map(str, sizes.ks)), str(sizes.k_depth), str(sizes.scaling_repeats)],
            work,
        )  # fmt: skip
    info["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    results = {
        "schema_version": 1,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "repeats": repeats,
        "device": args.device,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": info,
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(sizes).items()},
        "measurements": {name: x.to_dict() for name, x in m.items()},
        "eval": {
            "ssc": [_throughput(s.stdout) for s in m["ssc_eval"].samples],
            "bare": [_throughput(s.stdout) for s in m["bare_eval"].samples],
        },
        "inference": inference,
        "scaling": scaling,
    }
    results["targets"] = report.targets(results)
    args.results.mkdir(parents=True, exist_ok=True)
    plot = args.results / "scaling.png"
    report.scaling_figure(scaling["rows"]).savefig(plot, dpi=110)
    results["scaling"]["plot"] = os.path.relpath(plot, args.markdown.parent)
    (args.results / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    args.markdown.write_text(report.markdown(results))
    print(report.table(results))
    print(f"\nwrote {args.results / 'latest.json'}, {plot}, {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if not hasattr(os, "wait4"):  # pragma: no cover
        raise SystemExit("the benchmarks need os.wait4 (Linux or macOS)")
    raise SystemExit(main())
