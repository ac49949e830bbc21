"""The ``--threshold auto`` trade-off plot: parameters against accuracy, one point per threshold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure


def tradeoff_figure(
    candidates: Sequence[Any], original_top1: float, chosen: float | None, max_drop: float
) -> Figure:
    """Scatter of folded parameters vs top-1 for each tried threshold, budget line and choice.

    ``candidates`` are ``pipeline.fold_report.Candidate`` rows (threshold, parameters, top1,
    within_budget).
    """
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    xs = [c.parameters for c in candidates]
    ys = [c.top1 for c in candidates]
    colours = ["tab:green" if c.within_budget else "tab:red" for c in candidates]
    ax.plot(xs, ys, color="0.7", zorder=1)
    ax.scatter(xs, ys, c=colours, zorder=2)
    # Label a point only when it stands apart from the last labelled one (points crowd near
    # the unfolded end, where many thresholds change almost nothing).
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    last: tuple[float, float] | None = None
    for c in candidates:
        here = (c.parameters / span_x, c.top1 / span_y)
        if last is None or abs(here[0] - last[0]) > 0.06 or abs(here[1] - last[1]) > 0.06:
            ax.annotate(
                f"τ={c.threshold:.3f}",
                (c.parameters, c.top1),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
            last = here
    ax.axhline(original_top1, color="tab:blue", linestyle="--", label="original")
    ax.axhline(
        original_top1 - max_drop,
        color="tab:red",
        linestyle=":",
        label=f"budget (−{max_drop:g} points)",
    )
    for c in candidates:
        if chosen is not None and c.threshold == chosen:
            ax.scatter(
                [c.parameters],
                [c.top1],
                s=160,
                facecolors="none",
                edgecolors="black",
                zorder=3,
                label=f"chosen τ={c.threshold:.3f}",
            )
    ax.set_xlabel("parameters of the folded network")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Folding: parameters vs accuracy per threshold")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig
