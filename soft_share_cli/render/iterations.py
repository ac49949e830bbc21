"""Rich rendering of ``ssc eval --iterations 10,20,40`` (a sweep) and ``--iterations auto``."""

from __future__ import annotations

from typing import Any

from soft_share_cli.render.tables import Table, kv_table, out, pct


def render_iterations(report: Any) -> None:
    """A :class:`~soft_share_cli.pipeline.eval_iterations.IterationEvalReport`: the network,
    then a row per count (a sweep) or the iterations used and the solve rate (``auto``)."""
    r = report.result
    data = f"{report.data}: {report.data_description} (test split, {r.samples} samples)"
    rows = [
        ("checkpoint", report.checkpoint),
        ("architecture", report.architecture),
        ("data", data),
        ("trained with", f"{r.trained_iterations} iterations"),
    ]
    if report.mode == "sweep":
        out.print(kv_table("Evaluation", rows))
        out.print(_sweep_table(r))
        best = r.best
        plural = "s" if best.iterations != 1 else ""
        out.print(
            f"best: {best.iterations} iteration{plural}, {pct(best.exact)} solved exactly "
            f"({r.throughput:,.0f} samples/s on {report.device}, one pass to "
            f"{r.points[-1].iterations})"
        )
        return
    rule = f"stop after {r.options.patience} unchanged prediction(s)"
    if r.options.tolerance is not None:
        rule += f" with the logits moving at most {r.options.tolerance:g} (relative)"
    rows += [
        ("rule", f"{rule}, at most {r.max_iterations} iterations"),
        (
            "iterations used",
            f"mean {r.mean_iterations:.1f}, median {r.median_iterations:g}, "
            f"min {r.fewest_iterations}, max {r.most_iterations}",
        ),
        ("hit the cap", f"{r.capped} of {r.samples}"),
        ("solved exactly", pct(r.exact)),
        ("pixel accuracy", pct(r.pixel_accuracy)),
        ("loss", f"{r.loss:.4f}"),
        ("throughput", f"{r.throughput:,.0f} samples/s on {report.device}"),
    ]
    out.print(kv_table("Evaluation (--iterations auto)", rows))


def _sweep_table(result: Any) -> Table:
    table = Table(title="Accuracy against iterations", title_justify="left")
    table.add_column("iterations", justify="right")
    table.add_column("solved exactly", justify="right")
    table.add_column("pixel accuracy", justify="right")
    table.add_column("")
    best = result.best.iterations
    for p in result.points:
        notes = [
            note
            for note, applies in (
                ("trained", p.iterations == result.trained_iterations),
                ("best", p.iterations == best),
            )
            if applies
        ]
        table.add_row(str(p.iterations), pct(p.exact), pct(p.pixel_accuracy), ", ".join(notes))
    return table
