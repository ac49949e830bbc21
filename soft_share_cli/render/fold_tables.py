"""Rich rendering of ``ssc fold``'s report: the fold, its checks, the ``--threshold auto`` rows."""

from __future__ import annotations

from typing import Any

from soft_share_cli.render.tables import Table, kv_table, out, pct, styled


def render_fold(report: Any) -> None:
    """``ssc fold``: what was written, what it saves, what it costs."""
    rows = [
        ("checkpoint", report.checkpoint),
        ("architecture", report.architecture),
        ("threshold", f"τ = {report.options.threshold:g} ({report.options.metric.value})"),
        ("written", report.output or "nothing (a check failed)"),
        ("materialized", report.materialized),
    ]
    out.print(kv_table("Fold", rows))
    table = Table(title="Distinct conv weights per bank", title_justify="left")
    for name in ("bank", "before", "after", "stored as", "gains", "max residual"):
        table.add_column(name, justify="left" if name in ("bank", "stored as") else "right")
    for b in report.banks:
        table.add_row(
            b["bank"],
            str(b["before"]),
            str(b["after"]),
            b["storage"] + (" (kept as is)" if b.get("kept_as_is") else ""),
            str(b["gains"]),
            f"{b['max_residual']:.1e}",
        )
    out.print(table)
    out.print(styled("Loops", "bold"))
    for line in report.loops or ("none: every block keeps its own weights",):
        out.print(f"  • {line}")
    p = report.params
    sizes = report.file_bytes
    table = Table(title="Parameters", title_justify="left")
    for name in ("network", "parameters", "folded saves", "file"):
        table.add_column(name, justify="left" if name == "network" else "right")

    def mb(key: str) -> str:
        return f"{sizes[key] / 1e6:.2f} MB" if key in sizes else ""

    table.add_row(
        "checkpoint (unique)",
        f"{p.checkpoint_unique:,}",
        pct(p.savings_vs_checkpoint_pct),
        mb("checkpoint"),
    )
    table.add_row(
        "unshared equivalent", f"{p.unshared_equivalent:,}", pct(p.savings_vs_unshared_pct), ""
    )
    table.add_row("folded", f"{p.folded:,}", "", mb("folded"))
    out.print(table)
    probe = report.probe
    out.print(
        f"probe: {probe.shape[0]} random inputs {tuple(probe.shape[1:])}, folded vs original: "
        f"max |Δlogit| {probe.max_abs_diff:.2e}, mean {probe.mean_abs_diff:.2e}"
    )
    if report.candidates:
        table = Table(title="Thresholds tried (--threshold auto)", title_justify="left")
        for name in ("τ", "distinct weights", "parameters", "top-1", "Δ top-1", "within budget"):
            table.add_column(name, justify="right")
        for c in report.candidates:
            mark = "✓" if c.within_budget else ""
            chosen = " ←" if c.threshold == report.options.threshold and report.output else ""
            table.add_row(
                f"{c.threshold:.4f}",
                str(c.distinct_weights),
                f"{c.parameters:,}",
                f"{c.top1:.2f}",
                f"{c.delta_top1:+.2f}",
                mark + chosen,
            )
        out.print(table)
    d = report.data
    if d is not None:
        table = Table(
            title=f"Accuracy on {d.spec} ({d.original.samples} samples)", title_justify="left"
        )
        task = hasattr(d.original, "pixel_accuracy")  # a task: exact solves, not top-1
        heads = ("solved exactly", "pixel accuracy") if task else ("top-1", "top-5")
        for name in ("network", *heads, "agreement"):
            table.add_column(name, justify="left" if name == "network" else "right")
        networks: list[tuple[str, Any, str]] = [
            ("original", d.original, ""),
            ("folded", d.folded, f"{d.agreement:.2f} %"),
        ]
        if d.recalibrated is not None:
            agreement = f"{d.recalibrated_agreement:.2f} %"
            networks.append(("folded, BN recalibrated", d.recalibrated, agreement))
        for name, result, agreement in networks:
            scores = result.summary()
            second = pct(result.pixel_accuracy) if task else pct(scores["top5"]) or "-"
            table.add_row(name, f"{scores['top1']:.2f} %", second, agreement)
        out.print(table)
        before = d.folded.headline - d.original.headline
        if task:
            out.print(f"Δ solved exactly (folded − original): {before:+.2f} points")
        elif d.recalibrated is None:
            out.print(f"Δ top-1 (folded − original): {before:+.2f} points")
        else:  # the written network is the recalibrated one: both deltas, each labelled
            out.print(f"Δ top-1 (folded − original): {before:+.2f} points")
            out.print(
                f"Δ top-1 (folded, BN recalibrated − original): {d.delta_top1:+.2f} points "
                "(the network written)"
            )
    f = report.fidelity
    if f is not None:
        table = Table(
            title=f"Output fidelity on {f.spec} ({f.folded.samples} samples, folded against "
            "original)",
            title_justify="left",
        )
        for name in ("network", "MSE", "max |Δ|", "PSNR", "MSE to targets"):
            table.add_column(name, justify="left" if name == "network" else "right")
        for name, r in (("folded", f.folded), ("folded, BN recalibrated", f.recalibrated)):
            if r is not None:
                psnr = f"{r.psnr:.2f} dB" if r.psnr is not None else "∞" if r.mse == 0 else "-"
                target = "-" if r.target_mse is None else f"{r.target_mse:.4g}"
                table.add_row(name, f"{r.mse:.4g}", f"{r.max_abs:.4g}", psnr, target)
        out.print(table)
