"""Regenerate ``sample_checkpoints/sharing/``: one network of each sharing kind of issue 13.

Run from the repository root: ``python scripts/make_sharing_samples.py`` (seconds on 2 CPU
cores). Each factory of ``examples/sharing.py`` is built from a seed, trained briefly on
scikit-learn's digits (the split and preprocessing ``ssc ... --data digits`` uses, written out
here: pixels / 16, then ``(x - 0.3054) / 0.3761``), with exactly parallel layers *planted*: after
every optimiser step the coefficients of each planted layer are set to a power of two times the
first layer of its group (zero-padded where its K is larger), so the layers' weights are exactly
proportional and a fold merges them without changing the logits. The state dict is saved with
``torch.save`` and its test accuracy, measured here, written to ``sample_checkpoints/README.md``
(the section from :data:`HEADING` to the end of that file is replaced);
``tests/test_sharing_samples.py`` checks that ``ssc eval --model`` measures the same.

Deterministic: a fixed seed per network, one CPU thread while it trains, the global RNG and thread
count restored afterwards (so :func:`build` can be called from a test).
"""

from __future__ import annotations

import re
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sample_checkpoints" / "sharing"
README = ROOT / "sample_checkpoints" / "README.md"
HEADING = "## Other sharing schemes (`sharing/`)"
MAZES = "## Maze solvers"  # scripts/make_samples.py's section: ours goes before it
MADE_BY = "python scripts/make_sharing_samples.py"

sys.path.insert(0, str(ROOT / "examples"))
import sharing  # noqa: E402  (examples/sharing.py: the networks, plain torch)

SEED = 0
EPOCHS = 12
BATCH = 64
LR = 0.02
SCALES = (-2.0, 0.5, 2.0, -0.5)  # powers of two: a planted copy is exactly s times the first
DIGITS_MEAN, DIGITS_STD = 0.3054, 0.3761  # soft_share_cli.data.loaders, --data digits


@dataclass(frozen=True)
class Sample:
    """One network of ``examples/sharing.py``: its factory and the layers planted parallel
    (indices into the network's ``mixing()``, forward order; the first of a group is kept)."""

    name: str
    planted: tuple[tuple[int, ...], ...]
    what: str  # for the README

    @property
    def path(self) -> Path:
        return OUT / f"{self.name}.pt"


SAMPLES = (
    Sample("soft", ((0, 2, 4),), "`blocks.{2,4}.conv.alpha` = -2, 0.5 × `blocks.0.conv.alpha`"),
    Sample("tied", (), "none: `blocks.0-2.conv` is one module, `blocks.3-4.conv` another"),
    Sample("basis", ((0, 2),), "`layers.2.conv.m` = -2 × `layers.0.conv.m`"),
    Sample("basis_bn", ((1, 3),), "`layers.3.proj.weight` = -2 × `layers.1.proj.weight`"),
    Sample(
        "store",
        ((0, 2), (3, 1)),
        "`layers.2.conv.coef` = -2 × `layers.0.conv.coef`, `layers.1.conv.coef` = -2 × "
        "`layers.3.conv.coef` (zero-padded: K 2 → 3)",
    ),
)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_train, y_train, x_test, y_test`` exactly as ``--data digits`` preprocesses them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0
    )

    def prep(a: np.ndarray) -> torch.Tensor:
        a = (a.astype(np.float32) / 16).reshape(-1, 1, 8, 8)
        a -= np.float32(DIGITS_MEAN)
        a /= np.float32(DIGITS_STD)
        return torch.from_numpy(np.ascontiguousarray(a))

    return (
        prep(x_train),
        torch.from_numpy(y_train.astype(np.int64)),
        prep(x_test),
        torch.from_numpy(y_test.astype(np.int64)),
    )


def plant(model: nn.Module, groups: Sequence[Sequence[int]]) -> None:
    """Set every member's coefficients to a scale times its group's first (zero-padded)."""
    params = model.mixing()
    with torch.no_grad():
        for group in groups:
            first = params[group[0]].reshape(-1)
            for n, member in enumerate(group[1:]):
                target = params[member]
                flat = torch.zeros(target.numel())
                flat[: first.numel()] = first
                target.copy_((SCALES[n % len(SCALES)] * flat).reshape(target.shape))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 in percent, as ``ssc eval`` reports it."""
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).sum()) / len(y)


def build(sample: Sample, data=None) -> tuple[nn.Module, float]:
    """The trained, planted network of ``sample`` (eval mode) and its test top-1."""
    x_train, y_train, x_test, y_test = data or digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = sharing.FACTORIES[sample.name]()
            plant(model, sample.planted)
            optimizer = torch.optim.Adam(model.parameters(), lr=LR)
            steps = EPOCHS * -(-len(y_train) // BATCH)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LR, total_steps=steps)
            order = torch.Generator().manual_seed(SEED)
            model.train()
            for _ in range(EPOCHS):
                for batch in torch.randperm(len(y_train), generator=order).split(BATCH):
                    loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    plant(model, sample.planted)
            model.eval()
    finally:
        torch.set_num_threads(threads)
    return model, accuracy(model, x_test, y_test)


def readme_section(rows: Sequence[tuple[Sample, float, int, int]]) -> list[str]:
    """The README section: one row per sample (file, factory, planted, top-1, parameters, size)."""
    lines = [
        HEADING,
        "",
        *textwrap.wrap(
            f"Regenerate with `{MADE_BY}` (under a minute, CPU): each factory of "
            f"`examples/sharing.py` trained for {EPOCHS} epochs on the digits (seed {SEED}) with "
            "exactly parallel layers planted (after every optimiser step, each planted layer's "
            "coefficients are set to a power of two times its group's first), saved as a plain "
            "state dict. Accuracy: `ssc eval FILE --model examples/sharing.py:NAME --data "
            "digits`. Parameters: unique (a tensor several layers use counts once), BatchNorm "
            "statistics left out. What is planted is what `ssc analyze` finds (the README's "
            'section "Other sharing schemes" shows it).',
            width=99,
            break_on_hyphens=False,
        ),
        "",
        "| file | factory | made by | planted | test top-1 | parameters | size |",
        "|---|---|---|---|---|---|---|",
    ]
    for sample, top1, params, size in rows:
        lines.append(
            f"| `sharing/{sample.name}.pt` | `examples/sharing.py:{sample.name}` | `{MADE_BY}` "
            f"| {sample.what} | {top1:.2f} % | {params:,} | {size / 1e3:.1f} kB |"
        )
    return lines


def unique_parameters(model: nn.Module) -> int:
    """Parameters, each counted once however many modules hold it (buffers left out)."""
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared one once


def write_readme(lines: Sequence[str]) -> None:
    """Put the section in sample_checkpoints/README.md in place of the old one, else before the
    maze solvers' section (whose table runs to the end of the file), else at the end."""
    text = README.read_text(encoding="utf-8") if README.exists() else "# Sample checkpoints\n"
    parts = [p.strip("\n") for p in re.split(r"\n(?=## )", text)]  # preamble, then "## " sections
    ours = "\n".join(lines)
    at = next((i for i, p in enumerate(parts) if p.startswith(HEADING)), None)
    if at is not None:
        parts[at] = ours
    else:
        mazes = next((i for i, p in enumerate(parts) if p.startswith(MAZES)), len(parts))
        parts.insert(mazes, ours)
    README.write_text("\n\n".join(parts) + "\n", encoding="utf-8")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data = digits()
    rows = []
    for sample in SAMPLES:
        start = time.perf_counter()
        model, top1 = build(sample, data)
        torch.save(model.state_dict(), sample.path)
        size = sample.path.stat().st_size
        rows.append((sample, top1, unique_parameters(model), size))
        seconds = time.perf_counter() - start
        print(
            f"{sample.path.relative_to(ROOT)}: top-1 {top1:.2f} %, {seconds:.1f} s", file=sys.stderr
        )
    lines = readme_section(rows)
    write_readme(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
