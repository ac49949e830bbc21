"""The figure of a recurrence graph: one row of clusters per bank, edges with their counts.

Laid out in inches (the axes fill the figure) from the measured size of every text: cards never
overlap, each edge end has a port of its own, edges between rows run down a gutter left of the
cards, and each count label goes where it overlaps no text or card. Colours are distinct per
node across the figure (bank 1's are the heatmap's letter colours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as MplPath
from matplotlib.text import Text

from soft_share_cli.render.plots import CENTRE, label_text, plural, short_layer_name
from soft_share_cli.render.plots import cluster_colours as node_colours

_GAP = 0.8  # inches between neighbouring cards (room for a count label and its arrow)
_PAD = 0.07  # inside a card
_LANE = 0.17  # between parallel routes (gutter, corridors)
_ARC = 0.95  # how high the shortest arc over a row rises above the cards
_MAX_WIDTH = 20.0  # a bank wider than this wraps onto further lines
_MAX_NODES = 300  # the first this many clusters are drawn
_ARROW: dict[str, Any] = {"arrowstyle": "-|>", "mutation_scale": 12, "color": "0.25", "lw": 1.2}
_LEGEND = "arrow: next cluster in execution order; label: times it happens"
_BOX = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "0.6", "lw": 0.6}


@dataclass
class _Node:
    key: object
    line: int
    col: int
    r: float  # badge radius
    w: float  # card width
    h: float  # card height
    texts: list[Text]  # the letter, the caption
    colour: str
    x: float = 0.0  # card centre
    top: float = 0.0
    loop_x: float = 0.0  # where a self-loop sits on the top
    patch: Any = None  # the card, once drawn
    ports: dict = field(default_factory=lambda: {s: [] for s in ("top", "bottom", "left")})

    @property
    def y(self) -> float:  # badge centre: edges along the row run at this height
        return self.top - _PAD - self.r


@dataclass(eq=False)  # identity: edges key dictionaries
class _Edge:
    u: object
    v: object
    count: object
    kind: str  # "loop", "next", "arc", "under", "route"
    rad: float = 0.0
    lane: int = 0


def _hits(a: tuple[float, ...], b: tuple[float, ...], m: float = 0.03) -> bool:
    return a[0] < b[2] + m and b[0] < a[2] + m and a[1] < b[3] + m and b[1] < a[3] + m


def _bezier(p0: np.ndarray, c: np.ndarray, p1: np.ndarray) -> list[tuple[float, float]]:
    """Points of a quadratic Bezier (where a count label may sit), the middle first."""
    ts = sorted(np.linspace(0.0, 1.0, 41), key=lambda t: abs(t - 0.5))
    return [tuple(map(float, (1 - t) ** 2 * p0 + 2 * t * (1 - t) * c + t * t * p1)) for t in ts]


def _arc(span: int) -> float:
    """How high an arc over ``span`` columns rises above its row: wider arcs rise higher."""
    return _ARC + 0.22 * (span - 2)


def _spread(lo: float, hi: float, n: int) -> list[float]:
    return [lo + (i + 0.5) * (hi - lo) / n for i in range(n)]


class _Layout:
    """Measures, places and draws; one instance per figure."""

    def __init__(self, graph: nx.DiGraph, fig: Figure, title: str | None) -> None:
        self.graph, self.fig = graph, fig
        self.ax = fig.add_axes((0, 0, 1, 1))
        self.ax.set_axis_off()
        self.renderer = FigureCanvasAgg(fig).get_renderer()
        self.boxes: list[tuple[float, float, float, float]] = []  # everything labels must avoid
        self.title = title and self._text(label_text(title), size=12, ha="center", va="top")
        rows: dict[str, list[object]] = {}
        for node, data in graph.nodes(data=True):
            rows.setdefault(str(data.get("bank", str(node).split(":")[0])), []).append(node)
        style = {"size": 10, "weight": "bold", "ha": "right", "va": "center"}
        self.bank_labels = {b: self._text(label_text(b), **style) for b in rows}
        colours = node_colours(graph.number_of_nodes())
        self.nodes: dict[object, _Node] = {}
        self.lines: list[list[_Node]] = []
        self.line_bank: list[str] = []
        for bank, members in rows.items():
            width = 0.0
            for node in members:
                card = self._card(node, colours[len(self.nodes)])
                if not self.line_bank or self.line_bank[-1] != bank or width + card.w > _MAX_WIDTH:
                    self.lines.append([])
                    self.line_bank.append(bank)
                    width = 0.0
                width += card.w + _GAP
                card.line, card.col = len(self.lines) - 1, len(self.lines[-1])
                self.lines[-1].append(card)
                self.nodes[node] = card
        self.edges = [self._classify(u, v, d.get("count", "")) for u, v, d in graph.edges.data()]

    def _text(self, s: str, **kw: Any) -> Text:
        return self.ax.text(0, 0, s, **kw)

    def _size(self, t: Text) -> tuple[float, float]:
        bb = t.get_window_extent(self.renderer)
        return bb.width / self.fig.dpi, bb.height / self.fig.dpi

    def _card(self, node: object, colour: str) -> _Node:
        data = self.graph.nodes[node]
        size = int(data.get("size", 1) or 1)
        letter = str(data.get("letter", node))
        r = min(0.25, 0.14 + 0.035 * math.sqrt(size))
        names = [short_layer_name(s) for s in str(data.get("layers", "")).split(",") if s]
        shown = [label_text(n) for n in (names if len(names) <= 6 else [*names[:5], "…"])]
        lines = [
            plural(size, "layer"),
            *(", ".join(shown[k : k + 3]) for k in range(0, len(shown), 3)),
        ]
        caption = self._text("\n".join(lines), ha="center", va="top", size=7, c="0.2", zorder=4)
        badge = self._text(label_text(letter), **CENTRE, c="w", size=11, weight="bold", zorder=5)
        cw, ch = self._size(caption)
        w = max(2 * r, cw, self._size(badge)[0] + 0.1) + 2 * _PAD + 0.06
        h = _PAD + 2 * r + 0.05 + ch + _PAD
        return _Node(node, 0, 0, r, max(w, 0.9), h, [badge, caption], colour)

    def _classify(self, u: object, v: object, count: object) -> _Edge:
        a, b = self.nodes[u], self.nodes[v]
        if u == v:
            return _Edge(u, v, count, "loop")
        if a.line != b.line:
            return _Edge(u, v, count, "route")
        if abs(a.col - b.col) == 1:
            return _Edge(u, v, count, "next", 0.2 if self.graph.has_edge(v, u) else 0.0)
        under = self.graph.has_edge(v, u) and a.col < b.col
        return _Edge(u, v, count, "under" if under else "arc")

    def place(self) -> None:
        routes = [e for e in self.edges if e.kind == "route"]
        spans = {e: abs(self.nodes[e.u].col - self.nodes[e.v].col) for e in self.edges}
        self.corridor: dict[int, list[_Edge]] = {i: [] for i in range(len(self.lines))}
        for e in routes:
            self.corridor[self.nodes[e.u].line].append(e)
            if self.nodes[e.v].col > 0:
                self.corridor[self.nodes[e.v].line].append(e)
        y = -0.1
        if self.title:
            y -= self._size(self.title)[1] + 0.2
            self.boxes.append((-1e9, y + 0.1, 1e9, 0.0))
        self.line_bottom: list[float] = []
        self.below: list[float] = []  # room for arcs under each row
        for i, line in enumerate(self.lines):
            own = [e for e in self.edges if self.nodes[e.u].line == i]
            above = [0.2] + [0.62] * any(e.kind == "loop" for e in own)
            above += [_arc(spans[e]) + 0.2 for e in own if e.kind == "arc"]
            y -= max(above)
            self.below.append(max([0.0, *(_arc(spans[e]) + 0.2 for e in own if e.kind == "under")]))
            for card in line:
                card.top = y
            bottom = y - max(c.h for c in line)
            self.line_bottom.append(bottom)
            lanes = len(self.corridor[i])
            y = bottom - max(0.25, self.below[i]) - lanes * _LANE - 0.15 * bool(lanes)
        self.bottom = y
        # Gutter lanes: routes whose vertical runs do not overlap share a lane.
        ends: list[float] = []  # per lane, the lowest y its runs reach so far
        for e in sorted(routes, key=lambda e: -max(self._run(e))):
            high, low = max(self._run(e)), min(self._run(e))
            e.lane = next((k for k, end in enumerate(ends) if end > high + 0.05), len(ends))
            ends[e.lane : e.lane + 1] = [low]
        gutter = len(ends) * _LANE + (0.25 if routes else 0.0)
        for card in self.nodes.values():  # room for a port per edge end, and the self-loop
            ends = [(e.kind, e.u == card.key) for e in self.edges if card.key in (e.u, e.v)]
            top = sum(k == "arc" for k, _ in ends) + 3.8 * (("loop", True) in ends)
            bottom = sum(k in ("under", "route") for k, _ in ends)
            card.w = max(card.w, 0.12 + 0.16 * top, 0.12 + 0.16 * bottom)
        label_w = max((self._size(t)[0] for t in self.bank_labels.values()), default=0.0)
        x0 = 0.15 + label_w + 0.2 + gutter
        self.gutter_x = x0 - 0.2
        for line in self.lines:
            x = x0
            for card in line:
                card.x = x + card.w / 2
                x += card.w + _GAP
        self.right = max(c.x + c.w / 2 for c in self.nodes.values()) + 0.3
        for card in self.nodes.values():
            self.boxes.append(
                (card.x - card.w / 2, card.top - card.h, card.x + card.w / 2, card.top)
            )
        for bank, label in self.bank_labels.items():
            at = (x0 - gutter - 0.2, self.lines[self.line_bank.index(bank)][0].y)
            label.set_position(at)
            self.boxes.append(self._extent(label, *at, right=True))
        self._assign_ports()

    def _run(self, e: _Edge) -> tuple[float, float]:
        """Where a route runs along the gutter: from the corridor below its source's row to the
        target's badge (a first column) or the corridor below the target's row."""
        b = self.nodes[e.v]
        end = b.y if b.col == 0 else self._corridor_y(b.line, e)
        return self._corridor_y(self.nodes[e.u].line, e), end

    def _extent(self, t: Text, x: float, y: float, pad: float = 0.0, right: bool = False) -> Any:
        """The box of ``t`` centred at (x, y) (right-aligned at x when ``right``), plus ``pad``."""
        w, h = self._size(t)
        left = x - w - pad if right else x - w / 2 - pad
        return (left, y - h / 2 - pad, left + w + 2 * pad, y + h / 2 + pad)

    def _assign_ports(self) -> None:
        """Ports on card sides: top for arcs, bottom for arcs under the row and routes out (and in,
        off the first column), left for routes into a first column; spread evenly."""
        for e in self.edges:
            a, b = self.nodes[e.u], self.nodes[e.v]
            if e.kind in ("arc", "under"):
                side = "top" if e.kind == "arc" else "bottom"
                a.ports[side].append((b.x, (e, "out")))
                b.ports[side].append((a.x, (e, "in")))
            elif e.kind == "route":
                a.ports["bottom"].append((-1e9 + e.lane, (e, "out")))
                side = "left" if b.col == 0 else "bottom"
                b.ports[side].append(
                    (-1e9 - e.lane if side == "left" else -1e9 + e.lane, (e, "in"))
                )
        self.port: dict[tuple[int, str], tuple[float, float]] = {}
        for card in self.nodes.values():
            loop, card.loop_x = self.graph.has_edge(card.key, card.key), card.x
            left, right, low = card.x - card.w / 2, card.x + card.w / 2, card.top - card.h
            for side, items in card.ports.items():
                # Farthest first on each side, so arcs of one node nest instead of crossing.
                items.sort(key=lambda it: (it[0] > card.x, it[0] if it[0] < card.x else -it[0]))
                if side == "left":
                    ys = _spread(card.y + card.r, card.y - card.r, len(items))
                    pts = [(left, yy) for yy in ys]
                elif side == "top" and loop and items:
                    # The self-loop moves to the end of the top the fewest arcs go to.
                    rightwards = sum(other > card.x for other, _ in items)
                    at_left = 2 * rightwards >= len(items)
                    card.loop_x = left + 0.3 if at_left else right - 0.3
                    lo, hi = (left + 0.62, right - 0.06) if at_left else (left + 0.06, right - 0.62)
                    pts = [(xx, card.top) for xx in _spread(lo, hi, len(items))]
                else:
                    yy = card.top if side == "top" else low
                    pts = [(xx, yy) for xx in _spread(left + 0.06, right - 0.06, len(items))]
                for (_, (e, end)), pt in zip(items, pts, strict=True):
                    self.port[(id(e), end)] = pt

    def draw(self) -> None:
        ax = self.ax
        for card in self.nodes.values():
            corner, style = (
                (card.x - card.w / 2, card.top - card.h),
                "round,pad=0,rounding_size=.08",
            )
            card.patch = FancyBboxPatch(corner, card.w, card.h, boxstyle=style, fc="white",
                                        ec=card.colour, lw=1.6, zorder=2, gid="node")  # fmt: skip
            ax.add_patch(card.patch)
            ax.add_patch(
                Circle((card.x, card.y), card.r, fc=card.colour, ec="none", zorder=3, gid="badge")
            )
            card.texts[0].set_position((card.x, card.y))
            card.texts[1].set_position((card.x, card.y - card.r - 0.05))
        for label, candidates in [self._draw_edge(e) for e in self.edges]:
            self._place_label(label, candidates)

    def _draw_edge(self, e: _Edge) -> tuple[Text, list[tuple[float, float]]]:
        a, b = self.nodes[e.u], self.nodes[e.v]
        label = self._text(f"{e.count}×", **CENTRE, fontsize=8, zorder=6, bbox=dict(_BOX))
        label.set_gid("edge-count")
        if e.kind == "loop":
            t, x = a.top, a.loop_x
            pts = [(x - 0.13, t), (x - 0.4, t + 0.55), (x + 0.4, t + 0.55), (x + 0.13, t)]
            codes = [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4]
            self.ax.add_patch(FancyArrowPatch(path=MplPath(pts, codes), gid="self-loop", **_ARROW))
            h = self._size(label)[1]
            return label, [(x, t + 0.42 + h / 2 + 0.05), (x, t + 0.7), (x - 0.5, t + 0.42)]
        if e.kind == "next":
            arrow = FancyArrowPatch(
                (a.x, a.y), (b.x, b.y), connectionstyle=f"arc3,rad={e.rad}", patchA=a.patch,
                patchB=b.patch, gid="edge", **_ARROW,
            )  # fmt: skip
            self.ax.add_patch(arrow)
            p0, p1 = np.array((a.x, a.y)), np.array((b.x, b.y))
            d = p1 - p0
            ctrl = (p0 + p1) / 2 + e.rad * np.array((d[1], -d[0]))
            return label, _bezier(p0, ctrl, p1)
        if e.kind in ("arc", "under"):
            p0, p1 = np.array(self.port[(id(e), "out")]), np.array(self.port[(id(e), "in")])
            d = p1 - p0
            height = _arc(abs(a.col - b.col)) * (1 if e.kind == "arc" else -1)
            rad = -2 * height / d[0]
            style = f"arc3,rad={rad}"
            self.ax.add_patch(FancyArrowPatch(p0, p1, connectionstyle=style, gid="edge", **_ARROW))
            return label, _bezier(p0, (p0 + p1) / 2 + rad * np.array((d[1], -d[0])), p1)
        # A route to another row: down from the card into the corridor below its row, left to
        # the gutter, along it, then into the first card of a row from the left, or up from
        # the corridor below the target's row into its bottom.
        (sx, sy), (tx, ty) = self.port[(id(e), "out")], self.port[(id(e), "in")]
        (ya, yb), gx = self._run(e), self.gutter_x - e.lane * _LANE
        pts = [(sx, sy), (sx, ya), (gx, ya)]
        pts += [(gx, ty), (tx, ty)] if b.col == 0 else [(gx, yb), (tx, yb), (tx, ty)]
        path = MplPath(pts, [MplPath.MOVETO] + [MplPath.LINETO] * (len(pts) - 1))
        self.ax.add_patch(FancyArrowPatch(path=path, gid="edge", **_ARROW))
        ys = sorted(np.linspace(ya, yb, 25), key=lambda y: abs(y - (ya + yb) / 2))
        return label, [(gx, float(y)) for y in ys] + [
            (float(x), ya) for x in np.linspace(gx, sx, 9)
        ]

    def _corridor_y(self, line: int, e: _Edge) -> float:
        index = self.corridor[line].index(e)
        return self.line_bottom[line] - max(0.25, self.below[line]) - index * _LANE - 0.05

    def _place_label(self, label: Text, candidates: list[tuple[float, float]]) -> None:
        """The first candidate where the label's box hits no card, no text and no other label
        (where none is free, which no layout here leaves, the preferred one)."""
        w, h = (v / 2 + 0.03 for v in self._size(label))  # half sizes, frame included
        boxes = [(x - w, y - h, x + w, y + h) for x, y in candidates]
        k = next((k for k, b in enumerate(boxes) if not any(_hits(b, o) for o in self.boxes)), 0)
        label.set_position(candidates[k])
        self.boxes.append(boxes[k])

    def finish(self, note: str) -> None:
        legend = self._text(_LEGEND + note, size=7, c="0.4", va="top")
        legend.set_position((0.15, self.bottom))
        low = self.bottom - self._size(legend)[1] - 0.1
        boxes = [b for b in self.boxes if b[2] < 1e8]  # not the title's band
        low = min([low, *(b[1] - 0.1 for b in boxes)])
        width = max([self.right, self._size(legend)[0] + 0.3, *(b[2] + 0.1 for b in boxes)])
        if self.title:
            width = max(width, self._size(self.title)[0] + 0.3)
            self.title.set_position((width / 2, -0.1))
        high = max([0.0, *(b[3] + 0.1 for b in boxes)])
        self.fig.set_size_inches(width, high - low)
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(low, high)


def graph_figure(graph: nx.DiGraph, *, title: str | None = None) -> Figure:
    """Draw a recurrence graph: one row per bank, clusters in first-use order, edges with counts.

    Nodes (``"<bank>:<letter>"`` with ``bank``, ``letter``, ``layers``, ``size``) are cards, a
    badge with the letter over the layers; a self-loop sits on a card; ``A -> B -> A`` curves
    apart; a jump past other nodes arcs over the row (under it when the reverse jump exists);
    an edge to another row (next bank, next line) runs down the gutter. Every edge carries its
    ``count``. Past 300 clusters the first 300 are drawn, and the legend says so.
    """
    fig = Figure(figsize=(4.0, 2.5))
    if graph.number_of_nodes() == 0:
        ax = fig.add_subplot()
        ax.set_axis_off()
        if title:
            ax.set_title(label_text(title))
        ax.text(0.5, 0.5, "empty graph", **CENTRE, transform=ax.transAxes)
        return fig
    more = graph.number_of_nodes() - _MAX_NODES  # a figure must stay drawable (and readable)
    if more > 0:  # (not graph.subgraph: a view of many nodes loses their order)
        keep, full = set(list(graph.nodes)[:_MAX_NODES]), graph
        graph = nx.DiGraph()
        graph.add_nodes_from((n, d) for n, d in full.nodes(data=True) if n in keep)
        graph.add_edges_from((u, v, d) for u, v, d in full.edges(data=True) if {u, v} <= keep)
    layout = _Layout(graph, fig, title)
    layout.place()
    layout.draw()
    layout.finish(f"; {more} more clusters not drawn (ssc analyze --graph has all)" * (more > 0))
    return fig
