"""Fold any network whose sharing the trace found (``ssc fold --model``): one engine for all kinds.

The input is a :class:`~soft_share_cli.analysis.traced.TracedAnalysis`: groups of conv/linear
calls that share parameters (a soft bank under any names, a flat store, ``W_i = M_i · B``, the
per-layer convs of a shared basis), each analysed as a bank with a fold plan. For each folded
group the network gets one :class:`~soft_share_cli.folding.bank.FoldedBank` (registered on the top
module as ``ssc_folded_<name>``, or on the group's first layer where the top module is a
container such as an ``nn.Sequential``: :mod:`~soft_share_cli.folding.traced_holders`) holding
cluster ``c``'s weight ``tensordot(directions[c], templates, 1)`` (summed in float64), or the
templates and directions where that is smaller; every call's *layer module* is replaced,
wherever that module object appears (a reused module stays one module: ties are kept), by a
:class:`TracedLayer` = ``gain * op(x, bank.weight(c)) + bias`` with the call's own geometry
and the original bias Parameter (no gain where the plan needs none).
Hard-tied groups are left as they are: they already are one tensor used in a loop.

Then the parameters only the replaced calls used are dropped: each is removed from the modules
holding it and the probe is run again; where the forward fails or its output changes it is put
back (and stays counted). A call whose weight is computed from a dropped parameter but which is
in no group (a linear layer cutting its weight from the same flat store as the convs) is replaced
too, by its own fixed weight. **A fold never grows**: calls joined by shared parameters fold as one
unit (:mod:`~soft_share_cli.folding.traced_units`), and each unit takes the cheapest of: its
clusters' weights; *directions* (:mod:`~soft_share_cli.folding.traced_directions`: the shared
basis/bank/store kept, each call's own parameter ``P_j`` replaced by ``gain_j · D_c``, where the
weight is linear in it; the only mode for calls made inline); as it is (reported, with why).

What the surgery did is the *program* (:mod:`soft_share_cli.folding.traced_program`): the same
:func:`apply_program` replays it on a fresh ``factory()`` network to load a file.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from soft_share_cli.analysis.plan import Absorb, BankFold
from soft_share_cli.analysis.trace_groups import HARD_TIE, call_names
from soft_share_cli.errors import InputError
from soft_share_cli.folding.bank import FoldedBank
from soft_share_cli.folding.traced_directions import (
    DirectionsPlan,
    build_directions,
    plan_directions,
)
from soft_share_cli.folding.traced_holders import choose_holder, with_holder
from soft_share_cli.folding.traced_program import (
    SHARED_PREFIX,
    LayerSpec,
    apply_program,
    drop_parameter,
    restore_parameter,
    run_probe,
    same_outputs,
)
from soft_share_cli.folding.traced_sharing import with_sharing
from soft_share_cli.folding.traced_units import Unit, find_satellites, find_units

if TYPE_CHECKING:
    from soft_share_cli.analysis.trace import Call, Trace
    from soft_share_cli.analysis.traced import TracedAnalysis


@dataclass(frozen=True)
class TracedFold:
    """A folded copy of the network, its program, the plans of the folded groups and why the
    other groups were kept as they are."""

    network: nn.Module
    program: dict[str, Any]
    plans: dict[str, BankFold]
    kept: tuple[tuple[str, str], ...]
    modes: dict[str, str] = field(default_factory=dict)  # folded group -> weights | directions


def _holders(model: nn.Module, p: nn.Parameter) -> list[tuple[str, nn.Module, str]]:
    """Every (module path, module, attribute) registering ``p``."""
    out = []
    for path, module in model.named_modules(remove_duplicate=False):
        for name, q in module._parameters.items():
            if q is p:
                out.append((path, module, name))
    return out


def _attribute(name: str, taken: set[str]) -> str:
    base = SHARED_PREFIX + re.sub(r"\W", "_", name)
    attr, n = base, 2
    while attr in taken:
        attr, n = f"{base}_{n}", n + 1
    taken.add(attr)
    return attr


def _geometry(call: Call) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in call.geometry}


def _blocked(analysis: TracedAnalysis, names: list[str]) -> dict[int, str]:
    """Groups whose calls cannot be replaced (a call made inline, a computed bias): they fold
    in directions mode or not at all; why."""
    calls, out = analysis.trace.calls, {}
    for g, group in enumerate(analysis.groups):
        for i in group.calls if group.kind != HARD_TIE else ():
            call = calls[i]
            if call.layer is None:
                out.setdefault(g, f"cannot fold {names[i]}: its {call.op} is called inline by the "
                    f"forward of {call.module or 'the network'}, and no module stands for that "
                    "call alone (wrap it in a module of its own); nothing was written")  # fmt: skip
            elif call.bias == "":
                out.setdefault(g, f"cannot fold {names[i]}: its bias is computed, not a stored "
                               "parameter; nothing was written")  # fmt: skip
    return out


def _group_specs(
    analysis: TracedAnalysis, g: int, attr: str, names: list[str]
) -> tuple[FoldedBank, list[LayerSpec]]:
    group, result = analysis.groups[g], analysis.results[g]
    plan, bank, calls = result.fold, result.bank, analysis.trace.calls
    dtype = calls[group.calls[0]].weight.dtype
    templates = torch.as_tensor(bank.templates).detach()
    u = torch.as_tensor(np.asarray(plan.directions), dtype=torch.float64, device=templates.device)
    if plan.stores_weights:  # summed in float64, so exact folds stay exact after rounding
        shared = FoldedBank.holding(
            weights=torch.tensordot(u, templates.double(), dims=1).to(dtype).clone()
        )
    else:
        shared = FoldedBank.holding(templates=templates.to(dtype).clone(), directions=u.to(dtype))
    specs: dict[str, LayerSpec] = {}
    for j, i in enumerate(group.calls):
        call, layer = calls[i], plan.layers[j]
        path = call.layer
        assert path is not None
        if layer.absorb not in (Absorb.GAIN, Absorb.UNIT):
            raise InputError(f"the plan of {group.name} puts {names[i]}'s scale in a BatchNorm")
        gain = float(layer.scale) if layer.absorb is Absorb.GAIN else None
        if path in specs:
            first = specs[path]
            if first.cluster != layer.cluster or (first.gain is None) != (gain is None):
                raise InputError(
                    f"cannot fold {names[i]}: module {path} runs calls that fold differently"
                )
            continue
        gain_of = None
        if gain is not None and layer.tied_to is not None:
            other = calls[group.calls[layer.tied_to]].layer
            if other != path and other in specs and specs[other].gain is not None:
                gain_of = other
        specs[path] = LayerSpec(
            path, call.op, _geometry(call), attr, layer.cluster, gain, gain_of, call.bias
        )
    return shared, list(specs.values())


def _satellite_specs(call: Call, attr: str) -> tuple[FoldedBank, LayerSpec]:
    shared = FoldedBank.holding(weights=call.weight.detach().clone()[None])
    assert call.layer is not None
    return shared, LayerSpec(call.layer, call.op, _geometry(call), attr, 0, None, None, call.bias)


def _build(
    model: nn.Module,
    analysis: TracedAnalysis,
    units: list[Unit],
    probe: Tensor,
    names: list[str],
    directions: list[DirectionsPlan],
) -> tuple[nn.Module, dict[str, Any], dict[int, int]]:
    """Fold ``units`` into a copy of ``model``; the program, and per unit what it really freed."""
    network = copy.deepcopy(model).eval()
    params = dict(network.named_parameters(remove_duplicate=False))
    taken = {name for name, _ in network.named_children()} | set(vars(network))
    banks: dict[str, FoldedBank] = {}
    layers: list[LayerSpec] = []
    records: list[dict[str, Any]] = []
    held: dict[str, str] = {}  # bank -> the module keeping it (top: none; a container: a layer)
    for unit in units:
        for g in unit.groups:
            group = analysis.groups[g]
            attr = _attribute(group.name, taken)
            banks[attr], specs = _group_specs(analysis, g, attr, names)
            layers += specs
            held[attr] = choose_holder(network, (s.path for s in specs), group.name)
            records.append(_bank_record(group.name, group.kind, attr, banks[attr], held[attr]))
        for s in unit.satellites:
            attr = _attribute(names[s], taken)
            banks[attr], spec = _satellite_specs(analysis.trace.calls[s], attr)
            layers.append(spec)
            held[attr] = choose_holder(network, [spec.path], names[s])
            records.append(_bank_record(names[s], "own-weight", attr, banks[attr], held[attr]))
    apply_program(network, banks, layers, holders=held)
    paths: dict[int, list[str]] = {}
    for path, module in network.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    layers = [
        replace(s, also=tuple(p for p in paths[id(network.get_submodule(s.path))] if p != s.path))
        for s in layers
    ]
    computed, kept_sources = build_directions(
        network, directions, analysis, lambda name: _attribute(name, taken)
    )
    _check_calls(network, analysis.trace, layers, probe)
    reference = run_probe(network, probe)
    if reference is None:
        raise InputError("the folded network fails on the probe; nothing was written")
    dropped: list[str] = []
    for unit in units:
        for key in sorted(unit.freeable):
            p = params.get(key)
            holders = _holders(network, p) if p is not None else []
            if not holders:
                continue  # it went with the modules that were replaced
            owners = list({(id(m), n): (m, n) for _, m, n in holders}.values())
            for module, name in owners:
                drop_parameter(module, name)
            if same_outputs(run_probe(network, probe), reference):
                dropped += [f"{path}.{name}" if path else name for path, _, name in holders]
            else:
                for module, name in owners:
                    restore_parameter(module, name, p)
    present = {id(p) for p in network.parameters()}
    freed = {
        n: sum(
            analysis.trace.parameters.get(k, 0)
            for k in unit.freeable
            if k in params and id(params[k]) not in present
        )
        for n, unit in enumerate(units)
    }
    program = {
        "banks": records,
        "layers": [spec.to_dict() for spec in layers],
        "dropped": dropped,
        "directions": kept_sources,
        "computed": computed,
    }
    return network, program, freed


def _bank_record(name: str, kind: str, attr: str, bank: FoldedBank, holder: str) -> dict[str, Any]:
    record = {"name": name, "kind": kind, "module": attr, "storage": bank.storage,
              "clusters": bank.clusters}  # fmt: skip
    return with_holder(record, holder)


def _check_calls(network: nn.Module, trace: Trace, layers: list[LayerSpec], probe: Tensor) -> None:
    """Each tied layer runs as often as its module did: a module the forward reaches outside the
    module tree (a plain list of modules) would escape the surgery."""
    expected = trace.layer_calls()
    counts: dict[str, int] = {}
    handles = []
    for spec in layers:
        module = network.get_submodule(spec.path)

        def hook(*_: Any, path: str = spec.path) -> None:
            counts[path] = counts.get(path, 0) + 1

        handles.append(module.register_forward_hook(hook))
    try:
        run_probe(network, probe)
    finally:
        for h in handles:
            h.remove()
    for spec in layers:
        if counts.get(spec.path, 0) != expected.get(spec.path, 0):
            raise InputError(
                f"cannot fold {spec.path}: the forward reaches that module other than through "
                "the module tree (a plain list or attribute?), so it cannot be replaced; "
                "nothing was written"
            )


def fold_traced(
    model: nn.Module, analysis: TracedAnalysis, probe: Tensor, sharing: Any = None
) -> TracedFold:
    """A folded copy of ``model`` (which ``analysis`` traced on ``probe``); never grows.

    ``sharing``: the sharing record ``model`` was built with (a user network converted by
    ``ssc share``), kept in the program so that loading rebuilds the shared network first
    (:mod:`~soft_share_cli.folding.traced_sharing`).

    Raises :class:`InputError` (one line) where a group's call has no module of its own, or its
    bias is computed, and directions do not fold it. A fold where every group is kept has an
    empty ``plans``; ``modes`` says how each folded group is stored (``plans`` holds a
    :class:`~soft_share_cli.folding.traced_directions.DirectionsFold` for a directions group).
    """
    names = call_names(analysis.trace)
    blocked = _blocked(analysis, names)
    kept: list[tuple[str, str]] = []
    candidates = []
    for g, group in enumerate(analysis.groups):
        if group.kind == HARD_TIE:
            kept.append((group.name, "a hard tie: one tensor already, kept as a loop"))
        elif analysis.results[g].fold.clusters:
            candidates.append(g)
    taken = {i for g in candidates for i in analysis.groups[g].calls}
    satellites = find_satellites(analysis.trace, set(taken))
    units = find_units(analysis, candidates, satellites)
    by_group = {p.group: p for p in plan_directions(analysis, probe, model) if p.saving > 0}
    aside: list[tuple[Unit, int]] = []  # not folded to weights: directions where they save

    def weighed(frees: list[int]) -> list[Unit]:
        """The units whose weights save more than their groups' directions; the others aside."""
        save = [max(0, sum(by_group[g].saving for g in u.groups if g in by_group)) for u in units]
        ok = [
            f - u.cost > d and not set(u.groups) & set(blocked)
            for u, f, d in zip(units, frees, save, strict=True)
        ]
        aside.extend((u, f) for u, f, good in zip(units, frees, ok, strict=True) if not good)
        return [u for u, good in zip(units, ok, strict=True) if good]

    units = weighed([sum(analysis.trace.parameters.get(k, 0) for k in u.freeable) for u in units])
    while True:
        chosen = [by_group[g] for u, _ in aside for g in u.groups if g in by_group]
        network, program, freed = _build(model, analysis, units, probe, names, chosen)
        still = weighed([freed[n] for n in range(len(units))])
        if len(still) == len(units):
            break
        units = still
    why = [blocked[g] for g in blocked if g not in {p.group for p in chosen}]
    if why:
        raise InputError(why[0])
    for u, f in aside:
        kept += _why(analysis, [g for g in u.groups if g not in by_group], u.cost, f)
    plans = {analysis.groups[g].name: analysis.results[g].fold for u in units for g in u.groups}
    modes = dict.fromkeys(plans, "weights")
    for p in chosen:
        plans[analysis.groups[p.group].name] = p.fold  # type: ignore[assignment]
        modes[analysis.groups[p.group].name] = "directions"
    program.update(kept=[{"group": name, "why": why} for name, why in kept], modes=modes)
    program = with_sharing(program, sharing)
    return TracedFold(network, program, plans, tuple(kept), modes)


def _why(
    analysis: TracedAnalysis, groups: list[int], cost: int, freed: int
) -> list[tuple[str, str]]:
    why = f"kept as it is: folding would store {cost:,} numbers for the {freed:,} it frees"
    return [(analysis.groups[g].name, why) for g in groups]
