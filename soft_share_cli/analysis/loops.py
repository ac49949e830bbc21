"""Describe the loops a soft-shared network has learned, and its recurrence graph.

Input per bank: the names of the layers it serves (execution order) and their clusters from
:func:`soft_share_cli.analysis.clustering.cluster_layers`. Each cluster gets a letter (A, B, ...,
Z, AA,
...), assigned in cluster order with the clusters ordered by their first layer, so layer 0 is A.

A *loop* is what folding can turn into a Python ``for`` over one module: consecutive units with
identical weights. A unit is a run of consecutive layers with the same parent module
(``stage_3.1.conv1``, ``stage_3.1.conv2`` -> ``stage_3.1``); when all layers share one parent (a
flat network) each layer is a unit, and periodic patterns such as A B A B A B count as loops too.

The recurrence graph has one node per (bank, cluster), i.e. per weight left after folding, and an
edge for every transition between consecutive layers in execution order, with its ``count``;
:func:`export_graph` writes it as GraphML, GEXF, node-link JSON or DOT, :func:`load_graph` reads
those back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from soft_share_cli.analysis.clustering import Clusters, cluster_labels

if TYPE_CHECKING:  # imported where graphs are built: fold and loop naming do without it
    import networkx as nx

Bank = tuple[str, Sequence[str], Clusters]


@dataclass(frozen=True)
class Loop:
    """A run of consecutive units of one bank that share their weights, iteration by iteration."""

    bank: str
    start: int  # index (within the bank) of the loop's first layer
    period: int  # layers per iteration
    iterations: int  # >= 2, else it would not be a loop
    body: tuple[str, ...]  # cluster letters of one iteration, e.g. ("A", "B")
    # Names of the units the loop covers: one block per iteration ("stage_3.1", ...), or every
    # layer of every iteration in a flat network.
    units: tuple[str, ...]
    description: str  # one line for people, e.g. "stage_3: blocks 1-3 repeat one block (...)"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return {**asdict(self), "body": list(self.body), "units": list(self.units)}


def cluster_letters(n_clusters: int) -> list[str]:
    """Spreadsheet-style letters for ``n_clusters`` clusters: A..Z, then AA, AB, ..."""
    letters = []
    for i in range(n_clusters):
        name, k = "", i + 1
        while k:  # bijective base 26: there is no zero digit, so "Z" + 1 is "AA"
            k, r = divmod(k - 1, 26)
            name = chr(ord("A") + r) + name
        letters.append(name)
    return letters


def layer_letters(clusters: Clusters, n: int) -> list[str]:
    """Letter of each of ``n`` layers; clusters are lettered in the order of their first layer.

    Ordering here (rather than trusting the caller's order) keeps letters identical between the
    loop descriptions and the graph nodes whatever order ``clusters`` comes in.
    """
    cluster_labels(clusters, n)  # validates: a partition of range(n), no empty cluster
    ordered = tuple(sorted(clusters, key=min))
    labels = cluster_labels(ordered, n)
    letters = cluster_letters(len(ordered))
    return [letters[label] for label in labels]


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _units(layer_names: Sequence[str], flat: bool) -> list[tuple[str, list[int]]]:
    """(unit name, layer indices) in order; see the module docstring for what a unit is."""
    if flat:
        return [(name, [i]) for i, name in enumerate(layer_names)]
    parents = [_parent(name) for name in layer_names]
    units: list[tuple[str, list[int]]] = []
    for i, parent in enumerate(parents):
        if units and units[-1][0] == parent:
            units[-1][1].append(i)
        else:
            units.append((parent, [i]))
    return units


def _describe_blocks(units: Sequence[str], roles: Sequence[str], body: Sequence[str]) -> str:
    what = ", ".join(f"{role} {letter}" for role, letter in zip(roles, body, strict=True))
    times = f"repeat one block ({what}) {len(units)} times"
    # "stage_3.1".."stage_3.3" -> "stage_3: blocks 1-3"; other names are quoted as they are.
    match = [re.fullmatch(r"(.+)\.(\d+)", u) for u in units]
    if all(match) and len({m.group(1) for m in match if m}) == 1:
        prefix = match[0].group(1) if match[0] else ""
        idx = [int(m.group(2)) for m in match if m]
        consecutive = idx == list(range(idx[0], idx[0] + len(idx)))
        span = f"{idx[0]}-{idx[-1]}" if consecutive else ", ".join(map(str, idx))
        return f"{prefix}: blocks {span} {times}"
    return f"{units[0]}-{units[-1]} {times}"


def _describe_layers(first: str, last: str, body: Sequence[str], iterations: int) -> str:
    what = "one layer" if len(body) == 1 else f"{len(body)} layers"
    return f"{first}-{last} repeat {what} ({' '.join(body)}) {iterations} times"


def _best_period(labels: Sequence[str], i: int) -> tuple[int, int]:
    """(period, iterations) of the repetition starting at ``i`` that covers the most layers.

    Ties go to the smaller period (A A A A is one layer 4 times, not two layers twice).
    Returns iterations 1 when nothing repeats.
    """
    best = (1, 1)
    for p in range(1, (len(labels) - i) // 2 + 1):
        body = labels[i : i + p]
        r = 1
        while labels[i + r * p : i + (r + 1) * p] == body:
            r += 1
        if r >= 2 and p * r > best[0] * best[1]:
            best = (p, r)
    return best


def find_loops(bank: str, layer_names: Sequence[str], clusters: Clusters) -> tuple[Loop, ...]:
    """The loops of one bank, in execution order; see the module docstring for the rules.

    ``layer_names`` are the bank's layers in execution order, ``clusters`` a partition of their
    indices. Raises ``ValueError`` when ``clusters`` is not a partition of ``range(L)``.
    """
    names = list(layer_names)
    letters = layer_letters(clusters, len(names))
    flat = len({_parent(name) for name in names}) <= 1
    units = _units(names, flat)
    loops: list[Loop] = []
    if flat:
        # Flat network: look for repeating patterns of layers, greedily from the left.
        i = 0
        while i < len(names):
            p, r = _best_period(letters, i)
            if r < 2:
                i += 1
                continue
            covered = names[i : i + p * r]
            body = tuple(letters[i : i + p])
            text = _describe_layers(covered[0], covered[-1], body, r)
            loops.append(Loop(bank, i, p, r, body, tuple(covered), text))
            i += p * r
        return tuple(loops)

    # The layer roles are part of a unit's signature: one module can only be reused in a loop
    # when the same roles hold the same weights (conv1 A, conv2 B, in every iteration).
    signatures = [
        tuple((names[i].rsplit(".", 1)[-1], letters[i]) for i in layers) for _, layers in units
    ]
    u = 0
    while u < len(units):
        end = u + 1
        while end < len(units) and signatures[end] == signatures[u]:
            end += 1
        if end - u >= 2:
            roles = [role for role, _ in signatures[u]]
            body = tuple(letter for _, letter in signatures[u])
            run = tuple(name for name, _ in units[u:end])
            text = _describe_blocks(run, roles, body)
            loops.append(Loop(bank, units[u][1][0], len(body), end - u, body, run, text))
        u = end
    return tuple(loops)


def summarize_loops(loops: Sequence[Loop]) -> list[str]:
    """One line per loop, ``"<bank>: <description>"``; empty when there are none."""
    return [f"{loop.bank}: {loop.description}" for loop in loops]


def recurrence_graph(
    banks: Sequence[Bank], order: Sequence[tuple[str, int]] | None = None
) -> nx.DiGraph:
    """Directed graph of the weights that remain after folding and how execution moves between.

    ``banks`` holds ``(bank name, layer names, clusters)`` per bank. ``order`` is the global
    execution order as ``(bank, layer index)`` pairs covering every layer once; by default the
    banks in the given order, each bank's layers in theirs. Node ``"<bank>:<letter>"`` carries
    ``bank``, ``letter``, ``layers`` (comma-joined names: GraphML and GEXF want scalars) and
    ``size``; edge u -> v carries ``count``, how often a layer of u is directly followed by one of
    v (a self-loop when consecutive layers share a cluster). ``graph.graph`` has ``loops`` (their
    number) and ``summary`` (the loop lines joined by "; "). Raises ``ValueError`` on bad input.
    """
    import networkx as nx

    graph = nx.DiGraph()
    node_of: dict[tuple[str, int], str] = {}
    loops: list[Loop] = []
    for bank, layer_names, clusters in banks:
        if any(b == bank for b, _ in node_of):
            raise ValueError(f"bank {bank!r} is given twice")
        names = list(layer_names)
        letters = layer_letters(clusters, len(names))
        for letter in dict.fromkeys(letters):  # first-seen order: A, B, C, ...
            members = [n for n, x in zip(names, letters, strict=True) if x == letter]
            attrs = {"bank": bank, "letter": letter, "layers": ",".join(members)}
            graph.add_node(f"{bank}:{letter}", **attrs, size=len(members))
        for i, letter in enumerate(letters):
            node_of[(bank, i)] = f"{bank}:{letter}"
        loops.extend(find_loops(bank, names, clusters))

    steps = list(node_of) if order is None else [(str(b), int(i)) for b, i in order]
    unknown = [step for step in steps if step not in node_of]
    if unknown:
        raise ValueError(f"order names layers no bank has: {unknown[:3]}")
    if len(set(steps)) != len(steps) or len(steps) != len(node_of):
        raise ValueError("order must list every (bank, layer index) exactly once")
    for a, b in zip(steps, steps[1:], strict=False):
        u, v = node_of[a], node_of[b]
        count = graph.edges[u, v]["count"] + 1 if graph.has_edge(u, v) else 1
        graph.add_edge(u, v, count=count)

    graph.graph["loops"] = len(loops)
    graph.graph["summary"] = "; ".join(summarize_loops(loops))
    return graph
