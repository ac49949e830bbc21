"""The *directions* storage of a traced fold: keep the shared basis, bank or store as it is.

A group's calls compute their weights from shared sources (a basis ``B``, a bank, a store) and,
each, one **per-call** parameter ``P_j`` that no other module's call uses (``M_i`` of
``W_i = M_i · B``, an ``alpha_i``, a ``coef_i``). Where every weight is homogeneous-linear in its
``P_j`` (checked numerically: the forward is run again with every ``P_j`` times -2 and each
call's weight must be -2 times the traced one), a cluster of ``n >= 2`` such calls can store one
direction ``D_c`` (shaped like ``P``) and ``n`` gains instead of the ``n`` tensors ``P_j``:
``P_j ≈ gain_j · D_c``, fitted in ``P``-space (the leading singular vector of the members'
flattened ``P_j``, each gain its least-squares scale; exact where the ``P_j`` are proportional).
A cluster where that is not smaller, a singleton, or members of different shapes keep their own
``P_j`` (no gain). The shared sources are untouched, so this stores less even where a weights
fold cannot free them (a bank the forward also uses elsewhere, or a basis larger than the
cluster weights).

The user's code keeps computing the weight: the module attribute that held ``P_j`` becomes a
**computed attribute** (the module gets a per-instance subclass with a property returning
``gains[g] * directions[c]`` of a :class:`DirectionBank` registered on the top module; the
parameter itself is gone from the module and the file). A ``ParameterList`` entry works alike.
The program records each substitution (``directions``: the banks, ``computed``: holder module,
attribute, bank, cluster, gain index), checked field by field on load
(:func:`soft_share_cli.folding.traced_sharing.read_directions`). Where the top module is a
container, a bank lives on a module it computes a parameter of
(:mod:`~soft_share_cli.folding.traced_holders`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from soft_share_cli.analysis.plan import Absorb, BankFold, LayerFold
from soft_share_cli.analysis.trace import OPS, _argument
from soft_share_cli.errors import InputError
from soft_share_cli.folding.traced_holders import choose_holder, register_banks, with_holder

if TYPE_CHECKING:
    from soft_share_cli.analysis.traced import TracedAnalysis

#: A call's weight is homogeneous-linear in its P when ||W(sP) - s W(P)|| <= this * ||s W(P)||.
LINEAR_TOLERANCE = 1e-5
_SCALE = -2.0


class DirectionBank(nn.Module):
    """One direction per substituted cluster, ``(C, *P.shape)``, and one gain per ``P_j``."""

    def __init__(self, directions: Tensor, gains: Tensor) -> None:
        super().__init__()
        self.directions = nn.Parameter(directions)
        self.gains = nn.Parameter(gains)

    def value(self, cluster: int, gain: int) -> Tensor:
        return self.gains[gain] * self.directions[cluster]

    def extra_repr(self) -> str:
        return f"clusters={self.directions.shape[0]}, gains={self.gains.shape[0]}"


@dataclass(frozen=True)
class Computed:
    """One module attribute that held ``P_j`` and is now ``gains[gain] * directions[cluster]``."""

    path: str
    attr: str
    bank: str
    cluster: int
    gain: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "attr": self.attr, "bank": self.bank,
                "cluster": self.cluster, "gain": self.gain}  # fmt: skip


@dataclass(frozen=True)
class DirectionsFold(BankFold):
    """A group folded in directions mode, for the report: what it stores and frees."""

    stored: int = 0  # directions and gains
    stored_gains: int = 0
    freed: int = 0  # the P_j it replaces
    storage = "directions"

    @property
    def stores_weights(self) -> bool:
        return False

    @property
    def parameters(self) -> int:
        return self.stored

    @property
    def gains(self) -> int:
        return self.stored_gains

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "storage": "directions", "parameters": self.stored}


@dataclass
class DirectionsPlan:
    """How one group would be stored in directions mode."""

    group: int
    keys: dict[int, str]  # group call position -> its P key
    clusters: list[list[str]]  # the substituted clusters' P keys (each >= 2)
    saving: int = 0
    gain_of: dict[str, tuple[int, int]] = field(default_factory=dict)  # P key -> cluster, gain
    directions: Tensor | None = None
    gains: Tensor | None = None
    fold: DirectionsFold | None = None


_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _value(module: nn.Module, attr: str) -> Tensor:
    bank, cluster, gain = module.__dict__["_ssc_computed"][attr]
    return bank.value(cluster, gain)


def _computed_class(base: type, attrs: tuple[str, ...]) -> type:
    key = (base, attrs)
    if key not in _CLASSES:
        ns: dict[str, Any] = {a: property(lambda self, a=a: _value(self, a)) for a in attrs}
        ns.update(_ssc_base=base, __module__=base.__module__, __qualname__=base.__qualname__)
        _CLASSES[key] = type(base.__name__, (base,), ns)
    return _CLASSES[key]


def substitute(
    model: nn.Module, banks: Mapping[str, DirectionBank], computed: Sequence[Computed],
    holders: Mapping[str, str] | None = None,
) -> nn.Module:  # fmt: skip
    """Register ``banks`` (on the top module, or on the module ``holders`` names) and make every
    ``computed`` attribute a computed value."""
    register_banks(model, banks, holders or {})
    for spec in computed:
        try:
            module = model.get_submodule(spec.path) if spec.path else model
        except AttributeError:
            raise InputError(f"the network has no module {spec.path!r}") from None
        p = module._parameters.get(spec.attr)
        bank = banks[spec.bank]
        if p is None or tuple(p.shape) != tuple(bank.directions.shape[1:]):
            raise InputError(
                f"{spec.path}.{spec.attr} is not a parameter shaped like bank {spec.bank}'s "
                "directions"
            )
        del module._parameters[spec.attr]
        table = module.__dict__.setdefault("_ssc_computed", {})
        table[spec.attr] = (bank, spec.cluster, spec.gain)
        base = getattr(type(module), "_ssc_base", type(module))
        module.__class__ = _computed_class(base, tuple(sorted(table)))
    return model


class _Weights(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in OPS:
            self.seen.append(_argument(args, kwargs, 1, "weight").detach().double().clone())
        return func(*args, **kwargs)


def _scaled_weights(
    model: nn.Module, probe: Tensor, keys: set[str], n_calls: int
) -> list[Tensor] | None:
    """Every call's weight when every P of ``keys`` is scaled by ``_SCALE`` (None where the
    forward fails or makes other calls)."""
    twin = copy.deepcopy(model).eval()
    params = dict(twin.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for key in keys:
            params[key].mul_(_SCALE)
        recorder = _Weights()
        try:
            with recorder:
                twin(probe)
        except Exception:  # noqa: BLE001 - a forward that refuses the scaled parameters
            return None
    if len(recorder.seen) != n_calls:
        return None
    return recorder.seen


def plan_directions(
    analysis: TracedAnalysis, probe: Tensor, model: nn.Module
) -> list[DirectionsPlan]:
    """Per soft/basis group with one per-call parameter per call: its directions plan (saving
    > 0 only where it stores less)."""
    trace = analysis.trace
    uses = trace.uses()
    biases = {c.bias for c in trace.calls if c.bias}
    params = dict(model.named_parameters(remove_duplicate=False))
    plans: list[DirectionsPlan] = []
    for g, group in enumerate(analysis.groups):
        if group.kind == "hard-tie" or not analysis.results[g].fold.clusters:
            continue
        keys: dict[int, str] = {}
        for j, i in enumerate(group.calls):
            call = trace.calls[i]
            same = {c.index for c in trace.calls if c.layer is not None and c.layer == call.layer}
            same = (same or {i}) & set(group.calls)
            own = [k for k in call.sources if k not in biases and set(uses[k]) <= same]
            if call.dynamic or len(own) != 1 or own[0] not in params:
                break
            keys[j] = own[0]
        else:
            plans.append(DirectionsPlan(g, keys, []))
    if not plans:
        return []
    every = {k for p in plans for k in p.keys.values()}
    seen = _scaled_weights(model, probe, every, len(trace.calls))
    out = []
    for plan in plans:
        group, result = analysis.groups[plan.group], analysis.results[plan.group]
        linear = seen is not None and all(
            _close(seen[i], trace.calls[i].weight.double() * _SCALE) for i in group.calls
        )
        if linear:
            _fit(plan, result.fold, params, trace.parameters)
        out.append(plan)
    return out


def _close(a: Tensor, b: Tensor) -> bool:
    error = float(torch.linalg.vector_norm(a - b))
    return error == 0 or error <= LINEAR_TOLERANCE * float(torch.linalg.vector_norm(b))


def _fit(
    plan: DirectionsPlan, fold: BankFold, params: Mapping[str, Tensor], sizes: Mapping[str, int]
) -> None:
    """Fit each cluster's direction in P-space where that stores less; a cluster whose P-space
    residual is worse than twice its weight-space one (a basis that maps distinct P_j to
    proportional weights) keeps its members' own P_j."""
    by_cluster: dict[int, list[str]] = {}
    positions: dict[str, list[int]] = {}  # P key -> the layers (calls) using it
    for j, layer in enumerate(fold.layers):
        members = by_cluster.setdefault(layer.cluster, [])
        if plan.keys[j] not in members:
            members.append(plan.keys[j])
        positions.setdefault(plan.keys[j], []).append(j)
    directions: list[Tensor] = []
    gains: list[float] = []
    gain_of, residual, clusters = plan.gain_of, {}, []
    for members in by_cluster.values():
        shapes = {tuple(params[k].shape) for k in members}
        numel = sizes.get(members[0], 0)
        fitted: dict[str, tuple[float, float]] = {}
        if len(members) >= 2 and len(shapes) == 1 and len(members) * numel > numel + len(members):
            stack = torch.stack([params[k].detach().double().reshape(-1) for k in members])
            v = torch.linalg.svd(stack, full_matrices=False).Vh[0]
            g = stack @ v
            v, g = (-v, -g) if float(g.sum()) < 0 else (v, g)
            for k, gk, row in zip(members, g.tolist(), stack, strict=True):
                norm = float(torch.linalg.vector_norm(row))
                error = float(torch.linalg.vector_norm(row - gk * v)) / norm if norm else 0.0
                allowed = 2 * max(fold.layers[j].residual for j in positions[k]) + 1e-6
                fitted[k] = (gk, error if error <= allowed else -1.0)  # -1: too far
            if all(e >= 0 for _, e in fitted.values()):
                for k in members:
                    gain_of[k] = (len(directions), len(gains))
                    gains.append(fitted[k][0])
                    residual[k] = fitted[k][1]
                directions.append(v.reshape(shapes.pop()))
                plan.clusters.append(members)
                plan.saving += len(members) * numel - numel - len(members)
                clusters.append(tuple(j for k in members for j in positions[k]))
                continue
        clusters += [tuple(positions[k]) for k in members]  # each keeps its own P_j
    if not plan.clusters:
        return
    dtype = params[plan.clusters[0][0]].dtype
    plan.directions = torch.stack(directions).to(dtype)
    plan.gains = torch.tensor(gains, dtype=torch.float64).to(dtype)
    clusters.sort()
    cluster_of = {j: c for c, members in enumerate(clusters) for j in members}
    layers = tuple(
        LayerFold(la.name, cluster_of[j], gains[gain_of[k][1]] if k in gain_of else 1.0,
                  residual.get(k, 0.0), Absorb.GAIN if k in gain_of else Absorb.UNIT, la.tied_to)
        for j, la in enumerate(fold.layers)
        for k in (plan.keys[j],)
    )  # fmt: skip
    stored = int(plan.directions.numel()) + len(gains)
    plan.fold = DirectionsFold(fold.bank, fold.num_templates, fold.weight_numel,
                               tuple(clusters), np.asarray(fold.directions), layers,
                               False, stored, len(gains), stored + plan.saving)  # fmt: skip


def build_directions(
    network: nn.Module,
    plans: Sequence[DirectionsPlan],
    analysis: TracedAnalysis,
    attribute: Callable[[str], str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Substitute every plan's P_j in ``network`` (a copy of the traced model, its banks named
    by ``attribute(group name)``); the program's ``computed`` and ``directions`` records."""
    holders: dict[int, list[tuple[str, str]]] = {}
    for path, module in network.named_modules(remove_duplicate=False):
        for pname, q in module._parameters.items():
            if q is not None:
                holders.setdefault(id(q), []).append((path, pname))
    params = dict(network.named_parameters(remove_duplicate=False))
    computed: list[Computed] = []
    records = []
    for plan in plans:
        assert plan.directions is not None and plan.gains is not None
        group = analysis.groups[plan.group]
        attr = attribute(group.name)
        done = [
            Computed(path, pname, attr, cluster, gain)
            for key, (cluster, gain) in plan.gain_of.items()
            for path, pname in holders[id(params[key])]
        ]
        bank = DirectionBank(plan.directions.clone(), plan.gains.clone())
        holder = choose_holder(network, (c.path for c in done), group.name)
        substitute(network, {attr: bank}, done, {attr: holder})
        computed += done
        record = {"name": group.name, "kind": group.kind, "module": attr,
                  "clusters": len(plan.clusters)}  # fmt: skip
        records.append(with_holder(record, holder))
    return [c.to_dict() for c in computed], records
