"""Figures of Layer Similarity Matrices, and what every figure shares (colours, labels, saving).

Everything is built on :class:`matplotlib.figure.Figure` (never pyplot), so the library holds no
global plotting state and works headless; the caller decides where a figure goes
(:func:`save_figure`). A cluster letter has one colour in both figures, heatmap and graph
(:mod:`soft_share_cli.render.graph_plot`).
"""

from __future__ import annotations

import colorsys
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex, to_rgb, to_rgba
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.path import Path as MplPath

from soft_share_cli.analysis.loops import cluster_letters
from soft_share_cli.errors import InputError
from soft_share_cli.render.text import inert

SAVE_FORMATS = ("png", "svg", "pdf")
# Dark, mutually distinct colours: they must read as text on white and as borders on viridis.
_PALETTE = ("#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#2ca02c", "#8c564b", "#e377c2", "#17becf")
_ANNOTATE_MAX = 12  # beyond this a cell is too small for a two-digit number
_OUTLINE_MAX = 60  # past this, cells are too small to outline without hiding them
_MAX_TICKS = 40  # more tick labels than this overlap at any sensible figure size
CENTRE: dict[str, Any] = {"ha": "center", "va": "center"}
_SHORTEN = (
    (re.compile(r"^(module|_orig_mod)\."), ""),
    (re.compile(r"stage_?(\d+)"), r"\1"),
    (re.compile(r"conv"), "c"),
    (re.compile(r"shortcut"), "sc"),
    (re.compile(r"block_?"), "b"),
)


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields would raise
class HeatmapInput:
    """One bank's LSM with its clustering, as drawn by :func:`similarity_figure`."""

    bank: str  # panel title, e.g. "bank_3"
    layers: Sequence[str]  # layer names in execution order (the axes keep this order)
    matrix: np.ndarray  # (L, L) similarity, in [0, 1] (or [-1, 1] when signed)
    clusters: tuple[tuple[int, ...], ...]  # layer indices per cluster, in cluster order
    letters: Sequence[str] | None = None  # one letter per cluster; A, B, ... when None


def short_layer_name(name: str) -> str:
    """A compact tick label: ``stage_3.1.conv1`` becomes ``3.1.c1``; short names stay whole."""
    if len(name) <= 8:
        return name
    for pattern, repl in _SHORTEN:
        name = pattern.sub(repl, name)
    return name


def label_text(name: object) -> str:
    """A name from a file as figure text: control characters escaped, ``$`` never mathtext.

    Matplotlib reads ``$...$`` as TeX (a malformed one fails the whole figure) and cannot draw
    control characters (it warns, quoting them, on the terminal).
    """
    return inert(name).replace("$", r"\$")


def letter_color(letter: str, fallback: int = 0) -> str:
    # Colour by the letter itself (not the position in a list) so both figures agree.
    if re.fullmatch(r"[A-Z]+", letter):
        index = 0
        for char in letter:
            index = index * 26 + ord(char) - 64
        return _PALETTE[(index - 1) % len(_PALETTE)]
    return _PALETTE[fallback % len(_PALETTE)]


def cluster_colours(count: int) -> list[str]:
    """``count`` distinct colours dark enough for white letters: the eight of the palette, then
    each next one the farthest (in RGB) from those taken, out of a grid of dark hues. Both
    figures colour the clusters of all banks, in order, from one such list, so a cluster has one
    colour in the heatmap and the graph and no two clusters of a figure share one."""
    colours = [letter_color(chr(65 + i)) for i in range(min(count, 8))]
    if count <= len(colours):
        return colours
    steps = max(24, count // 4 + 1)
    grid = np.array([colorsys.hls_to_rgb(h / steps, light, sat) for h in range(steps)
                     for light in (0.25, 0.35, 0.45, 0.55) for sat in (0.55, 0.85)])  # fmt: skip
    grid = grid[grid @ np.array([0.299, 0.587, 0.114]) <= 0.45]
    taken = np.array([to_rgb(c) for c in colours])
    gap = np.linalg.norm(grid[:, None] - taken[None], axis=2).min(axis=1)
    while len(colours) < count:
        k = int(np.argmax(gap))
        colours.append(to_hex(grid[k]))
        gap = np.minimum(gap, np.linalg.norm(grid - grid[k], axis=1))
    return colours


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _check(bank: HeatmapInput) -> tuple[np.ndarray, list[str]]:
    n = len(bank.layers)
    matrix = np.asarray(bank.matrix, dtype=np.float64)
    if matrix.shape != (n, n):
        raise InputError(f"{bank.bank}: matrix is {matrix.shape}, expected ({n}, {n})")
    flat = [i for cluster in bank.clusters for i in cluster]
    if any(not 0 <= i < n for i in flat) or len(flat) != len(set(flat)):
        raise InputError(f"{bank.bank}: clusters must be disjoint layer indices in [0, {n})")
    count = len(bank.clusters)
    letters = cluster_letters(count) if bank.letters is None else list(bank.letters)
    if len(letters) < count:
        raise InputError(f"{bank.bank}: {count} clusters but {len(letters)} letters")
    return matrix, letters


def _boundaries(n: int, clusters: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Outline segments of the cells (i, j) with i and j in one multi-layer cluster, and the
    cluster each belongs to (clusters are disjoint, so exactly one). Vectorised: fast at any L."""
    label = np.full((n + 2, n + 2), -1)
    for cid, members in enumerate(clusters):
        if len(members) >= 2:
            idx = np.asarray(members) + 1
            label[np.ix_(idx, idx)] = cid
    segments, owners = [], []
    rows, cols = np.nonzero(label[:-1, 1:-1] != label[1:, 1:-1])  # horizontal edges
    owners.append(np.maximum(label[rows, cols + 1], label[rows + 1, cols + 1]))
    y = rows - 0.5
    segments.append(np.stack([np.stack([cols - 0.5, y], 1), np.stack([cols + 0.5, y], 1)], 1))
    rows, cols = np.nonzero(label[1:-1, :-1] != label[1:-1, 1:])  # vertical edges
    owners.append(np.maximum(label[rows + 1, cols], label[rows + 1, cols + 1]))
    x = cols - 0.5
    segments.append(np.stack([np.stack([x, rows - 0.5], 1), np.stack([x, rows + 0.5], 1)], 1))
    return np.concatenate(segments), np.concatenate(owners)


def _outline_clusters(
    ax: Axes, n: int, clusters: Sequence[Sequence[int]], colours: Sequence[str]
) -> None:
    segments, owners = _boundaries(n, clusters)
    if not len(segments):
        return
    # One compound path per cluster (not one Path per segment, nor path effects: both take
    # seconds for a few hundred layers), over a black and a white halo so the outline shows
    # on dark and light cells of any colormap, whatever the cluster colour.
    ids = sorted(set(owners.tolist()))
    paths = []
    for cid in ids:
        verts = segments[owners == cid].reshape(-1, 2)
        codes = np.tile([MplPath.MOVETO, MplPath.LINETO], len(verts) // 2)
        paths.append(MplPath(verts, codes.astype(MplPath.code_type)))
    colours = [colours[c] for c in ids]
    width = 2.0 if n <= _ANNOTATE_MAX else 2.0 * math.sqrt(_ANNOTATE_MAX / n)
    strokes = (("white", width * 2.6), ("black", width * 1.8), (colours, width))
    for colour, lw in strokes:
        outline = PathCollection(
            paths, facecolors="none", edgecolors=colour, linewidths=lw, transform=ax.transData
        )
        outline.set_gid("cluster-outline")
        ax.add_collection(outline, autolim=False)


def cell_text(value: float, threshold: float) -> str:
    """``value`` with two decimals, or as many more (up to 6) as it takes for the printed number
    to fall on the same side of ``threshold`` as the value (0.9866 at τ = 0.99 prints "0.987",
    not "0.99"); the comparison is on magnitudes, as the clustering's."""
    for decimals in range(2, 7):
        text = f"{value:.{decimals}f}"
        if (abs(float(text)) >= threshold) == (abs(value) >= threshold):
            return text
    return f"{math.trunc(value * 1e6) / 1e6:.6f}"  # below it by less than 1e-6: cut, not rounded


def _draw_bank(
    ax: Axes, bank: HeatmapInput, threshold: float, signed: bool, colours: Sequence[str]
) -> AxesImage | None:
    matrix, letters = _check(bank)
    n = len(bank.layers)
    multi = sum(len(c) >= 2 for c in bank.clusters)
    counts = f"{plural(n, 'layer')}, {plural(len(bank.clusters), 'cluster')}"
    ax.set_title(f"{label_text(bank.bank)} — {counts} at τ={threshold:g}", fontsize=10)
    if n == 0:
        ax.text(0.5, 0.5, "no layers", **CENTRE, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return None
    cmap = colormaps["RdBu_r" if signed else "viridis"]
    lo = -1.0 if signed else 0.0
    image = ax.imshow(matrix, cmap=cmap, vmin=lo, vmax=1.0, interpolation="nearest")

    owner = [-1] * n
    for cid, members in enumerate(bank.clusters):
        for i in members:
            owner[i] = cid
    if n > _OUTLINE_MAX:
        # Cells are a few pixels wide: outlines would hide the values. A strip beside the
        # matrix gives each row its cluster colour instead (white: a layer shared with none).
        strip = np.ones((n, 1, 4))
        for cid, members in enumerate(bank.clusters):
            if len(members) >= 2:
                strip[list(members), 0] = to_rgba(colours[cid])
        side = ax.inset_axes((1.015, 0.0, 0.03, 1.0))
        side.imshow(strip, aspect="auto", interpolation="nearest")
        side.set_xticks([])
        side.set_yticks([])
        side.set_gid("cluster-strip")
    else:
        _outline_clusters(ax, n, bank.clusters, colours)

    if n <= _ANNOTATE_MAX:
        # Text colour by the luminance of the cell it sits on, for contrast on any colormap.
        rgba = cmap((matrix - lo) / (1.0 - lo))
        luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
        for i in range(n):
            for j in range(n):
                colour = "black" if luma[i, j] > 0.5 else "white"
                value = cell_text(float(matrix[i, j]), threshold)
                text = ax.text(j, i, value, **CENTRE, size=8, color=colour)
                text.set_gid("cell-value")

    step = max(1, math.ceil(n / _MAX_TICKS))
    ticks = list(range(0, n, step))
    size = 9 if n <= _ANNOTATE_MAX else 7 if n <= _MAX_TICKS else 6
    labels = []
    for i in ticks:
        tag = f" [{letters[owner[i]]}]" if owner[i] >= 0 else ""
        labels.append(label_text(short_layer_name(bank.layers[i])) + tag)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
    ax.set_yticks(ticks, labels, fontsize=size)
    for axis_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for label, i in zip(axis_labels, ticks, strict=True):
            if owner[i] >= 0 and len(bank.clusters[owner[i]]) >= 2:
                label.set_color(colours[owner[i]])
                label.set_fontweight("bold")
    # The letter sequence in execution order is how loops read: "A B A B A B" = (A B) x 3.
    order = " ".join(letters[o] if o >= 0 else "·" for o in owner)
    if len(order) > 90:
        order = order[:88] + " …"
    ax.set_xlabel(f"order: {order}" if multi else "no layers share a filter", fontsize=9)
    ax.tick_params(length=2, pad=2)
    return image


def similarity_figure(
    banks: Sequence[HeatmapInput],
    threshold: float,
    *,
    title: str | None = None,
    signed: bool = False,
) -> Figure:
    """One LSM heatmap panel per bank, side by side (wrapping past four), one shared colour bar.

    Axes keep execution order because loops are read in order; cluster membership is shown by
    coloured ``[A]`` tags on the ticks and coloured outlines of the same-cluster cells (past 60
    layers, a colour strip beside the matrix). Values are printed up to 12 layers; larger banks
    get at most 40 tick labels.
    ``signed`` draws a diverging -1..1 scale for signed cosines. Raises :class:`InputError`
    for a matrix or clusters that do not fit the layer list.
    """
    count = max(1, len(banks))
    ncols = count if count <= 4 else 3
    nrows = math.ceil(count / ncols)
    largest = max((len(b.layers) for b in banks), default=0)
    side = min(8.5, max(4.6, 2.2 + 0.5 * largest))  # room for cells and long tick labels
    fig = Figure(figsize=(side * ncols * 0.92 + 1.0, side * nrows + 0.5), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, k + 1) for k in range(len(banks))]
    colours = cluster_colours(sum(len(bank.clusters) for bank in banks))
    offsets = np.cumsum([0, *(len(bank.clusters) for bank in banks)])
    images = [
        _draw_bank(ax, bank, threshold, signed, colours[offsets[k] :])
        for k, (ax, bank) in enumerate(zip(axes, banks, strict=True))
    ]
    shown = [im for im in images if im is not None]
    if shown:
        # All panels share one scale, so one bar says it once instead of once per panel.
        bar = fig.colorbar(shown[0], ax=axes, shrink=min(0.9, 0.5 + 0.2 * nrows), aspect=30)
        bar.set_label("signed cosine of coefficients" if signed else "layer similarity (LSM)")
    if not banks:
        fig.text(0.5, 0.5, "no banks", **CENTRE)
    if title:
        fig.suptitle(label_text(title))
    return fig


def figure_format(path: str | Path) -> str:
    """The format ``path``'s extension names ("png", "svg", "pdf"); InputError otherwise."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in SAVE_FORMATS:
        accepted = ", ".join(f".{f}" for f in SAVE_FORMATS)
        raise InputError(f"cannot save a figure as {Path(path).name!r}: use one of {accepted}")
    return ext


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` to ``path`` atomically, in the format its extension names (png, svg, pdf).

    A failure leaves no partial file and keeps any previous file at ``path``. Raises
    :class:`InputError` for another extension or an unwritable path.
    """
    ext = figure_format(path)
    from soft_share_cli.files import atomic_write

    # Drop timestamps from vector formats so the same figure gives the same bytes.
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(ext)

    def write(tmp: Path) -> None:
        # The temporary file has another suffix, so the format must be named explicitly; a
        # fixed salt makes SVG element ids stable instead of random.
        with rc_context({"svg.hashsalt": "ssc"}):
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=metadata)

    atomic_write(path, write)
