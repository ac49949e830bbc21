"""Rich rendering of ``ssc share``'s report: the groups fitted, the parameters, the accuracy."""

from __future__ import annotations

from typing import Any

from soft_share_cli.render.tables import Table, epochs_table, kv_table, out, styled


def _shape(shape: Any) -> str:
    return "×".join(str(n) for n in shape)


def render_share(report: Any) -> None:
    """``ssc share``: what was written, each group's fit, what it saves and costs."""
    rows = [
        ("checkpoint", report.checkpoint),
        ("architecture", report.architecture),
        ("written", report.output),
        ("as", report.shared_architecture),
    ]
    out.print(kv_table("Share", rows))
    if report.note:
        out.print(report.note)
    table = Table(title="Template banks", title_justify="left")
    keep = report.keep is not None
    columns = ["group", "layers", "shape", "templates", "relative error"]
    if keep:
        columns.insert(4, "needed")
    for name in columns:
        table.add_column(name, justify="left" if name in ("group", "shape") else "right")
    for g in report.groups:
        cells = [g.name, str(len(g.layers)), _shape(g.shape), str(g.templates)]
        if keep:
            cells.append("-" if g.needed is None else str(g.needed))
        cells.append(f"{g.relative_error:.2e}")
        table.add_row(*cells)
    out.print(table)
    table = Table(title="Parameters", title_justify="left")
    for name in ("network", "parameters", "file"):
        table.add_column(name, justify="left" if name == "network" else "right")
    sizes = report.file_bytes
    table.add_row(
        "original", f"{report.original_parameters:,}", f"{sizes['original'] / 1e6:.2f} MB"
    )
    table.add_row("shared", f"{report.shared_parameters:,}", f"{sizes['shared'] / 1e6:.2f} MB")
    out.print(table)
    out.print(f"shared saves {report.saved_pct:.2f} % of the parameters")
    p = report.probe
    relative = "" if p.relative is None else f", {100 * p.relative:.3g} % of the largest |logit|"
    out.print(
        f"probe: {p.shape[0]} random inputs {tuple(p.shape[1:])} ({p.basis}), shared vs original: "
        f"max |Δlogit| {p.max_abs_diff:.2e}{relative}"
    )
    if report.data is None and p.relative is not None and p.relative > 0.5:
        out.print(
            "note: the shared network's outputs are far from the original's; measure and "
            "fine-tune it with --data SPEC --finetune-epochs N"
        )
    if report.history:
        epochs = len(report.history)
        title = f"Fine-tune ({epochs} epoch{'s' if epochs != 1 else ''})"
        out.print(epochs_table(title, report.history))
        if report.resumed_epochs:
            out.print(f"resumed after epoch {report.resumed_epochs} (from {report.output}.partial)")
    d = report.data
    if d is not None:
        # a line, not the table's title: a long spec would wrap to the table's width
        out.print(styled("Accuracy", "italic", f" on {d.spec} ({d.samples} samples)"))
        table = Table()
        table.add_column("network")
        table.add_column("top-1", justify="right")
        table.add_column("Δ top-1", justify="right")
        rows = [("original", d.original), ("converted", d.converted)]
        if report.history:
            rows.append(("fine-tuned", d.shared))
        for name, top1 in rows:
            delta = "" if name == "original" else f"{top1 - d.original:+.2f}"
            table.add_row(name, f"{top1:.2f} %", delta)
        out.print(table)
    out.print(styled("fold it: ", "bold", report.fold_command))
    if "--model" in report.fold_command:
        out.print(
            "  (a fold of your own network writes only where it stores less: layers that "
            "--align made alike; otherwise it says 'nothing to fold')"
        )
