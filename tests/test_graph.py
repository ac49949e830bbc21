"""Tests of loop detection, the recurrence graph and its files."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from soft_share_cli.analysis.loops import (
    Loop,
    cluster_letters,
    find_loops,
    layer_letters,
    recurrence_graph,
    summarize_loops,
)
from soft_share_cli.errors import InputError
from soft_share_cli.render.graph_files import GRAPH_FORMATS, export_graph, load_graph

# bank_3 of an SWRN 28-w-K: blocks 1..3 of stage_3, conv1 and conv2 each.
SWRN = [f"stage_3.{block}.conv{conv}" for block in (1, 2, 3) for conv in (1, 2)]
FLAT3 = ["conv2", "conv3", "conv4"]
FLAT6 = [f"conv{i}" for i in range(2, 8)]
ABABAB = ((0, 2, 4), (1, 3, 5))


def test_cluster_letters_go_on_after_z() -> None:
    letters = cluster_letters(28)
    assert letters[:3] == ["A", "B", "C"]
    assert letters[25:] == ["Z", "AA", "AB"]
    assert cluster_letters(26 + 26 * 26 + 1)[-1] == "AAA"
    assert cluster_letters(0) == []


def test_letters_follow_the_first_layer_of_each_cluster() -> None:
    assert layer_letters(((1, 3), (0, 2)), 4) == ["A", "B", "A", "B"]


def test_swrn_blocks_repeating_one_block() -> None:
    (loop,) = find_loops("bank_3", SWRN, ABABAB)
    assert loop == Loop(
        bank="bank_3",
        start=0,
        period=2,
        iterations=3,
        body=("A", "B"),
        units=("stage_3.1", "stage_3.2", "stage_3.3"),
        description="stage_3: blocks 1-3 repeat one block (conv1 A, conv2 B) 3 times",
    )
    assert loop.to_dict()["units"] == ["stage_3.1", "stage_3.2", "stage_3.3"]
    assert summarize_loops([loop]) == [f"bank_3: {loop.description}"]


def test_swrn_loop_stops_where_the_weights_change() -> None:
    # A B A B C D: blocks 1 and 2 share their weights, block 3 has its own.
    (loop,) = find_loops("bank_3", SWRN, ((0, 2), (1, 3), (4,), (5,)))
    assert (loop.start, loop.iterations, loop.units) == (0, 2, ("stage_3.1", "stage_3.2"))
    assert loop.description == "stage_3: blocks 1-2 repeat one block (conv1 A, conv2 B) 2 times"


def test_swrn_loop_may_start_after_the_first_block() -> None:
    # A B C B C B: blocks 2 and 3 repeat; the loop starts at layer 2.
    (loop,) = find_loops("bank_3", SWRN, ((0,), (1, 3, 5), (2, 4)))
    assert (loop.start, loop.body, loop.iterations) == (2, ("C", "B"), 2)
    assert loop.description.startswith("stage_3: blocks 2-3 ")


def test_swrn_blocks_are_units_even_when_one_layer_repeats() -> None:
    # All six layers alike is one block repeated (conv1 A, conv2 A), not six layers.
    (loop,) = find_loops("bank_3", SWRN, ((0, 1, 2, 3, 4, 5),))
    assert (loop.period, loop.iterations, loop.body) == (2, 3, ("A", "A"))


def test_flat_network_repeating_one_layer() -> None:
    (loop,) = find_loops("bank", FLAT3, ((0, 1, 2),))
    assert (loop.start, loop.period, loop.iterations, loop.body) == (0, 1, 3, ("A",))
    assert loop.units == tuple(FLAT3)
    assert loop.description == "conv2-conv4 repeat one layer (A) 3 times"


def test_flat_network_repeating_a_pattern() -> None:
    (loop,) = find_loops("bank", FLAT6, ABABAB)
    assert (loop.period, loop.iterations, loop.body) == (2, 3, ("A", "B"))
    assert loop.description == "conv2-conv7 repeat 2 layers (A B) 3 times"


def test_flat_network_greedy_prefers_the_widest_cover_then_the_shorter_period() -> None:
    # A A B A A B C C: period 3 covers 6 layers (beats A A), then C C is a loop of its own.
    loops = find_loops("bank", [f"c{i}" for i in range(8)], ((0, 1, 3, 4), (2, 5), (6, 7)))
    assert [(lp.start, lp.period, lp.iterations) for lp in loops] == [(0, 3, 2), (6, 1, 2)]
    # A A A A is one layer four times, not two layers twice.
    (loop,) = find_loops("bank", FLAT6[:4], ((0, 1, 2, 3),))
    assert (loop.period, loop.iterations) == (1, 4)


@pytest.mark.parametrize("names", [SWRN, FLAT6])
def test_no_loop_when_every_layer_differs(names: list[str]) -> None:
    assert find_loops("bank", names, tuple((i,) for i in range(6))) == ()
    assert summarize_loops(()) == []


def test_no_layers_no_loops() -> None:
    assert find_loops("bank", [], ()) == ()


def test_clusters_must_partition_the_layers() -> None:
    with pytest.raises(ValueError):
        find_loops("bank", FLAT3, ((0, 1),))


def test_graph_of_an_ababab_bank_is_a_two_cycle() -> None:
    graph = recurrence_graph([("bank_3", SWRN, ABABAB)])
    assert sorted(graph.nodes) == ["bank_3:A", "bank_3:B"]
    assert graph.nodes["bank_3:A"] == {
        "bank": "bank_3",
        "letter": "A",
        "layers": "stage_3.1.conv1,stage_3.2.conv1,stage_3.3.conv1",
        "size": 3,
    }
    assert graph.edges["bank_3:A", "bank_3:B"]["count"] == 3
    assert graph.edges["bank_3:B", "bank_3:A"]["count"] == 2
    assert graph.number_of_edges() == 2
    assert graph.graph["loops"] == 1
    assert graph.graph["summary"] == (
        "bank_3: stage_3: blocks 1-3 repeat one block (conv1 A, conv2 B) 3 times"
    )


def test_graph_self_loop_counts_consecutive_layers_of_one_cluster() -> None:
    graph = recurrence_graph([("bank", FLAT3, ((0, 1, 2),))])
    assert list(graph.edges(data="count")) == [("bank:A", "bank:A", 2)]


def test_graph_over_several_banks_links_them_in_order() -> None:
    banks = [("bank_1", FLAT3, ((0, 1, 2),)), ("bank_2", FLAT6, ABABAB)]
    graph = recurrence_graph(banks)
    assert graph.number_of_nodes() == 3
    assert graph.edges["bank_1:A", "bank_2:A"]["count"] == 1
    assert sum(c for _, _, c in graph.edges(data="count")) == 3 + 6 - 1  # transitions
    assert graph.graph["loops"] == 2
    # An explicit order interleaving the banks changes the edges, not the nodes.
    order = [("bank_2", i) for i in range(6)] + [("bank_1", i) for i in range(3)]
    reordered = recurrence_graph(banks, order=order)
    assert reordered.has_edge("bank_2:B", "bank_1:A")
    assert not reordered.has_edge("bank_1:A", "bank_2:A")


@pytest.mark.parametrize(
    "order",
    [[("bank", 0), ("bank", 1)], [("bank", 0), ("bank", 1), ("bank", 1)], [("other", 0)]],
)
def test_graph_order_must_list_every_layer_once(order: list[tuple[str, int]]) -> None:
    with pytest.raises(ValueError):
        recurrence_graph([("bank", FLAT3, ((0, 1, 2),))], order=order)


def example_graph() -> nx.DiGraph:
    return recurrence_graph([("bank_1", FLAT3, ((0, 1, 2),)), ("bank_3", SWRN, ABABAB)])


@pytest.mark.parametrize("suffix", GRAPH_FORMATS)
def test_export_and_load_round_trip(tmp_path: Path, suffix: str) -> None:
    graph = example_graph()
    path = tmp_path / f"graph{suffix}"
    export_graph(graph, path)
    loaded = load_graph(path)
    assert isinstance(loaded, nx.DiGraph)
    assert dict(loaded.nodes(data=True)) == dict(graph.nodes(data=True))
    assert sorted(loaded.edges(data=True)) == sorted(graph.edges(data=True))
    if suffix != ".gexf":  # networkx's GEXF writer keeps no graph attributes
        assert loaded.graph == graph.graph
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_dot_round_trip_keeps_types_and_awkward_text(tmp_path: Path) -> None:
    graph = nx.DiGraph(note='say "hi"\\n\nnext; [x]=y', ratio=1e-5, big=1e300)
    graph.add_node("a node", weight=-3, name="graph")
    graph.add_edge("a node", "graph", count=2)  # a node named like the keyword
    export_graph(graph, tmp_path / "g.dot")
    loaded = load_graph(tmp_path / "g.dot")
    assert loaded.graph == graph.graph
    assert type(loaded.graph["big"]) is float
    assert dict(loaded.nodes(data=True)) == dict(graph.nodes(data=True))
    assert list(loaded.edges(data=True)) == [("a node", "graph", {"count": 2})]


def test_unknown_extension_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.graphml, \.gexf, \.json, \.dot"):
        export_graph(example_graph(), tmp_path / "graph.png")
    with pytest.raises(InputError, match="no extension"):
        load_graph(tmp_path / "graph")
    assert list(tmp_path.iterdir()) == []


def test_failing_write_leaves_no_file(tmp_path: Path) -> None:
    graph = example_graph()
    graph.graph["bad"] = [1, 2]  # GraphML and DOT hold scalars only
    for suffix in (".graphml", ".dot"):
        with pytest.raises((nx.NetworkXError, ValueError)):
            export_graph(graph, tmp_path / f"graph{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_failing_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "graph.json"
    export_graph(example_graph(), path)
    before = path.read_bytes()
    bad = example_graph()
    bad.graph["bad"] = object()
    with pytest.raises(TypeError):
        export_graph(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["graph.json"]


def test_unwritable_target_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot write"):
        export_graph(example_graph(), tmp_path / "missing" / "graph.json")


@pytest.mark.parametrize("suffix", GRAPH_FORMATS)
def test_loading_a_broken_file_is_an_input_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"graph{suffix}"
    path.write_text("this is not a graph {\n")
    with pytest.raises(InputError, match="not a readable"):
        load_graph(path)
    with pytest.raises(InputError, match="cannot read"):
        load_graph(tmp_path / f"missing{suffix}")


def test_dot_reads_back_cleanly_with_networkx_and_pydot(tmp_path: Path) -> None:
    pytest.importorskip("pydot")
    graph = nx.DiGraph(loops=2, summary="bank_1: blocks 1-3")
    graph.add_node("bank_1:A", bank="bank_1", size=3)
    graph.add_node("bank_1:B", bank="bank_1", size=3)
    graph.add_edge("bank_1:A", "bank_1:B", count=3)
    export_graph(graph, tmp_path / "g.dot")
    loaded = nx.nx_pydot.read_dot(tmp_path / "g.dot")  # networkx's reader, through pydot
    assert set(loaded.nodes) == {"bank_1:A", "bank_1:B"}
    # keys and identifier-like values come back as written; other text keeps DOT's quotes
    assert loaded.nodes["bank_1:A"] == {"bank": "bank_1", "size": "3"}  # identifiers come back bare
    assert [(u, v, dict(d)) for u, v, d in loaded.edges(data=True)] == [
        ("bank_1:A", "bank_1:B", {"count": "3"})
    ]
    assert loaded.graph["graph"] == {"loops": "2", "summary": '"bank_1: blocks 1-3"'}


@pytest.mark.parametrize(
    "body",
    [
        '  loops=3 extra;\n',  # a graph-attribute statement with trailing junk
        '  =3;\n',  # no key
        '  "a" [x=];\n',  # no value
        '  "a [x=1];\n',  # an unterminated quote
        '  loops="x;\n',  # an unterminated quoted value
    ],
)
def test_malformed_dot_statements_are_one_input_error(tmp_path: Path, body: str) -> None:
    path = tmp_path / "bad.dot"
    path.write_text("digraph recurrence {\n" + body + "}\n", encoding="utf-8")
    with pytest.raises(InputError, match="not a readable dot graph"):
        load_graph(path)


def test_dot_graph_attributes_keep_markup_and_control_characters_as_data(tmp_path: Path) -> None:
    hostile = "[bold]x[/bold] \x1b]0;title\x07 $x$ \u202e"
    graph = nx.DiGraph(summary=hostile, plain="bank_1")
    graph.add_node("a", layers=hostile)
    export_graph(graph, tmp_path / "g.dot")
    loaded = load_graph(tmp_path / "g.dot")
    assert loaded.graph == {"summary": hostile, "plain": "bank_1"}
    assert loaded.nodes["a"]["layers"] == hostile
