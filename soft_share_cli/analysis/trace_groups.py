"""Groups of traced calls that share parameters (:mod:`soft_share_cli.analysis.trace`): what a
fold of a network found by ``--model`` can merge, and readable names for the calls."""

from __future__ import annotations

from dataclasses import dataclass

from soft_share_cli.analysis.trace import Trace

HARD_TIE = "hard-tie"  # calls whose weight is one stored parameter
SOFT = "soft"  # calls whose weights are computed from parameters they share (a bank, a store)
BASIS = "basis"  # per-layer convs fed by the calls of one hard-tied basis conv


@dataclass(frozen=True)
class SharedGroup:
    """Calls that share parameters, all with one weight shape: what a fold can merge."""

    name: str
    kind: str  # HARD_TIE, SOFT or BASIS
    shared: tuple[str, ...]  # the parameters the calls share (BASIS: the basis conv's weight)
    calls: tuple[int, ...]  # call indices, in forward order
    weight_shape: tuple[int, ...]

    @property
    def rule(self) -> str:
        """How the trace found the group, for the report."""
        what = ", ".join(self.shared)
        if self.kind == HARD_TIE:
            return f"traced: one weight ({what}) used by {len(self.calls)} calls"
        if self.kind == BASIS:
            return f"traced: per-layer convs fed by the shared basis conv {what}"
        return f"traced: weights computed from the shared {what}"


def call_names(trace: Trace) -> list[str]:
    """A readable, unique name per call: its layer module's path; ``path[n]`` for the n-th use of
    a module used several times; ``module:op#index`` for a call no module stands for."""
    counts = trace.layer_calls()
    seen: dict[str, int] = {}
    names = []
    for call in trace.calls:
        if call.layer is None:
            names.append(f"{call.module or '<network>'}:{call.op}#{call.index}")
        elif counts[call.layer] == 1:
            names.append(call.layer)
        else:
            n = seen.get(call.layer, 0)
            seen[call.layer] = n + 1
            names.append(f"{call.layer}[{n}]")
    return names


def shared_groups(trace: Trace) -> list[SharedGroup]:
    """Groups of calls that share stored parameters (or one basis conv), split by weight shape.

    Calls are joined when their weights are computed from (or are) a common parameter; a group
    holds calls of one weight shape only (weights of different shapes cannot merge). A hard-tied
    basis conv followed by per-layer convs of one shape (directly, or through elementwise ops or a
    BatchNorm) makes those convs a BASIS group. Input-dependent weights are never grouped.
    """
    calls = [c for c in trace.calls if not c.dynamic]
    parent = {c.index: c.index for c in calls}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    shape = {c.index: c.weight_shape for c in calls}
    users: dict[str, list[int]] = {}
    for c in calls:
        for key in c.sources:
            users.setdefault(key, []).append(c.index)
    for members in users.values():
        first_of_shape: dict[tuple[int, ...], int] = {}  # a store may feed several shapes
        for i in members:
            first = first_of_shape.setdefault(shape[i], i)
            parent[root(i)] = root(first)
    components: dict[int, list[int]] = {}
    for c in calls:
        components.setdefault(root(c.index), []).append(c.index)
    by_index = {c.index: c for c in calls}
    groups: list[SharedGroup] = []
    grouped: set[int] = set()
    for members in components.values():
        if len(members) < 2:
            continue
        keys = [k for k, u in users.items() if len(set(u) & set(members)) >= 2]
        direct = {by_index[i].direct for i in members}
        kind = HARD_TIE if len(direct) == 1 and None not in direct else SOFT
        groups.append(SharedGroup("", kind, tuple(keys), tuple(members), shape[members[0]]))
        grouped.update(members)
    for tie in [g for g in groups if g.kind == HARD_TIE]:
        fed: dict[tuple[int, ...], list[int]] = {}
        for c in calls:
            if (
                c.index not in grouped
                and c.direct is not None
                and c.inputs_from
                and set(c.inputs_from) <= set(tie.calls)
            ):
                fed.setdefault(c.weight_shape, []).append(c.index)
        for weight_shape, members in fed.items():
            if len(members) >= 2:
                groups.append(SharedGroup("", BASIS, tie.shared, tuple(members), weight_shape))
                grouped.update(members)
    groups.sort(key=lambda g: g.calls[0])
    named: list[SharedGroup] = []
    for i, group in enumerate(groups):
        named.append(_named(group, i, {g.name for g in named}))
    return named


def _named(group: SharedGroup, i: int, taken: set[str]) -> SharedGroup:
    """``group`` named by its first shared parameter (less a ``.templates`` suffix, as the
    state-dict analysis names the authors' banks; ``@basis`` for a BASIS group); a name
    already taken (one store feeding weights of two shapes) gets the weight shape too."""
    base = group.shared[0] if group.shared else f"group_{i}"
    base = base.removesuffix(".templates") or base  # the authors' bank_1.templates: bank_1
    name = f"{base}@{group.kind}" if group.kind == BASIS else base
    if name in taken:
        name = f"{name}@{'x'.join(map(str, group.weight_shape))}"
    while name in taken:
        name += "'"
    return SharedGroup(name, group.kind, group.shared, group.calls, group.weight_shape)
