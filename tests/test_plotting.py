"""Tests of the LSM heatmaps, the recurrence-graph figure and atomic figure saving (headless)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from soft_share_cli.analysis.loops import cluster_letters
from soft_share_cli.errors import InputError
from soft_share_cli.render.graph_plot import graph_figure
from soft_share_cli.render.plots import (
    HeatmapInput,
    save_figure,
    short_layer_name,
    similarity_figure,
)

ALTERNATING = ((0, 2, 4), (1, 3, 5))  # conv1s share filter A, conv2s filter B


def swrn_bank(stage: int, n_layers: int = 6, clusters=ALTERNATING, seed: int = 0) -> HeatmapInput:
    """A bank like SWRN's: 0.99 inside clusters, 0.1-0.3 across, unit diagonal."""
    rng = np.random.default_rng(seed)
    layers = [f"stage_{stage}.{i // 2 + 1}.conv{i % 2 + 1}" for i in range(n_layers)]
    matrix = rng.uniform(0.1, 0.3, (n_layers, n_layers))
    for members in clusters:
        matrix[np.ix_(members, members)] = 0.99
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 1.0)
    return HeatmapInput(f"bank_{stage}", layers, matrix, tuple(map(tuple, clusters)))


def texts(ax, gid: str) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_gid() == gid]


def draw(fig: Figure) -> None:
    FigureCanvasAgg(fig).draw()  # renders every artist: catches errors that building misses


def test_one_panel_per_bank_plus_one_colour_bar() -> None:
    fig = similarity_figure([swrn_bank(s) for s in (1, 2, 3)], 0.95, title="SWRN")
    draw(fig)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 3 and len(fig.axes) == 4  # the shared colour bar is the fourth
    assert panels[2].get_title() == "bank_3 — 6 layers, 2 clusters at τ=0.95"
    bar = fig.axes[3]
    assert bar.get_ylim() == pytest.approx((0.0, 1.0))


def test_five_banks_wrap_into_rows() -> None:
    fig = similarity_figure([swrn_bank(s) for s in range(1, 6)], 0.9)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 5
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 2  # 3 + 2


def test_small_bank_annotated_with_contrasting_text() -> None:
    fig = similarity_figure([swrn_bank(3)], 0.95)
    draw(fig)
    ax = fig.axes[0]
    values = [t for t in ax.texts if t.get_gid() == "cell-value"]
    assert len(values) == 36
    by_cell = {(t.get_position()): t for t in values}
    assert by_cell[(2, 0)].get_text() == "0.99" and by_cell[(1, 0)].get_text() != "0.99"
    # Yellow (high) cells get dark text, dark-purple (low) cells light text.
    assert to_hex(by_cell[(2, 0)].get_color()) == "#000000"
    assert to_hex(by_cell[(1, 0)].get_color()) == "#ffffff"


def test_large_bank_has_no_annotations_and_fewer_ticks() -> None:
    bank = swrn_bank(2, n_layers=40, clusters=(tuple(range(0, 20, 2)), tuple(range(1, 20, 2))))
    fig = similarity_figure([bank], 0.9)
    draw(fig)
    ax = fig.axes[0]
    assert texts(ax, "cell-value") == []
    assert len(ax.get_yticks()) <= 40


def test_hundreds_of_layers_use_a_strip_not_per_cell_artists() -> None:
    n = 300
    bank = swrn_bank(4, n_layers=n, clusters=(tuple(range(0, n, 2)), tuple(range(1, n, 2))))
    fig = similarity_figure([bank], 0.9)
    draw(fig)
    ax = fig.axes[0]
    assert texts(ax, "cell-value") == []
    assert len(ax.get_xticks()) <= 40
    assert [child.get_gid() for child in ax.child_axes] == ["cluster-strip"]
    assert not [c for c in ax.collections if c.get_gid() == "cluster-outline"]


def test_tick_labels_carry_cluster_letters_in_cluster_colours() -> None:
    fig = similarity_figure([swrn_bank(3)], 0.95)
    ax = fig.axes[0]
    labels = ax.get_yticklabels()
    assert [t.get_text() for t in labels] == [
        "3.1.c1 [A]",
        "3.1.c2 [B]",
        "3.2.c1 [A]",
        "3.2.c2 [B]",
        "3.3.c1 [A]",
        "3.3.c2 [B]",
    ]
    assert [t.get_text() for t in ax.get_xticklabels()] == [t.get_text() for t in labels]
    colours = [to_hex(t.get_color()) for t in labels]
    assert colours[0] == colours[2] == colours[4] != colours[1] == colours[3] == colours[5]
    assert "A B A B A B" in ax.get_xlabel()


def test_cluster_cells_are_outlined() -> None:
    fig = similarity_figure([swrn_bank(3)], 0.95)
    outlines = [c for c in fig.axes[0].collections if c.get_gid() == "cluster-outline"]
    assert outlines
    # Non-contiguous clusters: every one of the 9 cells of A's pattern is boxed on 4 sides.
    per_cluster = outlines[-1].get_paths()
    assert [len(p.vertices) for p in per_cluster] == [9 * 4 * 2, 9 * 4 * 2]


def test_given_letters_and_singletons() -> None:
    bank = swrn_bank(1, n_layers=4, clusters=((0, 1, 2), (3,)))
    bank = HeatmapInput(bank.bank, bank.layers, bank.matrix, bank.clusters, letters=("X", "Y"))
    ax = similarity_figure([bank], 0.9).axes[0]
    assert ax.get_yticklabels()[3].get_text() == "1.2.c2 [Y]"
    assert ax.get_title() == "bank_1 — 4 layers, 2 clusters at τ=0.9"


def test_empty_bank_panel_says_no_layers() -> None:
    empty = HeatmapInput("bank_9", [], np.zeros((0, 0)), ())
    fig = similarity_figure([swrn_bank(1), empty], 0.9)
    draw(fig)
    assert len(fig.axes) == 3
    assert "no layers" in [t.get_text() for t in fig.axes[1].texts]
    only_empty = similarity_figure([empty], 0.9)
    draw(only_empty)
    assert len(only_empty.axes) == 1  # nothing to give a colour bar


def test_signed_uses_a_symmetric_scale() -> None:
    bank = swrn_bank(1)
    matrix = bank.matrix.copy()
    matrix[0, 2] = matrix[2, 0] = -0.99
    fig = similarity_figure(
        [HeatmapInput("b", bank.layers, matrix, bank.clusters)], 0.9, signed=True
    )
    assert fig.axes[1].get_ylim() == pytest.approx((-1.0, 1.0))
    assert "-0.99" in texts(fig.axes[0], "cell-value")


@pytest.mark.parametrize(
    ("matrix", "clusters"),
    [(np.eye(5), ((0, 1),)), (np.eye(6), ((0, 6),)), (np.eye(6), ((0, 1), (1, 2)))],
    ids=["shape", "index", "overlap"],
)
def test_inconsistent_input_is_an_input_error(matrix: np.ndarray, clusters) -> None:
    bank = HeatmapInput("bank_1", [f"l{i}" for i in range(6)], matrix, clusters)
    with pytest.raises(InputError, match="bank_1"):
        similarity_figure([bank], 0.9)


def test_short_layer_names_and_letters() -> None:
    assert short_layer_name("stage_3.1.conv1") == "3.1.c1"
    assert short_layer_name("module.stage_2.4.shortcut") == "2.4.sc"
    assert short_layer_name("fc") == "fc"
    assert cluster_letters(28)[:2] == ["A", "B"]
    assert cluster_letters(28)[-2:] == ["AA", "AB"]


@pytest.mark.parametrize(
    ("suffix", "magic"),
    [(".png", (b"\x89PNG",)), (".svg", (b"<?xml", b"<svg")), (".PDF", (b"%PDF",))],
)
def test_save_figure_writes_the_format_its_extension_names(
    tmp_path: Path, suffix: str, magic: tuple[bytes, ...]
) -> None:
    target = tmp_path / f"lsm{suffix}"
    save_figure(similarity_figure([swrn_bank(1)], 0.9), target)
    assert target.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left


def test_svg_output_is_reproducible(tmp_path: Path) -> None:
    # Same input, same bytes: no timestamps, no random ids.
    save_figure(similarity_figure([swrn_bank(1)], 0.9), tmp_path / "a.svg")
    save_figure(similarity_figure([swrn_bank(1)], 0.9), tmp_path / "b.svg")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


@pytest.mark.parametrize("name", ["lsm.jpg", "lsm", "lsm.png.txt"])
def test_unknown_extension_is_an_input_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=r"\.png, \.svg, \.pdf"):
        save_figure(Figure(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "lsm.png"
    target.write_bytes(b"previous")

    def broken(self: Figure, fname, **kwargs) -> None:
        Path(fname).write_bytes(b"\x89PNG half")  # a partial write, then a crash
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        save_figure(similarity_figure([swrn_bank(1)], 0.9), target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["lsm.png"]

    fresh = tmp_path / "new.png"
    with pytest.raises(RuntimeError):
        save_figure(Figure(), fresh)
    assert not fresh.exists()


def recurrence_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for bank, letter, layers in [
        ("bank_1", "A", ["stage_1.2.conv1", "stage_1.3.conv1"]),
        ("bank_1", "B", ["stage_1.2.conv2", "stage_1.3.conv2"]),
        ("bank_2", "A", ["stage_2.2.conv1", "stage_2.2.conv2", "stage_2.3.conv1"]),
        ("bank_2", "B", ["stage_2.3.conv2"]),
        ("bank_2", "C", ["stage_2.4.conv1"]),
    ]:
        graph.add_node(
            f"{bank}:{letter}", bank=bank, letter=letter, layers=",".join(layers), size=len(layers)
        )
    graph.add_edge("bank_1:A", "bank_1:B", count=2)  # 2-cycle A -> B -> A
    graph.add_edge("bank_1:B", "bank_1:A", count=1)
    graph.add_edge("bank_2:A", "bank_2:A", count=2)  # self-loop: A repeated
    graph.add_edge("bank_2:A", "bank_2:B", count=1)
    graph.add_edge("bank_2:B", "bank_2:C", count=1)
    graph.add_edge("bank_2:C", "bank_2:A", count=4)  # jumps back past B
    return graph


def test_graph_figure_labels_every_edge_with_its_count() -> None:
    graph = recurrence_graph()
    fig = graph_figure(graph, title="loops")
    draw(fig)
    (ax,) = fig.axes
    assert sorted(texts(ax, "edge-count")) == ["1×", "1×", "1×", "2×", "2×", "4×"]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == graph.number_of_edges()
    assert [p.get_gid() for p in arrows].count("self-loop") == 1
    node_letters = [t.get_text() for t in ax.texts if t.get_text() in {"A", "B", "C"}]
    assert sorted(node_letters) == ["A", "A", "B", "B", "C"]
    assert {"bank_1", "bank_2"} <= {t.get_text() for t in ax.texts}


def test_graph_rows_per_bank_and_curved_two_cycle() -> None:
    fig = graph_figure(recurrence_graph())
    ax = fig.axes[0]
    arrows = [p for p in ax.patches if p.get_gid() == "edge"]
    rads = [round(a.get_connectionstyle().rad, 3) for a in arrows]
    assert rads.count(0.2) == 2  # both directions of bank_1's A <-> B bend apart
    assert rads.count(0.0) == 2  # neighbours in order: straight
    assert sum(abs(r) > 0.5 for r in rads) == 1  # C -> A arcs over B
    rows = {t.get_text(): t.get_position()[1] for t in ax.texts}
    assert rows["bank_1"] > rows["bank_2"]


def test_empty_graph_draws() -> None:
    fig = graph_figure(nx.DiGraph())
    draw(fig)
    assert "empty graph" in [t.get_text() for t in fig.axes[0].texts]


@pytest.mark.parametrize(
    ("value", "threshold", "text"),
    [
        (0.9866, 0.99, "0.987"),
        (0.98999, 0.99, "0.98999"),
        (0.991, 0.99, "0.99"),
        (0.5, 0.99, "0.50"),
        (-0.9866, 0.99, "-0.987"),
        (0.99, 0.99, "0.99"),
        (0.9899999999, 0.99, "0.989999"),
    ],
)
def test_cell_values_never_round_across_the_threshold(
    value: float, threshold: float, text: str
) -> None:
    from soft_share_cli.render.plots import cell_text

    assert cell_text(value, threshold) == text
