"""Regenerate ``sample_checkpoints/``: train with ``ssc train``, re-wrap, measure, document.

Run from the repository root: ``python scripts/make_samples.py`` (about 5 minutes on 2 CPU cores
for the digits samples; ``--digits``, ``--tasks`` or ``--loops [tasks/NAME.pt ...]`` regenerates
only those (``--loops --measure``: re-measures the files there), ``--authors`` only re-wraps the
trained digits files in the authors' layout; the other entries of the manifest are kept as
they are).
Every file is produced by a command recorded in ``sample_checkpoints/README.md``, whose accuracy
column is measured by ``ssc eval`` on the files as written, and mirrored in ``manifest.json`` for
the tests.

Besides our own format, two files reproduce the layout of the authors' training script so that
loading them is tested without the authors' code: a dict ``{epoch, arch, state_dict, recorder,
optimizer}`` whose state-dict keys carry DataParallel's ``module.`` prefix and whose recorder is a
pickled instance of a class ``RecorderMeter`` from a module named ``utils`` (our own stand-in,
``soft_share_cli.checkpoints.testing``: plain data, numpy arrays). One is saved in the zip format,
one in the
legacy pre-1.6 format.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sample_checkpoints"
SHARING_HEADING = "## Other sharing schemes (`sharing/`)"  # scripts/make_sharing_samples.py
COMMON = "--data digits --arch swrn --depth 28 --width 1 --templates 4 --epochs 40 --seed 0"
TRAINED = {
    "swrn28-1-4_digits_align.pt": f"{COMMON} --align 1.0",
    "swrn28-1-4_digits.pt": COMMON,
}
# The maze solvers (sample_checkpoints/tasks/): the benchmark's plain and aligned maze networks
# of seed 0 (benchmarks/algorithmic.py trains them with the same data, depth, width and epochs).
TASK_DATA = "maze:size=4,count=4000"
TASK_COMMON = f"--data {TASK_DATA} --blocks 12 --channels 32 --supervise 6 --epochs 15 --seed 0"
TASK_TRAINED = {
    "tasks/maze_shared.pt": (
        f"{TASK_COMMON} --arch sfcn --templates 4 --align 10 --align-mode signed"
    ),
    "tasks/maze_plain.pt": f"{TASK_COMMON} --arch fcn",
}
TASK_SIZES = (6, 8)  # 1.5x and 2x the training mazes' cells per side
# The looped networks that think longer (sample_checkpoints/tasks/, README "Thinking longer"):
# name -> (training arguments, task, size option, training size, test factors). Each is measured
# at every factor with round(T x factor) iterations (T: its trained count) and with `auto`.
LOOP_TRAINED = {
    "tasks/prefix_sums_recurrent.pt": (
        "--data prefix-sums:length=32,count=10000 --arch rfcn --block projection --blocks 30 "
        "--channels 64 --progressive 1 --epochs 20 --batch-size 100 --lr 0.001 --seed 0",
        "prefix-sums", "length", 32, (1, 2, 4, 8),
    ),
    "tasks/maze_recurrent.pt": (
        "--data maze:size=4,count=4000 --arch rfcn --block projection --blocks 12 "
        "--channels 32 --progressive 0.5 --epochs 15 --seed 0",
        "maze", "size", 4, (1, 2, 4),
    ),
}  # fmt: skip
LOOP_TEST_COUNT = 1000  # fresh instances at the training size; at F times it, 1000 / F
# (output, source, legacy format?)
AUTHORS = [
    ("authors_swrn28-1-4_digits_align.pth.tar", "swrn28-1-4_digits_align.pt", False),
    ("authors_legacy_swrn28-1-4_digits.pth.tar", "swrn28-1-4_digits.pt", True),
]


def ssc(args: str) -> str:
    """Run the ssc CLI as a user would and return its stdout."""
    cmd = [sys.executable, "-m", "soft_share_cli", *shlex.split(args)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def authors_layout(source: Path, target: Path, legacy: bool) -> None:
    """Write ``source`` (our checkpoint) the way the authors' main.py saves a training run."""
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.checkpoints.testing import save_authors_checkpoint
    from soft_share_cli.models.builder import rebuild_model

    checkpoint = load_checkpoint(source)
    model, _ = rebuild_model(checkpoint)
    history = [
        (epoch["train_loss"], epoch["train_top1"], epoch["test_top1"])
        for epoch in checkpoint.metadata["history"]
    ]
    save_authors_checkpoint(model, target, legacy=legacy, history=history)


def make_task_samples() -> dict[str, dict]:
    """Train the maze solvers with ``ssc train`` and measure them with ``ssc eval``."""
    (OUT / "tasks").mkdir(exist_ok=True)
    entries = {}
    for name, args in TASK_TRAINED.items():
        print(f"training {name} ...", file=sys.stderr)
        ssc(f"train {args} -o sample_checkpoints/{name}")
        report = json.loads(ssc(f"eval sample_checkpoints/{name} --data {TASK_DATA} --json"))
        larger = {}
        for size in TASK_SIZES:
            spec = f"maze:size={size}"
            larger[spec] = json.loads(ssc(f"eval sample_checkpoints/{name} --data {spec} --json"))
        entries[name] = {
            "made_by": f"ssc train {args} -o sample_checkpoints/{name}",
            "architecture": report["architecture"],
            "data": TASK_DATA,
            "exact": report["exact"],
            "pixel_accuracy": report["pixel_accuracy"],
            "samples": report["samples"],
            "exact_larger": {spec: r["exact"] for spec, r in larger.items()},
            "bytes": (OUT / name).stat().st_size,
        }
    return entries


def make_loop_samples(names: list[str], train: bool = True) -> dict[str, dict]:
    """Train the looped networks ``names`` with ``ssc train`` (unless ``train`` is False: the
    files are there) and measure them with ``ssc eval``: at each test size with the rule's
    iteration count, and with ``--iterations auto``."""
    (OUT / "tasks").mkdir(exist_ok=True)
    entries = {}
    for name in names:
        args, task, option, size, factors = LOOP_TRAINED[name]
        if train:
            print(f"training {name} ...", file=sys.stderr)
            ssc(f"train {args} -o sample_checkpoints/{name}")
        print(f"measuring {name} ...", file=sys.stderr)
        info = json.loads(ssc(f"info sample_checkpoints/{name} --json"))
        trained = int(info["architecture"]["kwargs"]["iterations"])
        measured = []
        for factor in factors:
            spec = f"{task}:{option}={size * factor},count={LOOP_TEST_COUNT // factor}"
            n = round(trained * factor)
            run = f"eval sample_checkpoints/{name} --data {spec} --json --iterations"
            rule = json.loads(ssc(f"{run} {n}"))
            auto = json.loads(ssc(f"{run} auto --max-iterations {2 * n}"))
            measured.append({
                "data": spec, "factor": factor, "iterations": n, "exact": rule["exact"],
                "auto_exact": auto["exact"],
                "auto_mean_iterations": auto["iterations_used"]["mean"],
            })  # fmt: skip
        entries[name] = {
            "made_by": f"ssc train {args} -o sample_checkpoints/{name}",
            "architecture": info["architecture_name"],
            "trained_iterations": trained,
            "loop": measured,
            "bytes": (OUT / name).stat().st_size,
        }
    return entries


def loop_readme(loops: dict[str, dict]) -> list[str]:
    """The section of sample_checkpoints/README.md on the looped networks."""
    lines = [
        "## Looped networks that think longer",
        "",
        "Regenerate with `python scripts/make_samples.py --loops` (minutes, CPU). Each is measured",
        "on fresh instances (`ssc eval FILE --data SPEC --iterations N`, SPEC as listed), N =",
        "round(T x size factor) for the trained count T: a rule fixed before looking at test",
        "data. The last row: `--iterations auto --max-iterations 2N` (each instance stops when",
        "its prediction is unchanged for 3 iterations), the mean iterations used in brackets.",
        "",
    ]
    for name, m in loops.items():
        heads = " | ".join(f"`{r['data']}`" for r in m["loop"])
        lines += [
            f"`{name}` ({m['architecture']}, {m['bytes'] / 1e6:.2f} MB), made by",
            f"`{m['made_by']}`:",
            "",
            f"| | {heads} |",
            "|---|" + "---:|" * len(m["loop"]),
            "| iterations (rule) | " + " | ".join(str(r["iterations"]) for r in m["loop"]) + " |",
            "| solved exactly | " + " | ".join(f"{r['exact']:.1f} %" for r in m["loop"]) + " |",
            "| auto: solved (mean iterations) | "
            + " | ".join(
                f"{r['auto_exact']:.1f} % ({r['auto_mean_iterations']:.0f})" for r in m["loop"]
            )
            + " |",
            "",
        ]
    return lines


def readme(manifest: dict[str, dict]) -> list[str]:
    """The lines of sample_checkpoints/README.md for ``manifest``."""
    lines = [
        "# Sample checkpoints",
        "",
        "Regenerate with `python scripts/make_samples.py` (trains on scikit-learn's digits, CPU).",
        "Accuracy: `ssc eval FILE --data digits` (the 360-image held-out split).",
        "",
        "| file | architecture | made by | test top-1 | size |",
        "|---|---|---|---|---|",
    ]
    for name, m in manifest.items():
        if "test_top1" in m:
            lines.append(
                f"| `{name}` | {m['architecture']} | `{m['made_by']}` | {m['test_top1']:.2f} % "
                f"| {m['bytes'] / 1e6:.2f} MB |"
            )
    if "wrn28-1_digits.pt" in manifest:  # trained once by hand, not by this script
        lines += [
            "",
            "`wrn28-1_digits.pt` is the plain network `ssc share` starts from (README, "
            '"Post-hoc sharing"):',
            "made with `ssc train`'s defaults (30 epochs, seed 0) in 36 s (2 shared cores of an "
            "AMD EPYC,",
            "torch 2.13.0 CPU build); not made by `scripts/make_samples.py`, rerun the command "
            "above.",
        ]
    tasks = {name: m for name, m in manifest.items() if "exact" in m}
    if tasks:
        sizes = ", ".join(f"`--data maze:size={s}`" for s in TASK_SIZES)
        lines += [
            "",
            "## Maze solvers",
            "",
            "Regenerate with `python scripts/make_samples.py --tasks` (minutes, CPU). Solved:",
            f"`ssc eval FILE --data {TASK_DATA}` (its test split: fresh 4x4-cell mazes), then",
            f"{sizes} (1.5x and 2x the cells per side, 1,000 fresh mazes each).",
            "",
            "| file | architecture | made by | solved 4x4 | 6x6 | 8x8 | size |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, m in tasks.items():
            larger = " | ".join(f"{v:.1f} %" for v in m["exact_larger"].values())
            lines.append(
                f"| `{name}` | {m['architecture']} | `{m['made_by']}` | {m['exact']:.1f} % "
                f"| {larger} | {m['bytes'] / 1e6:.2f} MB |"
            )
    loops = {name: m for name, m in manifest.items() if "loop" in m}
    if loops:
        lines += ["", *loop_readme(loops)]
    return lines


def main() -> None:
    OUT.mkdir(exist_ok=True)
    choices = {"digits", "tasks", "authors", "loops", "readme"}  # --readme: rewrite it only
    only = {arg.removeprefix("--") for arg in sys.argv[1:]} & choices
    listed = OUT / "manifest.json"
    old = json.loads(listed.read_text()) if listed.exists() else {}
    manifest = {name: m for name, m in old.items() if "test_top1" in m}
    if not only or "digits" in only or "authors" in only:
        # --authors re-wraps the trained files as they are: no training, same weights
        manifest.update(make_digits_samples(train=not only or "digits" in only))
    tasks = {name: m for name, m in old.items() if "exact" in m}
    if not only or "tasks" in only:
        tasks = make_task_samples()
    manifest.update(tasks)
    loops = {name: m for name, m in old.items() if "loop" in m}
    if not only or "loops" in only:
        # --loops tasks/NAME.pt ...: only those; the others stay as the manifest lists them
        named = [a for a in sys.argv[1:] if a in LOOP_TRAINED] or list(LOOP_TRAINED)
        loops.update(make_loop_samples(named, train="--measure" not in sys.argv))
        loops = {name: loops[name] for name in LOOP_TRAINED if name in loops}
    manifest.update(loops)
    listed.write_text(json.dumps(manifest, indent=2) + "\n")
    lines = readme(manifest)
    # scripts/make_sharing_samples.py owns its section (up to the next "## "): keep it, in place
    old_text = (OUT / "README.md").read_text() if (OUT / "README.md").exists() else ""
    kept = [p for p in re.split(r"\n(?=## )", old_text) if p.startswith(SHARING_HEADING)]
    if kept:
        at = lines.index("## Maze solvers") if "## Maze solvers" in lines else len(lines)
        lines[at:at] = [*kept[0].strip("\n").splitlines(), ""]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def make_digits_samples(train: bool = True) -> dict[str, dict]:
    """Train the digits samples (unless ``train`` is False), re-wrap two in the authors' layout,
    measure them."""
    rows = []
    for name, args in TRAINED.items():
        if train:
            print(f"training {name} ...", file=sys.stderr)
            ssc(f"train {args} -o sample_checkpoints/{name}")
        rows.append((name, f"ssc train {args} -o sample_checkpoints/{name}"))
    for name, source, legacy in AUTHORS:
        authors_layout(OUT / source, OUT / name, legacy)
        fmt = "legacy" if legacy else "zip"
        rows.append((name, f"scripts/make_samples.py: {source} in the authors' layout ({fmt})"))
    manifest = {}
    for name, how in rows:
        report = json.loads(ssc(f"eval sample_checkpoints/{name} --data digits --json"))
        manifest[name] = {
            "made_by": how,
            "architecture": report["architecture"],
            "test_top1": report["top1"],
            "samples": report["samples"],
            "bytes": (OUT / name).stat().st_size,
        }
    return manifest


if __name__ == "__main__":
    main()
