"""Recurrence graphs as files: GraphML, GEXF, node-link JSON and DOT, written and read back.

The graph itself is built by :func:`soft_share_cli.analysis.loops.recurrence_graph`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soft_share_cli.errors import InputError

if TYPE_CHECKING:
    import networkx as nx

GRAPH_FORMATS = (".graphml", ".gexf", ".json", ".dot")


def graph_format(path: str | Path) -> str:
    """The graph format ``path``'s extension names; InputError otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in GRAPH_FORMATS:
        raise InputError(
            f"{path}: unknown graph format {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(GRAPH_FORMATS)}"
        )
    return suffix


def _dot_value(value: Any) -> str:
    # Numbers unquoted, text quoted: the reader uses that to give back ints, floats and strings.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"DOT export supports int, float and str attributes, not {value!r}")
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"DOT has no numeral for {value}")
    # DOT numerals have no exponent; the point marks a float for the reader.
    text = format(Decimal(repr(value)), "f")
    return text if "." in text else text + ".0"


_DOT_KEYWORDS = {"node", "edge", "graph", "digraph", "subgraph", "strict"}


def _dot_key(key: str) -> str:
    # A plain identifier stays bare, so that pydot and networkx read the key back as written.
    bare = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) and key.lower() not in _DOT_KEYWORDS
    return key if bare else _dot_value(key)


def _dot_attr_value(value: Any) -> str:
    # Identifier-like text bare too, so that pydot and networkx read it back without quotes.
    if isinstance(value, str) and _dot_key(value) == value:
        return value
    return _dot_value(value)


def _dot_attrs(data: dict[str, Any]) -> str:
    return ", ".join(f"{_dot_key(str(k))}={_dot_attr_value(v)}" for k, v in data.items())


def _write_dot(graph: nx.DiGraph, path: Path) -> None:
    lines = ["digraph recurrence {"]
    for key, value in graph.graph.items():  # ``key=value;`` statements: graph attributes
        lines.append(f"  {_dot_key(str(key))}={_dot_attr_value(value)};")
    for node, data in graph.nodes(data=True):
        lines.append(f"  {_dot_value(str(node))} [{_dot_attrs(data)}];")
    for u, v, data in graph.edges(data=True):
        lines.append(f"  {_dot_value(str(u))} -> {_dot_value(str(v))} [{_dot_attrs(data)}];")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# One statement a line, as _write_dot writes: ``key=value;`` (a graph attribute), ``graph [..];``
# (older files), ``"a" [..];``, ``"a" -> "b" [..];``
_ID = r'"(?:[^"\\]|\\.)*"|[^\s"\[\]=,;]+'
_DOT_LINE = re.compile(rf"\s*({_ID})(?:\s*->\s*({_ID}))?\s*(?:\[(.*)\])?\s*;?\s*")
_DOT_GRAPH_ATTR = re.compile(rf"\s*({_ID})\s*=\s*({_ID})\s*;?\s*")
_DOT_ATTR = re.compile(rf"\s*({_ID})\s*=\s*({_ID})\s*(?:,|$)")
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


def _dot_parse(token: str) -> Any:
    if token.startswith('"'):
        return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), token[1:-1])
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+)", token):
        return float(token)
    return token


def _read_dot(path: Path) -> nx.DiGraph:
    import networkx as nx

    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines or not re.fullmatch(r"digraph\b.*\{", lines[0]) or lines[-1] != "}":
        raise ValueError("not a digraph written by ssc")
    graph = nx.DiGraph()
    for number, line in enumerate(lines[1:-1], start=2):
        statement = _DOT_GRAPH_ATTR.fullmatch(line)
        if statement:
            graph.graph[str(_dot_parse(statement.group(1)))] = _dot_parse(statement.group(2))
            continue
        match = _DOT_LINE.fullmatch(line)
        attrs = match.group(3) if match else None
        pairs = _DOT_ATTR.findall(attrs) if attrs else []
        # findall skips what it cannot read, so anything left over means a malformed list.
        if not match or (attrs and _DOT_ATTR.sub("", attrs).strip()):
            raise ValueError(f"line {number}: cannot parse {line!r}")
        data = {str(_dot_parse(k)): _dot_parse(v) for k, v in pairs}
        first, second = match.group(1), match.group(2)
        if second is not None:
            graph.add_edge(str(_dot_parse(first)), str(_dot_parse(second)), **data)
        elif first == "graph":
            graph.graph.update(data)
        else:
            graph.add_node(str(_dot_parse(first)), **data)
    return graph


def _node_link_data(graph: nx.DiGraph) -> dict[str, Any]:
    import networkx as nx

    # networkx >= 3.4 names the key with ``edges=``; older releases only know ``link=``.
    try:
        data: dict[str, Any] = nx.node_link_data(graph, edges="edges")
    except TypeError:
        data = nx.node_link_data(graph, link="edges")
    return data


def _node_link_graph(data: dict[str, Any]) -> nx.DiGraph:
    import networkx as nx

    try:
        return nx.node_link_graph(data, directed=True, multigraph=False, edges="edges")
    except TypeError:
        return nx.node_link_graph(data, directed=True, multigraph=False, link="edges")


def _write_json(graph: nx.DiGraph, path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(_node_link_data(graph), fh, indent=2)
        fh.write("\n")


def _write_graphml(graph: nx.DiGraph, path: Path) -> None:
    import networkx as nx

    nx.write_graphml(graph, path)


def _write_gexf(graph: nx.DiGraph, path: Path) -> None:
    import networkx as nx

    nx.write_gexf(graph, path)


_WRITERS: dict[str, Callable[[nx.DiGraph, Path], None]] = {
    ".graphml": _write_graphml,
    ".gexf": _write_gexf,
    ".json": _write_json,
    ".dot": _write_dot,
}


def export_graph(graph: nx.DiGraph, path: str | Path) -> None:
    """Write ``graph`` to ``path`` in the format its extension names, all at once.

    ``.graphml`` and ``.gexf`` (for Gephi, yEd, Cytoscape), ``.json`` (networkx node-link data,
    edges under ``"edges"``) or ``.dot`` (Graphviz; written here, so no pydot or pygraphviz is
    needed). GEXF keeps node and edge attributes but not the graph's (networkx writes none).
    Raises :class:`InputError` for another extension or an unwritable path; a failed write
    leaves no file behind.
    """
    from soft_share_cli.files import atomic_write

    target = Path(path)
    writer = _WRITERS[graph_format(target)]
    atomic_write(target, lambda tmp: writer(graph, tmp))


def load_graph(path: str | Path) -> nx.DiGraph:
    """Read a graph written by :func:`export_graph` (format from the extension).

    Reader-added bookkeeping (GEXF labels and edge ids, default-attribute dicts) is dropped, so
    a graph reads back with the attributes it was written with. Raises :class:`InputError` for
    an unknown extension or a file that cannot be read or parsed.
    """
    import networkx as nx

    from soft_share_cli.files import require_regular_file

    source = Path(path)
    fmt = graph_format(source)
    if source.is_symlink() or source.exists():  # (a missing file: "cannot read" below)
        require_regular_file(source, "graph file")  # a FIFO or /dev/zero would block or not end
    try:
        if fmt == ".graphml":
            graph = nx.DiGraph(nx.read_graphml(source))
        elif fmt == ".gexf":
            graph = nx.DiGraph(nx.read_gexf(source))
        elif fmt == ".json":
            graph = _node_link_graph(json.loads(source.read_text(encoding="utf-8")))
        else:
            graph = _read_dot(source)
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from exc
    except (ValueError, SyntaxError, KeyError, TypeError, nx.NetworkXError) as exc:
        # JSONDecodeError is a ValueError, ElementTree's ParseError a SyntaxError; KeyError and
        # TypeError come from JSON that is valid but not node-link data.
        raise InputError(f"{source}: not a readable {fmt[1:]} graph ({exc})") from exc
    # Drop what the readers add, so that a graph reads back as it was written.
    for key in ("node_default", "edge_default"):
        graph.graph.pop(key, None)
    if fmt == ".gexf":
        graph.graph.pop("mode", None)
        for node, data in graph.nodes(data=True):
            if data.get("label") == str(node):
                del data["label"]
        for _, _, data in graph.edges(data=True):
            data.pop("id", None)
    return graph
