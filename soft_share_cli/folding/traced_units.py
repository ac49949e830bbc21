"""Which calls of a traced fold fold together (:mod:`soft_share_cli.folding.traced`).

Calls joined by shared parameters form a *unit*: it folds (to its clusters' weights) or stays
as it is as one. A call in no folded group whose computed weight shares a parameter with the
folded calls (a linear layer cutting its weight from the same flat store) is a *satellite*:
replaced by its own fixed weight, so that the parameter can go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from soft_share_cli.analysis.trace import Call, Trace
    from soft_share_cli.analysis.traced import TracedAnalysis


@dataclass
class Unit:
    """Calls joined by shared parameters: they fold, or stay as they are, together."""

    groups: list[int] = field(default_factory=list)  # indices into analysis.groups
    satellites: list[int] = field(default_factory=list)  # calls folded to their own weight
    calls: set[int] = field(default_factory=set)
    freeable: set[str] = field(default_factory=set)
    cost: int = 0


def find_satellites(trace: Trace, taken: set[int]) -> list[int]:
    """Calls in no folded group whose computed weight shares a parameter with the folded calls
    (closed under sharing): replaced by their own fixed weight, so the parameter can go."""
    by_layer: dict[str, list[Call]] = {}
    for call in trace.calls:
        if call.layer is not None:
            by_layer.setdefault(call.layer, []).append(call)
    keys = {k for i in taken for k in trace.calls[i].sources}
    out: list[int] = []
    grown = True
    while grown:
        grown = False
        for call in trace.calls:
            if (
                call.index in taken
                or call.dynamic
                or call.direct is not None
                or call.layer is None
                or call.bias == ""
                or not set(call.sources) & keys
            ):
                continue
            uses = by_layer[call.layer]
            if not all(torch.equal(u.weight, call.weight) for u in uses):
                continue  # one module computing different weights: no fixed weight stands for it
            taken.update(u.index for u in uses)
            out.append(uses[0].index)
            keys.update(k for u in uses for k in u.sources)
            grown = True
    return out


def find_units(
    analysis: TracedAnalysis, candidates: list[int], satellites: list[int]
) -> list[Unit]:
    trace = analysis.trace
    calls = {i for g in candidates for i in analysis.groups[g].calls}
    by_layer: dict[str, list[int]] = {}
    for call in trace.calls:
        if call.layer is not None:
            by_layer.setdefault(call.layer, []).append(call.index)
    for s in satellites:
        calls.update(by_layer[trace.calls[s].layer])  # type: ignore[index]
    parent = {i: i for i in calls}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    uses = trace.uses()
    for users in uses.values():
        inside = [i for i in users if i in calls]
        for i in inside[1:]:
            parent[root(i)] = root(inside[0])
    for g in candidates:
        members = analysis.groups[g].calls
        for i in members[1:]:
            parent[root(i)] = root(members[0])
    units: dict[int, Unit] = {}
    for g in candidates:
        unit = units.setdefault(root(analysis.groups[g].calls[0]), Unit())
        unit.groups.append(g)
        unit.cost += analysis.results[g].fold.parameters
    for s in satellites:
        unit = units.setdefault(root(s), Unit())
        unit.satellites.append(s)
        unit.cost += trace.calls[s].weight_numel
    biases = {c.bias for c in trace.calls if c.bias}
    for i in calls:
        units[root(i)].calls.add(i)
    for unit in units.values():
        keys = {k for i in unit.calls for k in trace.calls[i].sources}
        unit.freeable = {k for k in keys if set(uses[k]) <= unit.calls and k not in biases}
    return list(units.values())
