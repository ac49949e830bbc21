"""The analysis of a network found by running it (``--model``): every shared group a bank.

:func:`~soft_share_cli.analysis.trace.trace_network` records every conv/linear call and the
parameters its weight is computed from;
:func:`~soft_share_cli.analysis.trace_groups.shared_groups` joins the calls that share
parameters. Each group becomes a :class:`~soft_share_cli.analysis.banks.Bank` (one
:class:`~soft_share_cli.analysis.banks.Layer` per *call*), analysed as the state-dict path
analyses its banks (similarity, clusters, loops, fold plan):

* **a true bank**: every call's weight is ``tensordot(c_i, P, 1)`` for one shared tensor ``P``
  shaped ``(K, *weight)`` and a per-call tensor ``c_i`` of K numbers (checked on the traced
  weight to a relative 1e-6). The bank is ``P`` with coefficients ``c_i``: both metrics work, as
  for an authors-style checkpoint.
* **anything else** (a flat store cut into windows, ``W_i = M_i @ B`` computed inside one call,
  weights of any other computation; the per-layer convs of a BASIS group): the templates are the
  calls' generated weights, stacked (distinct ones: the calls of one reused module share a row),
  and each layer's coefficients one-hot. Its similarity is then the **weight** metric (the Gram
  matrix of the stacked weights gives the generated weights' cosine); a ``--metric coefficients``
  request falls back to it, with an issue saying so. Where ``W_i = M_i @ B`` is computed inside
  one call, the traced weight *is* ``W_i``, so this is the cosine in the basis' Gram metric; for
  a BASIS group (a hard-tied basis conv feeding per-layer 1×1 convs ``M_i``) it is the plain
  cosine of the ``M_i``, the criterion for folding proportional ``M_i`` exactly.
* **a hard tie** (one weight parameter used by several calls): K = 1, similarity 1, a loop.

For every kind the folded weight of cluster ``c`` is ``tensordot(plan.directions[c],
bank.templates, 1)`` and layer ``j``'s scale ``plan.layers[j].scale`` (every scale an explicit
gain: the network is not ssc's own).

Counts: ``checkpoint_unique`` by storage (as ``ssc info``); ``unshared_equivalent`` gives every
conv/linear call a weight (and bias) of its own — a hard-tied weight once per use — beside the
parameters no call's weight uses; ``folded`` replaces what each group's calls alone use
(:attr:`TracedAnalysis.consumed`) by what its plan stores, or keeps it where that is smaller: an
estimate (``ssc analyze --model`` and ``ssc fold --model`` report the fold's own figure, which
also drops or keeps the parameters the fold engine can or cannot free).
Input-dependent weights (hypernetworks) are never grouped and are reported as issues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from soft_share_cli.analysis.analyze import AnalysisOptions, BankAnalysis, _cluster, _tied_as_one
from soft_share_cli.analysis.banks import Bank, BankIssue, Layer
from soft_share_cli.analysis.defaults import Metric
from soft_share_cli.analysis.loops import find_loops, recurrence_graph
from soft_share_cli.analysis.plan import ParameterCounts, plan_bank
from soft_share_cli.analysis.similarity import bank_similarity, gram_matrix
from soft_share_cli.analysis.trace import Call, Trace, trace_network
from soft_share_cli.analysis.trace_groups import HARD_TIE, SharedGroup, call_names, shared_groups
from soft_share_cli.errors import InputError
from soft_share_cli.limits import MAX_LAYERS_PER_BANK, limit_error
from soft_share_cli.models.params import count_state_dict_parameters

if TYPE_CHECKING:
    import networkx as nx

#: A call's weight is a bank's mix when ||tensordot(c, P, 1) - W|| <= this * ||W||.
BANK_TOLERANCE = 1e-6


@dataclass(frozen=True)
class TracedAnalysis:
    """Everything the trace of one network found: its shared groups, analysed as banks."""

    trace: Trace
    groups: tuple[SharedGroup, ...]
    # One per group, same order: results[i].bank.name == groups[i].name, and
    # results[i].bank.layers[j] is the call groups[i].calls[j] (the calls of one reused module
    # tied: Layer.tied_to = the first call of that module).
    results: tuple[BankAnalysis, ...]
    issues: tuple[BankIssue, ...]  # metric fallbacks, input-dependent weights
    counts: ParameterCounts
    graph: nx.DiGraph | None
    # Per group: the numbers the checkpoint stores that only the group's calls use (its bank,
    # store or basis convs). ``counts.folded`` takes min(plan.parameters, consumed) per group.
    consumed: tuple[int, ...] = ()


def analyze_traced(
    model: nn.Module, probe: Tensor, options: AnalysisOptions, *, with_graph: bool = True
) -> TracedAnalysis:
    """Trace ``model`` on ``probe`` and analyse every group of calls that share parameters.

    Raises :class:`~soft_share_cli.errors.InputError` (one line) where the network fails on the
    probe. A network with no shared group gives empty ``groups`` and ``results``.
    """
    trace = trace_network(model, probe)
    groups = tuple(shared_groups(trace))
    names = call_names(trace)
    params = dict(model.named_parameters(remove_duplicate=False))
    metric = Metric(options.metric)
    issues: list[BankIssue] = []
    results = []
    for group in groups:
        if len(group.calls) > MAX_LAYERS_PER_BANK:  # similarity and clustering are quadratic
            raise limit_error(f"group {group.name}", f"{len(group.calls)} calls",
                              MAX_LAYERS_PER_BANK, "MAX_LAYERS_PER_BANK")  # fmt: skip
        bank, true_bank = group_bank(group, trace, names, params)
        used = metric
        if not true_bank and metric is Metric.COEFFICIENTS:
            used = Metric.WEIGHT
            issues.append(
                BankIssue(
                    "metric-fallback",
                    group.name,
                    f"{group.name}: the calls' weights are not a bank mixed by per-layer "
                    "coefficient vectors; they are compared by the weight metric",
                )
            )
        results.append(_analyze_bank(bank, used, options))
    for call in trace.calls:
        if call.dynamic:
            issues.append(
                BankIssue(
                    "dynamic-weight",
                    names[call.index],
                    f"{names[call.index]}: its weight depends on the input (a hypernetwork?); "
                    "it is never shared",
                )
            )
    grouped = {i for group in groups for i in group.calls}
    dynamic = {call.index for call in trace.calls if call.dynamic}  # never shared: apart
    users = trace.uses()
    for call in trace.calls:
        others = {i for key in call.sources for i in users[key]} - {call.index} - dynamic
        if call.index not in grouped and not call.dynamic and others:
            issues.append(
                BankIssue(
                    "alone-in-its-shape",
                    names[call.index],
                    f"{names[call.index]}: shares parameters with other calls but no other call "
                    f"has its weight shape {'×'.join(map(str, call.weight_shape))}; it is left "
                    "out (weights of different shapes cannot merge)",
                )
            )
    consumed = tuple(consumed_parameters(trace, group) for group in groups)
    counts = traced_counts(model, trace, [r.fold.parameters for r in results], consumed)
    graph = None
    if with_graph:
        graph = recurrence_graph(
            [(r.bank.name, [la.name for la in r.bank.layers], r.clusters) for r in results],
            sorted(
                ((g.name, j) for g in groups for j in range(len(g.calls))),
                key=lambda item: _call_of(groups, item),
            ),
        )
    return TracedAnalysis(trace, groups, tuple(results), tuple(issues), counts, graph, consumed)


def _call_of(groups: tuple[SharedGroup, ...], item: tuple[str, int]) -> int:
    group = next(g for g in groups if g.name == item[0])
    return group.calls[item[1]]


def _analyze_bank(bank: Bank, metric: Metric, options: AnalysisOptions) -> BankAnalysis:
    similarity = _tied_as_one(bank, bank_similarity(bank, metric, options.signed))
    magnitude = abs(similarity.matrix) if options.signed else similarity.matrix
    clusters = _cluster(bank, magnitude, options)
    gram = gram_matrix(bank.templates) if metric is Metric.WEIGHT else None
    fold = plan_bank(bank, clusters, gram=gram, state_dict=None)
    loops = find_loops(bank.name, [layer.name for layer in bank.layers], clusters)
    return BankAnalysis(bank, similarity, clusters, loops, fold)


def group_bank(
    group: SharedGroup, trace: Trace, names: list[str], params: dict[str, nn.Parameter]
) -> tuple[Bank, bool]:
    """The bank of ``group``'s calls, and whether its coefficients mean something (a true bank
    with per-call coefficients, or a hard tie's K = 1): else they are one-hot."""
    calls = [trace.calls[i] for i in group.calls]
    if group.kind == HARD_TIE:
        one = np.ones(1, dtype=np.float64)
        key = calls[0].direct or group.shared[0]
        ties = tuple(
            Layer(names[c.index], key, one, j, None if j == 0 else 0) for j, c in enumerate(calls)
        )
        templates = calls[0].weight[None]
        return Bank(group.name, group.shared, templates, ties, group.rule, group.kind), True
    found = _true_bank(group, calls, params)
    if found is not None:
        bank_key, coefficient_keys = found
        templates = params[bank_key].detach().clone()
        first: dict[str, int] = {}
        layers: list[Layer] = []
        for j, (call, key) in enumerate(zip(calls, coefficient_keys, strict=True)):
            tied = first.setdefault(key, j)
            vector = params[key].detach().double().reshape(-1).cpu().numpy().copy()
            layers.append(Layer(names[call.index], key, vector, j, None if tied == j else tied))
        bank = Bank(group.name, (bank_key,), templates, tuple(layers), group.rule, group.kind)
        return bank, True
    rows: list[int] = []  # per call, its row of the stacked weights
    distinct: list[Call] = []
    first_of: dict[str, int] = {}  # reused module -> its first call's layer index
    tied_to: list[int | None] = []
    for j, call in enumerate(calls):
        earlier = first_of.get(call.layer) if call.layer is not None else None
        if earlier is not None and torch.equal(calls[earlier].weight, call.weight):
            rows.append(rows[earlier])
            tied_to.append(earlier)
            continue
        if call.layer is not None:
            first_of.setdefault(call.layer, j)
        rows.append(len(distinct))
        distinct.append(call)
        tied_to.append(None)
    for call in distinct:
        if not bool(torch.isfinite(call.weight).all()):
            raise InputError(
                f"{names[call.index]}: its weight has NaN or infinite values; "
                "its similarity to the other layers is undefined"
            )
    templates = torch.stack([c.weight for c in distinct])
    eye = np.eye(len(distinct), dtype=np.float64)
    stacked = tuple(
        Layer(names[c.index], c.direct or names[c.index], eye[rows[j]].copy(), j, tied_to[j])
        for j, c in enumerate(calls)
    )
    return Bank(group.name, group.shared, templates, stacked, group.rule, group.kind), False


def _true_bank(
    group: SharedGroup, calls: list[Call], params: dict[str, nn.Parameter]
) -> tuple[str, list[str]] | None:
    """``(P's key, each call's coefficient key)`` where every call's weight is
    ``tensordot(c_i, P, 1)`` with one shared ``P`` of shape ``(K, *weight)``, else None."""
    shape = tuple(group.weight_shape)
    banks = [
        k
        for k in group.shared
        if k in params and tuple(params[k].shape[1:]) == shape and params[k].dim() == len(shape) + 1
    ]
    for bank_key in banks:
        bank = params[bank_key].detach().double()
        k = int(bank.shape[0])
        keys = []
        for call in calls:
            others = [s for s in call.sources if s != bank_key]
            if bank_key not in call.sources or len(others) != 1 or others[0] not in params:
                break
            c = params[others[0]].detach().double()
            if c.numel() != k:
                break
            mixed = torch.tensordot(c.reshape(k), bank, 1)
            weight = call.weight.double()
            error = float(torch.linalg.vector_norm(mixed - weight))
            if error > BANK_TOLERANCE * float(torch.linalg.vector_norm(weight)) and error > 0:
                break
            keys.append(others[0])
        else:
            return bank_key, keys
    return None


def _users(trace: Trace) -> dict[str, set[int]]:
    """Parameter key -> every call whose weight is computed from it or whose bias it is."""
    users: dict[str, set[int]] = {}
    for call in trace.calls:
        for key in call.sources if not call.dynamic else ():  # an input-dependent weight: apart
            users.setdefault(key, set()).add(call.index)
        if call.bias:
            users.setdefault(call.bias, set()).add(call.index)
    return users


def consumed_parameters(trace: Trace, group: SharedGroup) -> int:
    """The numbers stored for ``group``'s weights that no call outside it uses: what a fold of
    the group replaces (biases stay as they are)."""
    users = _users(trace)
    members = set(group.calls)
    keys = {k for i in group.calls for k in trace.calls[i].sources}
    biases = {trace.calls[i].bias for i in group.calls}
    return sum(trace.parameters.get(k, 0) for k in keys if users[k] <= members and k not in biases)


def traced_counts(
    model: nn.Module, trace: Trace, planned: list[int], consumed: tuple[int, ...]
) -> ParameterCounts:
    """Counts by storage (:func:`~soft_share_cli.models.params.count_state_dict_parameters`),
    every static call with a weight and bias of its own, and the groups folded as planned."""
    unique = count_state_dict_parameters(model.state_dict(keep_vars=True))
    static = [c for c in trace.calls if not c.dynamic]
    taken = {k for c in static for k in c.sources} | {c.bias for c in static if c.bias}
    rest = unique - sum(trace.parameters.get(k, 0) for k in taken)
    per_call = sum(
        c.weight_numel + (trace.parameters.get(c.bias, 0) if c.bias else 0) for c in static
    )
    folded = unique - sum(consumed) + sum(min(p, c) for p, c in zip(planned, consumed, strict=True))
    return ParameterCounts(unique, rest + per_call, folded)


def describe_trace(trace: Trace) -> dict[str, Any]:
    """What the trace saw, for reports: calls by op, and how many have input-dependent weights."""
    ops: dict[str, int] = {}
    for call in trace.calls:
        ops[call.op] = ops.get(call.op, 0) + 1
    return {
        "calls": len(trace.calls),
        "ops": ops,
        "dynamic": sum(c.dynamic for c in trace.calls),
        "probe_shape": list(trace.probe_shape),
    }
