"""Exact discovery of sharing by running the network once (``--model``): an autograd trace.

The network runs on a probe under a :class:`torch.overrides.TorchFunctionMode` that sees every
``conv1d``/``conv2d``/``conv3d`` and ``linear`` call, whatever module (or none) makes it. For each
call the trace records the weight that was used and, by walking the autograd graph from that
weight back to the leaves, **which stored parameters it is computed from**: no naming convention
is assumed. A weight that *is* a parameter is ``direct``; a weight computed from parameters (a
mix of templates, ``M_i @ B``, windows of a flat store) lists them as ``sources``. A weight whose
graph reaches the network's input is input-dependent (a hypernetwork): it is marked ``dynamic``
and never treated as shared.

Module hooks record which module runs each call; a call's ``layer`` is the innermost module whose
every use takes the call's input (plus, optionally, parameters) and returns the call's output
unchanged: a module that can be replaced by a conv or linear layer with a fixed weight. Calls
whose input comes (through elementwise operations or a BatchNorm) from another call's output
record it in ``inputs_from``, which finds a shared basis followed by per-layer 1×1 convs.

What is not recognised: convolutions written with ``unfold``/``matmul``, transposed convolutions,
weights made under ``torch.no_grad()`` (their graph is cut: they show as unshared), and control
flow that changes with the input (the trace is of one probe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from soft_share_cli.errors import InputError
from soft_share_cli.models.params import storage_id

OPS: dict[Callable[..., Any], str] = {
    F.conv1d: "conv1d",
    F.conv2d: "conv2d",
    F.conv3d: "conv3d",
    F.linear: "linear",
}
_GEOMETRY = ("stride", "padding", "dilation", "groups")
_DEFAULTS: dict[str, Any] = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}


@dataclass(frozen=True)
class Call:
    """One conv or linear call of the traced forward pass."""

    index: int  # position in the forward pass
    op: str  # "conv1d", "conv2d", "conv3d" or "linear"
    module: str  # path of the innermost module running when the call was made ("" the network)
    layer: str | None  # the module that is exactly this call (replaceable), if one is
    weight_shape: tuple[int, ...]
    weight: Tensor = field(compare=False, repr=False)  # the weight used (detached)
    direct: str | None  # the parameter that *is* the weight, if the weight is one
    sources: tuple[str, ...]  # the parameters the weight is computed from (direct: itself)
    bias: str | None  # the parameter that is the bias; "" computed; None no bias
    geometry: tuple[tuple[str, Any], ...]  # stride, padding, dilation, groups (convs)
    inputs_from: tuple[int, ...]  # calls whose outputs this call's input is computed from
    dynamic: bool = False  # the weight depends on the input (never shared)

    @property
    def weight_numel(self) -> int:
        return int(self.weight.numel())


@dataclass(frozen=True)
class Trace:
    """Every conv and linear call of one forward pass, and the network's parameters."""

    calls: tuple[Call, ...]
    parameters: dict[str, int]  # key -> numel, one key per storage (the first name)
    probe_shape: tuple[int, ...]

    def layer_calls(self) -> dict[str, int]:
        """Layer module path -> how many calls it makes (a reused module: several)."""
        counts: dict[str, int] = {}
        for call in self.calls:
            if call.layer is not None:
                counts[call.layer] = counts.get(call.layer, 0) + 1
        return counts

    def uses(self) -> dict[str, list[int]]:
        """Parameter key -> the calls whose weight is computed from it (or is it)."""
        out: dict[str, list[int]] = {}
        for call in self.calls:
            for key in call.sources:
                out.setdefault(key, []).append(call.index)
        return out


def _parameter_keys(model: nn.Module) -> dict[tuple[Any, ...], str]:
    """Storage -> the first state-dict key naming it (named_parameters with duplicates)."""
    keys: dict[tuple[Any, ...], str] = {}
    for key, p in model.named_parameters(remove_duplicate=False):
        keys.setdefault(storage_id(p), key)
    return keys


def _leaves(tensor: Tensor, stop: Callable[[Any], bool] | None = None) -> Iterator[Any]:
    """The autograd graph below ``tensor``: yields AccumulateGrad variables and, where ``stop``
    says so, the nodes it stops at (not walking below them)."""
    root = tensor.grad_fn
    if root is None:
        return
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if stop is not None and node is not root and stop(node):
            yield node
            continue
        variable = getattr(node, "variable", None)
        if variable is not None:
            yield variable
            continue
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)


def _argument(args: Sequence[Any], kwargs: dict[str, Any], position: int, name: str) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, _DEFAULTS.get(name))


class _Recorder(TorchFunctionMode):
    def __init__(self, on_call: Callable[[str, tuple[Any, ...], dict[str, Any], Any], None]):
        super().__init__()
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = OPS.get(func)
        if op is not None:
            self.on_call(op, args, kwargs, out)
        return out


@dataclass
class _ModuleUse:
    path: str
    inputs: tuple[Any, ...]
    calls: list[int] = field(default_factory=list)
    output: Any = None


def trace_network(model: nn.Module, probe: Tensor) -> Trace:
    """Run ``model`` once on ``probe`` (eval mode, gradients on) and record every conv/linear call.

    The network's parameters are made to require gradients for the pass (and restored after); the
    probe requires one too, so that input-dependent weights are recognised. Nothing is trained.
    """
    names = {id(m): path for path, m in model.named_modules(remove_duplicate=True)}
    keys = _parameter_keys(model)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    probe = probe.detach().clone().requires_grad_(True)
    # The network gets a copy of the leaf: in-place operations on its input are allowed.
    given = probe.clone()
    stack: list[_ModuleUse] = []
    uses: list[_ModuleUse] = []
    raw: list[dict[str, Any]] = []
    outputs: dict[int, int] = {}  # id(grad_fn of a call's output) -> call index

    def pre_hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        stack.append(_ModuleUse(names.get(id(module), "?"), inputs))

    def post_hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        use = stack.pop()
        use.output = output
        uses.append(use)
        if stack:
            stack[-1].calls.extend(use.calls)

    def on_call(op: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        index = len(raw)
        x, weight = _argument(args, kwargs, 0, "input"), _argument(args, kwargs, 1, "weight")
        bias = _argument(args, kwargs, 2, "bias")
        geometry = (
            ()
            if op == "linear"
            else tuple(
                (name, _argument(args, kwargs, 3 + i, name)) for i, name in enumerate(_GEOMETRY)
            )
        )
        raw.append(
            {"op": op, "x": x, "weight": weight, "bias": bias, "geometry": geometry, "out": out}
        )
        if stack:
            stack[-1].calls.append(index)
        if isinstance(out, Tensor) and out.grad_fn is not None:
            outputs[id(out.grad_fn)] = index

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        model.eval()
        with torch.enable_grad(), _Recorder(on_call):
            model(given)
    except InputError:
        raise
    except Exception as exc:
        from soft_share_cli.models.user import _first_line

        raise InputError(
            f"the network fails on a probe of shape {tuple(probe.shape)}: {_first_line(exc)}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)

    calls = []
    for index, r in enumerate(raw):
        calls.append(_call(index, r, raw, keys, probe, outputs, uses))
    parameters = {key: int(p.numel()) for key, p in _unique_parameters(model)}
    return Trace(tuple(calls), parameters, tuple(probe.shape))


def _unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for key, p in model.named_parameters(remove_duplicate=False):
        if storage_id(p) not in seen:
            seen.add(storage_id(p))
            out.append((key, p))
    return out


def _call(
    index: int,
    r: dict[str, Any],
    raw: list[dict[str, Any]],
    keys: dict[tuple[Any, ...], str],
    probe: Tensor,
    outputs: dict[int, int],
    uses: list[_ModuleUse],
) -> Call:
    weight, bias, x = r["weight"], r["bias"], r["x"]
    direct = keys.get(storage_id(weight)) if isinstance(weight, nn.Parameter) else None
    sources: list[str] = []
    dynamic = False
    if direct is not None:
        sources = [direct]
    elif isinstance(weight, Tensor):
        for leaf in _leaves(weight):
            if leaf is probe:
                dynamic = True
            elif isinstance(leaf, Tensor) and storage_id(leaf) in keys:
                key = keys[storage_id(leaf)]
                if key not in sources:
                    sources.append(key)
    bias_key: str | None = None
    if isinstance(bias, nn.Parameter) and storage_id(bias) in keys:
        bias_key = keys[storage_id(bias)]
    elif isinstance(bias, Tensor):
        bias_key = ""
    inputs_from: list[int] = []
    if isinstance(x, Tensor) and x.grad_fn is not None and id(x.grad_fn) in outputs:
        inputs_from.append(outputs[id(x.grad_fn)])  # another call's output itself
    elif isinstance(x, Tensor):
        for node in _leaves(x, stop=lambda n: id(n) in outputs):
            if not isinstance(node, Tensor) and id(node) in outputs:
                inputs_from.append(outputs[id(node)])
    module, layer = _layer_of(index, raw, uses)
    return Call(
        index=index,
        op=r["op"],
        module=module,
        layer=layer,
        weight_shape=tuple(int(s) for s in weight.shape),
        weight=weight.detach().clone(),
        direct=direct,
        sources=tuple(sources),
        bias=bias_key,
        geometry=tuple(r["geometry"]),
        inputs_from=tuple(sorted(set(inputs_from))),
        dynamic=dynamic,
    )


def _layer_of(
    index: int, raw: list[dict[str, Any]], uses: list[_ModuleUse]
) -> tuple[str, str | None]:
    """The innermost module running call ``index``, and the innermost one that *is* the call
    (in every one of its uses: a module reused in several places is one layer, used repeatedly)."""
    holders = [u for u in uses if index in u.calls]  # post-order: innermost first
    module = holders[0].path if holders else ""
    for use in holders:
        if all(_is_exactly(other, raw) for other in uses if other.path == use.path):
            return module, use.path
    return module, None


def _is_exactly(use: _ModuleUse, raw: list[dict[str, Any]]) -> bool:
    """This module use ran one conv/linear call, took its input (and parameters only) and
    returned its output unchanged."""
    if len(use.calls) != 1 or not isinstance(use.output, Tensor):
        return False
    tensors = [a for a in use.inputs if isinstance(a, Tensor)]
    data = [a for a in tensors if not isinstance(a, nn.Parameter)]
    if len(data) != 1 or len(use.inputs) != len(tensors):
        return False
    r = raw[use.calls[0]]
    return data[0] is r["x"] and use.output is r["out"]


def probe_shape(model: nn.Module, size: int = 32, channels: int | None = None) -> tuple[int, ...]:
    """The shape of one input ``model`` accepts: ``(C, size, size)`` images first (C from
    ``channels``, else the first conv's input channels, else 3 then 1), then ``(C, size)``
    sequences, then ``(features,)`` vectors; the first shape the network runs on (no gradients).
    """
    found: list[int] = [] if channels is None else [channels]
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            found.append(module.in_channels)
            break
        templates = getattr(module, "templates", None)
        if isinstance(templates, Tensor) and templates.dim() >= 3:
            found.append(int(templates.shape[2]))
            break
    firsts = [m.in_features for m in model.modules() if isinstance(m, nn.Linear)][:1]
    candidates = list(dict.fromkeys([*found, 3, 1]))
    shapes: list[tuple[int, ...]] = [(c, size, size) for c in candidates]
    shapes += [(c, size) for c in candidates] + [(f,) for f in firsts]
    was_training = model.training
    model.eval()
    try:
        for shape in shapes:
            try:
                with torch.no_grad():
                    model(torch.zeros(2, *shape))
                return shape
            except Exception:  # noqa: BLE001 - a shape the network does not take: try the next
                continue
    finally:
        model.train(was_training)
    tried = ", ".join("×".join(map(str, s)) for s in shapes)
    raise InputError(f"the network accepts none of the probe inputs tried ({tried})")


def probe_shape_for(model: nn.Module, metadata: Any) -> tuple[int, ...]:
    """:func:`probe_shape` at the size a checkpoint's metadata suggests (8 pixels for digits,
    else 32), then at the other: a network that takes only 8×8 inputs (a flatten head) is
    probed too."""
    preprocessing = metadata.get("preprocessing") if isinstance(metadata, dict) else None
    digits = isinstance(preprocessing, dict) and preprocessing.get("dataset") == "digits"
    sizes = (8, 32) if digits else (32, 8)
    try:
        return probe_shape(model, size=sizes[0])
    except InputError:
        try:
            return probe_shape(model, size=sizes[1])
        except InputError as exc:
            raise InputError(f"{exc} at {sizes[0]} or {sizes[1]} pixels") from None
