"""Rich rendering of result objects: reads results, computes nothing, never used by the library."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_json(payload: dict[str, Any]) -> None:
    """The one JSON object a ``--json`` command prints on stdout, nothing else."""
    print(json.dumps(payload, indent=2, allow_nan=False))


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage on stderr."""
    if not enabled or not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        if value is not None:
            table.add_row(key, str(value))
    return table


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f} %"


def render_info(info: Any) -> None:
    """``ssc info``: what the checkpoint is."""
    meta = info.metadata
    rows = [
        ("file", f"{info.path} ({info.file_bytes / 1e6:.2f} MB, {info.format} format)"),
        ("container", info.container),
        ("prefix stripped", info.stripped_prefix),
        ("inert placeholders", ", ".join(info.placeholders) or None),
        ("architecture", info.architecture_name or f"unknown ({info.architecture_error})"),
        ("source", info.architecture and info.architecture["source"]),
        ("tensors", info.tensors),
        ("unique parameters", f"{info.unique_parameters:,}"),
        ("data", meta.get("data")),
        ("test top-1 at save", _pct(meta.get("test_top1"))),
        ("epoch", meta.get("epoch")),
        ("best val accuracy", _pct(meta.get("best_val_accuracy"))),
        ("made by", meta.get("command")),
    ]
    out.print(_kv_table("Checkpoint", rows))


def render_eval(report: Any) -> None:
    """``ssc eval``: one table of accuracy and speed."""
    r = report.result
    rows = [
        ("checkpoint", report.checkpoint),
        ("architecture", report.architecture),
        ("data", f"{report.data} (test split, {r.samples} samples)"),
        ("top-1", _pct(r.top1)),
        ("top-5", _pct(r.top5)),
        ("loss", f"{r.loss:.4f}"),
        ("recorded top-1", _pct(report.recorded_top1)),
        ("throughput", f"{r.throughput:,.0f} samples/s on {report.device}"),
    ]
    out.print(_kv_table("Evaluation", rows))


def render_train(report: Any) -> None:
    """``ssc train``: per-epoch history and where the checkpoint went."""
    table = Table(title=f"Training {report.architecture}", title_justify="left")
    for name in ("epoch", "lr", "loss", "train top-1", "test top-1", "align", "s"):
        table.add_column(name, justify="right")
    for e in report.history:
        table.add_row(
            str(e.epoch),
            f"{e.lr:.4f}",
            f"{e.train_loss:.4f}",
            f"{e.train_top1:.2f}",
            "-" if e.test_top1 is None else f"{e.test_top1:.2f}",
            f"{e.align_penalty:.3f}",
            f"{e.seconds:.1f}",
        )
    out.print(table)
    out.print(
        f"saved {report.output} ({report.file_bytes / 1e6:.2f} MB, "
        f"{report.parameters:,} parameters); test top-1 {_pct(report.test_top1) or 'n/a'}"
    )
