"""The figure of a recurrence graph: one row of clusters per bank, edges with their counts.

Colours and labels come from :mod:`soft_share_cli.render.plots`, so a cluster letter has one
colour in the heatmap and in the graph.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch
from matplotlib.path import Path as MplPath

from soft_share_cli.render.plots import CENTRE, label_text, letter_color, plural, short_layer_name

_NODE_GAP = 2.2  # data units between neighbouring nodes of a row
_ARC_HEIGHT = 2.1  # how high edges that skip nodes rise over their row
# Self-loop as a cubic Bezier in node radii: leaves the circle top-left, re-enters top-right.
_LOOP = ((-0.45, 0.9), (-1.6, 3.0), (1.6, 3.0), (0.45, 0.9))


def _skips(rows: dict[str, list[object]], u: object, v: object) -> bool:
    """Whether edge u -> v runs along one row past at least one other node."""
    for nodes in rows.values():
        if u in nodes and v in nodes:
            return abs(nodes.index(u) - nodes.index(v)) > 1
    return False


def _graph_layout(
    graph: nx.DiGraph,
) -> tuple[dict[str, list[object]], dict[object, tuple[float, float]], list[float]]:
    """Rows of nodes per bank (first-use order) and node centres; each row gets the headroom
    its own drawings need (arcs over skipped nodes > self-loops > nothing)."""
    rows: dict[str, list[object]] = {}
    for node, data in graph.nodes(data=True):
        rows.setdefault(str(data.get("bank", str(node).split(":")[0])), []).append(node)
    pos: dict[object, tuple[float, float]] = {}
    row_y: list[float] = []
    y = 0.0
    for nodes in rows.values():
        edges = [(u, v) for u, v in graph.edges if u in nodes and v in nodes]
        arcs = any(_skips(rows, u, v) for u, v in edges)
        loops = any(u == v for u, v in edges)
        y -= _ARC_HEIGHT + 0.5 if arcs else 1.9 if loops else 0.8
        row_y.append(y)
        pos.update({node: (c * _NODE_GAP, y) for c, node in enumerate(nodes)})
        y -= 1.6  # captions under the nodes
    return rows, pos, row_y


def graph_figure(graph: nx.DiGraph, *, title: str | None = None) -> Figure:
    """Draw a recurrence graph: one row per bank, clusters in first-use order, edges with counts.

    Nodes (``"<bank>:<letter>"`` with ``bank``, ``letter``, ``layers``, ``size``) are circles
    whose area grows with ``size``, captioned with their layers; a self-loop (a repeated
    cluster) is a loop above its node, the two directions of an ``A -> B -> A`` cycle are
    curved apart so both show, and an edge that jumps past other nodes arcs over the row.
    Every edge carries its ``count``.
    """
    rows, pos, row_y = _graph_layout(graph)
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    xlim, ylim = (min(xs) - 2.4, max(xs) + 1.2), (min(ys) - 1.7, 0.1)
    # Equal aspect (arc3 bends in display space, so our label maths needs it): size the figure
    # from the data extent so little of it is blank.
    inch = 0.62
    width = min(18.0, max(4.0, (xlim[1] - xlim[0]) * inch))
    height = min(14.0, max(2.5, (ylim[1] - ylim[0]) * inch + (0.4 if title else 0.0)))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title:
        ax.set_title(label_text(title))
    if not rows:
        ax.text(0.5, 0.5, "empty graph", **CENTRE, transform=ax.transAxes)
        return fig
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)

    circles: dict[object, Circle] = {}
    for (bank, nodes), y in zip(rows.items(), row_y, strict=True):
        ax.text(-0.9, y, label_text(bank), ha="right", va="center", fontsize=10, fontweight="bold")
        for c, node in enumerate(nodes):
            data = graph.nodes[node]
            size = int(data.get("size", 1) or 1)
            letter = str(data.get("letter", node))
            r = min(0.62, 0.26 + 0.09 * math.sqrt(size))
            colour = letter_color(letter, c)
            circles[node] = Circle(pos[node], r, fc=colour, ec="0.15", lw=1.2, zorder=3)
            ax.add_patch(circles[node])
            ax.text(*pos[node], letter, **CENTRE, color="w", size=12, weight="bold", zorder=4)
            layers = str(data.get("layers", "")).split(",")
            names = [label_text(short_layer_name(s)) for s in layers if s]
            shown = names if len(names) <= 6 else [*names[:5], "…"]
            lines = [plural(size, "layer")]
            lines += [", ".join(shown[k : k + 3]) for k in range(0, len(shown), 3)]
            caption = "\n".join(lines)
            ax.text(pos[node][0], y - r - 0.12, caption, ha="center", va="top", size=7, c="0.25")

    def edge_label(x: float, y: float, count: object, va: str = "center") -> None:
        box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "0.6", "lw": 0.6}
        text = ax.text(x, y, f"{count}×", ha="center", va=va, fontsize=9, zorder=5, bbox=box)
        text.set_gid("edge-count")

    arrow: dict[str, Any] = dict(arrowstyle="-|>", mutation_scale=14, color="0.2", linewidth=1.4)
    for u, v, data in graph.edges(data=True):
        count = data.get("count", "")
        (x1, y1), (x2, y2) = pos[u], pos[v]
        if u == v:
            # networkx draws self-loops poorly (or not at all) across versions: draw our own.
            r = circles[u].radius
            pts = [(x1 + dx * r, y1 + dy * r) for dx, dy in _LOOP]
            codes = [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4]
            ax.add_patch(FancyArrowPatch(path=MplPath(pts, codes), gid="self-loop", **arrow))
            edge_label(x1, y1 + 2.45 * r, count, va="bottom")
            continue
        skips = _skips(rows, u, v)
        if graph.has_edge(v, u):
            # One sign for both directions bends them to opposite sides: both stay visible.
            rad = 2 * _ARC_HEIGHT / abs(x2 - x1) if skips else 0.2
        elif skips:
            # An edge past other nodes (often the jump back that closes a loop) arcs over the
            # row, above the self-loops, and never through the captions below the nodes.
            rad = math.copysign(2 * _ARC_HEIGHT / abs(x2 - x1), x1 - x2)
        else:
            rad = 0.0
        style = f"arc3,rad={rad}"
        ends: dict[str, Any] = {"patchA": circles[u], "patchB": circles[v]}  # clip at circles
        ax.add_patch(
            FancyArrowPatch(pos[u], pos[v], connectionstyle=style, gid="edge", **ends, **arrow)
        )
        # Midpoint of matplotlib's arc3 quadratic Bezier: chord midpoint + rad/2 * (dy, -dx).
        edge_label((x1 + x2) / 2 + rad / 2 * (y2 - y1), (y1 + y2) / 2 - rad / 2 * (x2 - x1), count)

    legend = "arrow: next cluster in execution order; label: times it happens"
    ax.text(0.0, 0.0, legend, transform=ax.transAxes, size=7, c="0.4", va="bottom")
    return fig
