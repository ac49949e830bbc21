"""The ``--threshold auto`` trade-off plot: parameters against accuracy, one point per threshold.

Only what a reader needs is labelled: the chosen threshold, and the thresholds on the frontier
(no other candidate has as few parameters and as high an accuracy), each label where it hides
no other label and no point (a label that fits nowhere is left out: its point still shows).
When the candidates within budget crowd into a corner of the full range, a second panel zooms
onto them. The legend sits under the panels, outside the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

# Where a label may go around its point: offset in points and the corner that is nearest.
_OFFSETS = [
    (sx * d, sy * d, "left" if sx > 0 else "right", "bottom" if sy > 0 else "top")
    for d in (5, 14, 28, 46)
    for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1))
]
_APART = 36  # pixels: frontier points closer than this to a labelled one get no label
_ZOOM = 0.25  # a second panel when the in-budget points span less than this share of the range


def frontier(candidates: Sequence[Any]) -> list[Any]:
    """Candidates no other beats: none has at most as many parameters and at least the top-1,
    one of them strictly."""
    return [
        c
        for c in candidates
        if not any(
            o.parameters <= c.parameters
            and o.top1 >= c.top1
            and (o.parameters < c.parameters or o.top1 > c.top1)
            for o in candidates
        )
    ]


def _overlaps(a: Any, b: Any, margin: float = 1.0) -> bool:
    return (
        a.x0 < b.x1 + margin
        and b.x0 < a.x1 + margin
        and a.y0 < b.y1 + margin
        and b.y0 < a.y1 + margin
    )


class _Labeller:
    """Places annotations one by one where they overlap no placed label and no point."""

    def __init__(self, fig: Figure) -> None:
        self.renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw_without_rendering()  # lay the axes out once, then keep them where they are
        fig.set_layout_engine("none")
        self.taken: list[Any] = []

    def add(self, ax: Axes, xy: tuple[float, float], text: str, points: list, **kw: Any) -> bool:
        inside = ax.get_window_extent(self.renderer)
        for dx, dy, ha, va in _OFFSETS:
            far = (
                {"arrowprops": {"arrowstyle": "-", "color": "0.5", "lw": 0.6}}
                if abs(dx) > 5
                else {}
            )
            label = ax.annotate(
                text, xy, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, **far, **kw
            )
            box = label.get_window_extent(self.renderer)
            fits = (
                inside.x0 <= box.x0
                and box.x1 <= inside.x1
                and inside.y0 <= box.y0
                and box.y1 <= inside.y1
            )
            hides = any(
                box.x0 - 4 < px < box.x1 + 4 and box.y0 - 4 < py < box.y1 + 4 for px, py in points
            )
            if fits and not hides and not any(_overlaps(box, other) for other in self.taken):
                self.taken.append(box)
                return True
            label.remove()
        return False


def _panel(ax: Axes, candidates: Sequence[Any], original: float, max_drop: float) -> None:
    xs = [c.parameters for c in candidates]
    ys = [c.top1 for c in candidates]
    ax.plot(xs, ys, color="0.75", zorder=1)
    inside = [c for c in candidates if c.within_budget]
    outside = [c for c in candidates if not c.within_budget]
    for group, colour in ((inside, "tab:green"), (outside, "tab:red")):
        ax.scatter([c.parameters for c in group], [c.top1 for c in group], c=colour, s=28, zorder=2)
    front = sorted(frontier(candidates), key=lambda c: c.parameters)
    ax.plot(
        [c.parameters for c in front], [c.top1 for c in front], color="0.15", lw=0.9, zorder=1.5
    )
    ax.axhline(original, color="tab:blue", linestyle="--", lw=1)
    ax.axhline(original - max_drop, color="tab:red", linestyle=":", lw=1.2)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)


def tradeoff_figure(
    candidates: Sequence[Any], original_top1: float, chosen: float | None, max_drop: float
) -> Figure:
    """Scatter of folded parameters vs top-1 for each tried threshold, budget line and choice.

    ``candidates`` are ``pipeline.fold_report.Candidate`` rows (threshold, parameters, top1,
    within_budget).
    """
    candidates = list(candidates)
    xs = [c.parameters for c in candidates] or [0]
    inside = [c for c in candidates if c.within_budget]
    span = (max(xs) - min(xs)) or 1
    zoom = (
        bool(inside)
        and len(inside) < len(candidates)
        and (max(c.parameters for c in inside) - min(c.parameters for c in inside)) < _ZOOM * span
    )
    fig = Figure(figsize=(10.0 if zoom else 6.8, 4.8), layout="constrained")
    axes = fig.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    for ax in axes:
        _panel(ax, candidates, original_top1, max_drop)
        ax.set_xlabel("parameters of the folded network")
    axes[0].set_ylabel("top-1 (%)")
    axes[0].set_title("all thresholds tried", fontsize=10)
    if zoom:
        lo_x = min(c.parameters for c in inside)
        hi_x = max(c.parameters for c in inside)
        pad_x = max(1.0, 0.08 * (hi_x - lo_x))
        near = [c for c in candidates if lo_x - pad_x <= c.parameters <= hi_x + pad_x]
        lo_y = min([original_top1 - max_drop, *(c.top1 for c in near)])
        hi_y = max([original_top1, *(c.top1 for c in near)])
        pad_y = max(0.2, 0.12 * (hi_y - lo_y))
        axes[1].set_xlim(lo_x - pad_x, hi_x + pad_x)
        axes[1].set_ylim(lo_y - pad_y, hi_y + pad_y)
        axes[1].set_title("zoom: within budget", fontsize=10)
    fig.suptitle("Folding: parameters vs accuracy per threshold")
    handles = [
        Line2D([], [], color="tab:blue", ls="--", label="original"),
        Line2D([], [], color="tab:red", ls=":", label=f"budget (−{max_drop:g} points)"),
        Line2D([], [], color="tab:green", marker="o", ls="", label="within budget"),
        Line2D([], [], color="tab:red", marker="o", ls="", label="over budget"),
        Line2D([], [], color="0.15", lw=0.9, label="frontier (labelled τ)"),
    ]
    picked = next((c for c in candidates if chosen is not None and c.threshold == chosen), None)
    if picked is not None:
        handles.append(
            Line2D([], [], marker="o", ms=11, mfc="none", mec="black", ls="", label="chosen")
        )
        for ax in axes:
            ax.scatter(
                [picked.parameters],
                [picked.top1],
                s=150,
                facecolors="none",
                edgecolors="black",
                zorder=3,
            )
    fig.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False
    )
    if not candidates:
        return fig

    labeller = _Labeller(fig)
    zoomed = axes[1].viewLim if zoom else None  # the overview leaves these to the zoom
    for ax in axes:
        points = [tuple(ax.transData.transform((c.parameters, c.top1))) for c in candidates]
        visible = [p for p in points if ax.bbox.contains(*p)]  # no label may hide one of these
        labelled = [c for c, p in zip(candidates, points, strict=True) if ax.bbox.contains(*p)]
        if zoomed is not None and ax is axes[0]:
            labelled = [c for c in labelled if not zoomed.contains(c.parameters, c.top1)]
        if picked is not None and picked in labelled:
            where = f"{picked.parameters:,} params, {picked.top1:.2f} %"
            text = f"chosen τ={picked.threshold:.3f}\n{where}"
            labeller.add(
                ax, (picked.parameters, picked.top1), text, visible, fontsize=7, fontweight="bold"
            )
        near: list[Any] = (
            [ax.transData.transform((picked.parameters, picked.top1))] if picked else []
        )
        for c in sorted(frontier(candidates), key=lambda c: -c.parameters):
            at = ax.transData.transform((c.parameters, c.top1))
            if c == picked or c not in labelled or any(np.hypot(*(at - q)) < _APART for q in near):
                continue  # one label in a crowd of frontier points is enough
            if labeller.add(
                ax, (c.parameters, c.top1), f"τ={c.threshold:.3f}", visible, fontsize=7
            ):
                near.append(at)
    return fig
