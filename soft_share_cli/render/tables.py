"""Rich rendering of result objects: reads results, computes nothing, never used by the library."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich import table as rich_table
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from soft_share_cli.render.text import inert


class InertConsole(Console):
    """A rich console for text from files: strings are data, never markup or terminal commands.

    Every string that rich turns into text (``print``, table cells, titles, captions) passes
    through :func:`~soft_share_cli.render.text.inert` first, and markup and emoji codes are off, so
    a
    key such as ``[link=http://x]`` or ``\x1b]0;title\x07`` is shown as written, escaped.
    Our own styling is built as :class:`rich.text.Text` (see :func:`styled`), never as markup.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """Rich's conversion of a string, on the string made inert (markup off by default)."""
        return super().render_str(inert(text), **kwargs)


class Table(rich_table.Table):
    """A rich table whose cells wrap and are never cut: a layer name or a path shown in part
    (``stage_3.1.…``) loses what the table exists for."""

    def add_column(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("overflow", "fold")
        super().add_column(*args, **kwargs)


# Piped or redirected (no terminal, no COLUMNS), output is as wide as its content needs (up to
# 200 columns) rather than 80: names stay whole; wider content wraps, it is never cut.
_PIPED_WIDTH = 200


def _stdout_width() -> int | None:
    import os
    import sys

    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        return None  # rich's own choice: the terminal's width, or COLUMNS
    return _PIPED_WIDTH


out = InertConsole(width=_stdout_width())
err = InertConsole(stderr=True)


def styled(label: str, style: str, rest: str = "") -> Text:
    """``label`` in ``style``, then ``rest`` (made inert) unstyled: markup-free styling."""
    return Text.assemble((label, style), inert(rest))


def print_json(payload: dict[str, Any]) -> None:
    """The one JSON object a ``--json`` command prints on stdout, nothing else.

    NaN and infinities (which JSON cannot hold, and a damaged file can put anywhere in its
    metadata) are printed as ``null``. Strings are kept exact, and printed ASCII-only: JSON's
    escapes (``\u001b``, ``\u202e``) keep control and bidi characters off the terminal.
    """
    print(json.dumps(_json_safe(payload), indent=2, allow_nan=False, ensure_ascii=True))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage on stderr."""
    if not enabled or not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(inert(stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        if value is not None:
            table.add_row(key, str(value))
    return table


def pct(value: Any) -> str | None:
    """``12.34 %``; a value that is not a number (metadata is whatever a file says) as it is."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.2f} %"


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
        ("test top-1 at save", pct(meta.get("test_top1"))),
        ("epoch", meta.get("epoch")),
        ("best val accuracy", pct(meta.get("best_val_accuracy"))),
        ("made by", meta.get("command")),
    ]
    out.print(kv_table("Checkpoint", rows))


def render_eval(report: Any) -> None:
    """``ssc eval``: one table of accuracy and speed."""
    if report.kind == "task":  # a pipeline.eval.TaskEvalReport
        render_task_eval(report)
        return
    r = report.result
    rows = [
        ("checkpoint", report.checkpoint),
        ("architecture", report.architecture),
        ("data", f"{report.data} (test split, {r.samples} samples)"),
        ("top-1", pct(r.top1)),
        ("top-5", pct(r.top5)),
        ("loss", f"{r.loss:.4f}"),
        ("recorded top-1", pct(report.recorded_top1)),
        ("throughput", f"{r.throughput:,.0f} samples/s on {report.device}"),
    ]
    out.print(kv_table("Evaluation", rows))


def epochs_table(title: str, history: Any) -> Table:
    """A classifier's epoch records (``training.classification.EpochRecord``) as a table."""
    table = Table(title=title, title_justify="left")
    for name in ("epoch", "lr", "loss", "train top-1", "test top-1", "align", "s"):
        table.add_column(name, justify="right")
    for e in history:
        table.add_row(
            str(e.epoch),
            f"{e.lr:.4f}",
            f"{e.train_loss:.4f}",
            f"{e.train_top1:.2f}",
            "-" if e.test_top1 is None else f"{e.test_top1:.2f}",
            f"{e.align_penalty:.3f}",
            f"{e.seconds:.1f}",
        )
    return table


def render_train(report: Any) -> None:
    """``ssc train``: per-epoch history and where the checkpoint went."""
    if report.kind == "task":  # a pipeline.train.TaskTrainReport
        render_task_train(report)
        return
    out.print(epochs_table(f"Training {report.architecture}", report.history))
    if report.resumed_epochs:
        out.print(f"resumed after epoch {report.resumed_epochs} (from {report.output}.partial)")
    out.print(
        f"saved {report.output} ({report.file_bytes / 1e6:.2f} MB, "
        f"{report.parameters:,} parameters); test top-1 {pct(report.test_top1) or 'n/a'}"
    )


def render_analysis(analysis: Any) -> None:
    """``ssc analyze``: facts, one table per bank, the loops, the parameter counts."""
    facts = analysis.checkpoint
    opts = analysis.options
    rows = [
        ("file", f"{facts['path']} ({facts['format']} format, {facts['container']})"),
        ("prefix stripped", facts["stripped_prefix"]),
        ("inert placeholders", ", ".join(facts["placeholders"]) or None),
        ("architecture", facts["architecture"] or "not a known architecture (banks analysed)"),
        (
            "similarity",
            f"{_metrics_used(analysis)}{', signed' if opts.signed else ''}; "
            f"clusters at τ = {opts.threshold:g}, {opts.linkage.value} linkage",
        ),
    ]
    out.print(kv_table("Checkpoint", rows))
    for result in analysis.banks:
        out.print(_hard_tie_table(result) if result.hard_tie else _bank_table(result))
    out.print(styled("Loops", "bold"))
    for line in analysis.loop_summary or ["none at this threshold"]:
        out.print(f"  • {line}")
    for issue in analysis.issues:
        out.print(styled("warning", "yellow", f" {issue.message}"))
    p = analysis.params
    table = Table(title="Parameters", title_justify="left")
    table.add_column("network")
    table.add_column("parameters", justify="right")
    table.add_column("folded saves", justify="right")
    table.add_row(
        "checkpoint (unique, by storage)",
        f"{p.checkpoint_unique:,}",
        pct(p.savings_vs_checkpoint_pct),
    )
    table.add_row(
        "unshared equivalent", f"{p.unshared_equivalent:,}", pct(p.savings_vs_unshared_pct)
    )
    table.add_row(f"folded at τ = {opts.threshold:g}", f"{p.folded:,}", "")
    out.print(table)
    note = getattr(analysis, "fold_note", None)  # --model: why the fold would store it as it is
    if note:
        out.print(styled("note", "cyan", f" {note}"))
    if p.unshared_equivalent < p.checkpoint_unique:
        out.print(styled("note", "cyan", f" {SMALLER_UNSHARED_NOTE}"))
    if "model" not in facts and any(b.hard_tie for b in analysis.banks):
        out.print(styled("note", "cyan", f" {HOLDER_NOTE}"))


#: Why a network can have fewer parameters unshared than shared.
SMALLER_UNSHARED_NOTE = (
    "the unshared equivalent is smaller than the checkpoint: a bank or store here holds more "
    "numbers than the weights made from it (at least as many templates as layers, or parts no "
    "layer uses)"
)
#: From the state dict alone every key of a tied weight is a use.
HOLDER_NOTE = (
    "from the state dict alone every key of a tied weight counts as one use: a module "
    "registered only to hold it (self.shared = conv) adds one to the unshared equivalent; "
    "--model counts the calls"
)


def _metrics_used(analysis: Any) -> str:
    """The metric each bank was compared by (a traced group that is not a bank with per-layer
    coefficients uses the weight metric whatever was asked); hard ties (similarity 1) aside."""
    banks = [b for b in analysis.banks if not b.hard_tie] or list(analysis.banks)
    by_metric: dict[str, list[str]] = {}
    for b in banks:
        by_metric.setdefault(b.similarity.metric.value, []).append(b.bank.name)
    if len(by_metric) <= 1:
        return f"{next(iter(by_metric), analysis.options.metric.value)} metric"
    return "; ".join(f"{m} metric ({', '.join(names)})" for m, names in by_metric.items())


def _shape(shape: Any) -> str:
    return "×".join(str(s) for s in shape)


def _found_by(result: Any) -> str | None:
    """How a bank beyond the authors' naming was found, and whether a fold keeps it as it is."""
    bank, notes = result.bank, []
    if bank.discovery_dict():
        notes.append(f"found by {bank.rule} ({bank.kind})")
    if result.fold.kept_as_is:
        notes.append("a fold keeps it as it is (merging would store more than the checkpoint)")
    return "; ".join(notes) or None


def _hard_tie_table(result: Any) -> Group:
    """A hard tie: one weight used N times (not a bank of one template)."""
    bank = result.bank
    uses = len(bank.layers)
    title = (
        f"{bank.name}: hard tie: one {_shape(bank.weight_shape)} weight, "
        f"{uses} use{'s' if uses != 1 else ''}"
    )
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("use", justify="left")
    table.add_column("key", justify="left")
    for n, layer in enumerate(bank.layers):
        table.add_row(str(n), layer.name, layer.key)
    # Title and caption as lines of their own: a narrow table would wrap them.
    return Group(Text(inert(title), style="italic"), table, Text(inert(f"found by {bank.rule}")))


def _bank_table(result: Any) -> Table | Group:
    """A soft bank: its layers, clusters, nearest neighbours, scales and residuals."""
    bank = result.bank
    title = (
        f"{bank.name}: {bank.num_templates} templates of {_shape(bank.weight_shape)}, "
        f"{len(bank.layers)} layers → {len(result.clusters)} distinct weights"
    )
    table = Table(title=title, title_justify="left")
    for name, justify in (
        ("#", "right"),
        ("layer", "left"),
        ("cluster", "center"),
        ("‖α‖" if result.similarity.metric.value == "coefficients" else "‖W‖", "right"),
        ("nearest", "left"),
        ("S", "right"),
        ("scale", "right"),
        ("residual", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    letters = result.letters
    nearest = result.similarity.nearest()
    for n, layer in enumerate(bank.layers):
        j, s = nearest[n]
        fold = result.fold.layers[n]
        table.add_row(
            str(n),
            layer.name,
            letters[n],
            f"{result.similarity.norms[n]:.3f}",
            "-" if j is None else bank.layers[j].name,
            "-" if j is None else f"{s:.3f}",
            "own" if fold.absorb.value == "unit" else f"{fold.scale:+.3f}",
            f"{fold.residual:.1e}",
        )
    found = _found_by(result)  # a line of its own: a narrow table would wrap it as a caption
    return table if found is None else Group(table, Text(inert(found)))


def render_task_eval(report: Any) -> None:
    """``ssc eval`` on a task: exact-solve rate, per-pixel accuracy, iterations, speed."""
    r = report.result
    iterations = None
    if r.iterations is not None:
        iterations = f"{r.iterations} (trained with {report.trained_iterations})"
    rows = [
        ("checkpoint", report.checkpoint),
        ("architecture", report.architecture),
        ("data", f"{report.data}: {report.data_description} (test split, {r.samples} samples)"),
        ("iterations", iterations),
        ("solved exactly", pct(r.exact)),
        ("pixel accuracy", pct(r.pixel_accuracy)),
        ("loss", f"{r.loss:.4f}"),
        ("recorded exact", pct(report.recorded_exact)),
        ("throughput", f"{r.throughput:,.0f} samples/s on {report.device}"),
    ]
    out.print(kv_table("Evaluation", rows))


def render_task_train(report: Any) -> None:
    """``ssc train`` on a task: per-epoch training and test accuracy, steps, the checkpoint."""
    table = Table(title=f"Training {report.architecture}", title_justify="left")
    aligned = any(e.align_penalty for e in report.history)  # no regulariser: no column
    names = ("epoch", "steps", "lr", "loss", "train pixel", "train exact", "test exact")
    for name in (*names, *(("align",) if aligned else ()), "s"):
        table.add_column(name, justify="right")
    for e in report.history:
        cells = [
            str(e.epoch),
            str(e.steps),
            f"{e.lr:.5f}",
            f"{e.train_loss:.4f}",
            f"{e.train_pixel_accuracy:.2f}",
            f"{e.train_exact:.2f}",
            "-" if e.test_exact is None else f"{e.test_exact:.2f}",
        ]
        table.add_row(*cells, *([f"{e.align_penalty:.3f}"] if aligned else []), f"{e.seconds:.1f}")
    out.print(table)
    reached = report.steps_to.get("train_exact_95")
    out.print(
        "steps to 95 % of training instances solved: "
        + ("not reached" if reached is None else f"{reached:,}")
    )
    if report.resumed_epochs:
        out.print(f"resumed after epoch {report.resumed_epochs} (from {report.output}.partial)")
    out.print(
        f"saved {report.output} ({report.file_bytes / 1e6:.2f} MB, "
        f"{report.parameters:,} parameters); test solved exactly {pct(report.test_exact) or 'n/a'}"
    )
