"""The figure of ``ssc eval --iterations 10,20,40 --plot FILE``: accuracy against iterations.

Built on :class:`matplotlib.figure.Figure` (no pyplot) and saved by the caller
(:func:`soft_share_cli.render.plots.save_figure`).
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from soft_share_cli.render.plots import label_text


def sweep_figure(result: Any, title: str | None = None) -> Figure:
    """Exact-solve rate and pixel accuracy (percent) of a
    :class:`~soft_share_cli.evaluation.iterations.SweepResult` against the iteration count,
    the trained count as a dashed line and the best count as a ring."""
    counts = [p.iterations for p in result.points]
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    ax.plot(counts, [p.exact for p in result.points], "o-", color="#1f77b4", label="solved exactly")
    ax.plot(
        counts,
        [p.pixel_accuracy for p in result.points],
        "s--",
        color="#ff7f0e",
        markersize=4,
        label="pixel accuracy",
    )
    trained = result.trained_iterations
    if trained is not None:
        ax.axvline(trained, color="#555555", linestyle=":", label=f"trained ({trained})")
    best = result.best
    ax.plot(
        [best.iterations],
        [best.exact],
        "o",
        markersize=12,
        markerfacecolor="none",
        markeredgecolor="#d62728",
        label=f"best ({best.iterations})",
    )
    ax.set_xlabel("iterations")
    ax.set_ylabel("% of test instances / pixels")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(label_text(title), fontsize="small")
    return fig
