"""The program of a traced fold (:mod:`soft_share_cli.folding.traced`), and its files.

:class:`TracedLayer` stands in for a folded call; :func:`apply_program` (shared by the fold and
the loader) registers the banks, replaces the layers, drops the freed parameters. A file
(``ssc-folded``, program ``ssc-traced-fold``) lists banks, layers, dropped keys, kept groups,
``aliases`` (a tensor stored once) and :mod:`~soft_share_cli.folding.traced_directions`' records;
all of it is checked before use, and bank sizes come from the file's tensors, never from a
number the program declares. Loading is :mod:`~soft_share_cli.folding.traced_sharing`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli import limits
from soft_share_cli.errors import CheckpointError, InputError
from soft_share_cli.folding.bank import FoldedBank
from soft_share_cli.folding.traced_holders import key_prefix, read_holder, register_banks
from soft_share_cli.folding.user_program import untied_keys
from soft_share_cli.models.user import _first_line

SHARED_PREFIX = "ssc_folded_"
CONV_OPS = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}
WEIGHT_DIMS = {"linear": 2, "conv1d": 3, "conv2d": 4, "conv3d": 5}
GEOMETRY = ("stride", "padding", "dilation", "groups")


class TracedLayer(nn.Module):
    """A folded call: ``gain * op(x, shared.weight(cluster)) + bias``.

    ``shared`` is owned by the network's top module (a plain reference here, so it is counted and
    saved once); ``bias`` is the original layer's bias Parameter itself. Extra positional
    arguments (a parent may pass the store or bank it used to) are ignored.
    """

    shared: FoldedBank

    def __init__(
        self, shared: FoldedBank, cluster: int, op: str, geometry: Mapping[str, Any],
        gain: nn.Parameter | None, bias: nn.Parameter | None,
    ) -> None:  # fmt: skip
        super().__init__()
        object.__setattr__(self, "shared", shared)  # bypasses nn.Module's registration
        self.cluster, self.op = cluster, op
        self.geometry = dict(geometry)
        self.gain = gain  # a Parameter registers; None registers nothing to save
        self.bias = bias

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        w = self.shared.weight(self.cluster)
        if self.op == "linear":
            y = F.linear(x, w)
        else:
            y = CONV_OPS[self.op](x, w, None, **self.geometry)
        if self.gain is not None:
            y = self.gain * y
        if self.bias is not None:
            spatial = 0 if self.op == "linear" else WEIGHT_DIMS[self.op] - 2
            y = y + self.bias.reshape(-1, *([1] * spatial))
        return y

    def extra_repr(self) -> str:
        return f"{self.op}, cluster={self.cluster}, gain={self.gain is not None}"


@dataclass(frozen=True)
class LayerSpec:
    """One replaced layer module: the program's record of it."""

    path: str
    op: str
    geometry: dict[str, Any]
    bank: str  # the attribute of its FoldedBank
    cluster: int
    gain: float | None  # the initial gain (None: no gain)
    gain_of: str | None = None  # the path of the layer whose gain it shares
    bias: str | None = None  # the key of the original bias Parameter
    also: tuple[str, ...] = ()  # the other paths of the module (for views; the replay finds them)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "op": self.op,
            "geometry": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.geometry.items()
            },
            "bank": self.bank,
            "cluster": self.cluster,
            "gain": self.gain is not None,
            "gain_of": self.gain_of,
            "bias": self.bias,
            "also": list(self.also),
        }


def _get(model: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise InputError(f"the network has no module {path!r} ({what})") from None


def _replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> int:
    places = [(m, name) for m in model.modules() for name, sub in m._modules.items() if sub is old]
    for parent, name in places:
        parent._modules[name] = new  # plain modules and containers alike
    return len(places)


def probe_outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for item in out for t in probe_outputs(item)]
    return []


def run_probe(model: nn.Module, probe: Tensor) -> list[Tensor] | None:
    try:
        with torch.no_grad():
            return probe_outputs(model(probe))
    except Exception:  # noqa: BLE001 - a forward that needs what was removed
        return None


def same_outputs(a: list[Tensor] | None, b: list[Tensor]) -> bool:
    return (
        a is not None
        and len(a) == len(b)
        and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))
    )


def apply_program(
    model: nn.Module,
    banks: Mapping[str, FoldedBank],
    layers: Sequence[LayerSpec],
    dropped: Sequence[str] = (),
    holders: Mapping[str, str] | None = None,
) -> nn.Module:
    """Replace every layer of ``layers``, register ``banks`` (each on its holder, a path of
    ``holders``; absent: the top module), drop ``dropped``: in place."""
    params = dict(model.named_parameters(remove_duplicate=False))  # before the surgery
    tied: dict[str, TracedLayer] = {}
    for spec in layers:
        old = _get(model, spec.path, "a folded layer")
        if isinstance(old, TracedLayer) or spec.path in tied:
            raise InputError(f"layer {spec.path} is replaced twice")
        bank = banks[spec.bank]
        like = next(bank.parameters())
        gain: nn.Parameter | None = None
        if spec.gain_of is not None:
            gain = tied[spec.gain_of].gain if spec.gain_of in tied else None
            if gain is None:
                raise InputError(
                    f"layer {spec.path} shares the gain of {spec.gain_of}: it has none"
                )
        elif spec.gain is not None:
            value = torch.tensor(float(spec.gain), dtype=like.dtype, device=like.device)
            gain = nn.Parameter(value)
        bias = None
        if spec.bias is not None:
            if spec.bias not in params:
                raise InputError(f"the network has no parameter {spec.bias!r} (a layer's bias)")
            bias = params[spec.bias]
        new = TracedLayer(bank, spec.cluster, spec.op, spec.geometry, gain, bias)
        if not _replace_everywhere(model, old, new):
            raise InputError(f"{spec.path or 'the network'} is not a submodule; nothing holds it")
        tied[spec.path] = new
    register_banks(model, banks, holders or {})  # after the layers: a holder may be one
    for key in dropped:
        path, _, leaf = key.rpartition(".")
        module = _get(model, path, f"the holder of {key}")
        if module._parameters.get(leaf) is not None:
            drop_parameter(module, leaf)
        elif getattr(module.__dict__.get(leaf), "is_meta", False) is not True:
            # (a module under several paths is dropped from by its first key already)
            raise InputError(f"the network has no parameter {key!r} to drop")
    return model


def drop_parameter(module: nn.Module, name: str) -> nn.Parameter:
    """Remove parameter ``name`` of ``module``; a storage-less (meta) tensor of its shape stands
    in as a plain attribute, so that a forward that only passes it on (a parent handing the store
    to its layers) still runs. Returns the parameter (:func:`restore_parameter` puts it back)."""
    p = module._parameters.pop(name)
    assert p is not None
    object.__setattr__(module, name, torch.empty(p.shape, dtype=p.dtype, device="meta"))
    return p


def restore_parameter(module: nn.Module, name: str, p: nn.Parameter) -> None:
    module.__dict__.pop(name, None)
    module._parameters[name] = p


PROGRAM_FORMAT = "ssc-traced-fold"
PROGRAM_VERSION = 1
_ATTRIBUTE = re.compile(r"ssc_folded_\w{1,200}")
_PADDING_WORDS = ("same", "valid")


def save_traced(
    network: nn.Module, path: str | os.PathLike[str], spec: str, program: Mapping[str, Any],
    report: Mapping[str, Any] | None = None,
) -> None:  # fmt: skip
    """Write a traced fold: its tensors (each storage once) and program in the header. ``spec``
    is recorded for information only: loading needs the factory given again."""
    from soft_share_cli.checkpoints.folded_header import FORMAT_NAME, FORMAT_VERSION
    from soft_share_cli.files import save_safetensors

    tensors, aliases = untied_keys(network.state_dict())
    full = {"format": PROGRAM_FORMAT, "version": PROGRAM_VERSION, **program, "model": spec}
    if aliases:
        full["aliases"] = aliases
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "program": json.dumps(full), "report": json.dumps(dict(report or {}))}  # fmt: skip
    save_safetensors(path, tensors, metadata)


def _malformed(why: str) -> CheckpointError:
    return CheckpointError(f"malformed traced-fold program: {why}")


def _list(program: Mapping[str, Any], key: str, limit: int, name: str) -> list[Any]:
    value = program.get(key)
    if not isinstance(value, list):
        raise _malformed(f"{key!r} is not a list")
    limits.count(len(value), f"traced-fold program {key}", limit=limit, name=name)
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > 1000:
        raise _malformed(f"a {what} is not a string")
    return value


def _geometry_value(name: str, value: Any, dims: int) -> Any:
    if name == "padding" and value in _PADDING_WORDS:
        return value
    if name == "groups":
        if type(value) is not int or not 1 <= value <= limits.MAX_CHANNELS:
            raise _malformed(f"groups {value!r} is not a positive channel count")
        return value
    items = value if isinstance(value, list) else [value]
    if not 1 <= len(items) <= max(dims, 1) or any(
        type(v) is not int or not 0 <= v <= 2**16 for v in items
    ):
        raise _malformed(f"{name} {value!r} is not a small non-negative integer (per dimension)")
    if name in ("stride", "dilation") and 0 in items:
        raise _malformed(f"{name} {value!r} has a zero")
    return tuple(items) if isinstance(value, list) else value


def _layer(x: Any, banks: Mapping[str, FoldedBank], seen: dict[str, bool]) -> LayerSpec:
    if not isinstance(x, dict):
        raise _malformed("a layer is not a map")
    path, op, attr = _text(x.get("path"), "layer path"), x.get("op"), x.get("bank")
    if not path or op not in WEIGHT_DIMS or attr not in banks:
        raise _malformed(f"layer {path!r}: op {op!r} or bank {attr!r} is not one of the file's")
    bank = banks[attr]
    if len(bank.shape) != WEIGHT_DIMS[op]:
        raise _malformed(f"layer {path}: bank {attr}'s weights are not {op} weights")
    cluster, gain, gain_of, bias = x.get("cluster"), x.get("gain"), x.get("gain_of"), x.get("bias")
    if type(cluster) is not int or not 0 <= cluster < bank.clusters:
        raise _malformed(f"layer {path}: cluster {cluster!r} is not one of its bank's")
    if type(gain) is not bool or path in seen:
        raise _malformed(f"layer {path}: a second record, or gain {gain!r} not a boolean")
    if gain_of is not None and (not gain or seen.get(_text(gain_of, "gain owner")) is not True):
        raise _malformed(f"layer {path}: shares the gain of {gain_of!r}, no earlier layer's")
    if bias is not None:
        _text(bias, "bias key")
    geometry = x.get("geometry")
    if not isinstance(geometry, dict):
        raise _malformed(f"layer {path}: geometry is not a map")
    if op == "linear":
        if geometry:
            raise _malformed(f"layer {path}: a linear layer has no geometry")
    elif set(geometry) != set(GEOMETRY):
        raise _malformed(f"layer {path}: geometry names {sorted(geometry)}, not {list(GEOMETRY)}")
    checked = {k: _geometry_value(k, v, WEIGHT_DIMS[op] - 2) for k, v in geometry.items()}
    seen[path] = gain
    also = x.get("also", [])
    if not isinstance(also, list) or len(also) > limits.MAX_LAYERS_PER_BANK:
        raise _malformed(f"layer {path}: 'also' is not a list of paths")
    others = tuple(_text(a, "layer path") for a in also)
    gain0 = 0.0 if gain else None
    return LayerSpec(path, op, checked, attr, cluster, gain0, gain_of, bias, others)


def _banks(program: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> dict[str, FoldedBank]:
    """Empty banks of the sizes the file's tensors have (checked against the program)."""
    banks: dict[str, FoldedBank] = {}
    for b in _list(program, "banks", limits.MAX_BANKS * 10, "MAX_BANKS"):
        if not isinstance(b, dict):
            raise _malformed("a bank is not a map")
        attr = _text(b.get("module"), "bank attribute")
        _text(b.get("name"), "bank name")
        clusters, storage = b.get("clusters"), b.get("storage")
        if not _ATTRIBUTE.fullmatch(attr) or attr in banks:
            raise _malformed(f"bank attribute {attr!r} is not a fresh ssc_folded_<name>")
        if type(clusters) is not int or not 1 <= clusters <= limits.MAX_CLUSTERS:
            raise _malformed(f"bank {attr}: clusters {clusters!r} is not a count")
        names = {"weights": ("weights",), "templates": ("templates", "directions")}.get(storage)
        if names is None:
            raise _malformed(f"bank {attr}: storage {storage!r}")
        prefix = key_prefix(read_holder(b), attr)
        stored = [state_dict.get(prefix + n) for n in names]
        if any(t is None for t in stored):
            raise CheckpointError(f"the traced fold lacks the tensors of bank {attr}")
        first = stored[0]
        assert first is not None
        if not 3 <= first.dim() <= 6:
            raise CheckpointError(f"bank {attr}: {names[0]} of shape {tuple(first.shape)}")
        if storage == "weights":
            if first.shape[0] != clusters:
                raise CheckpointError(
                    f"bank {attr}: the program declares {clusters} clusters, the file holds "
                    f"{first.shape[0]} weights"
                )
            banks[attr] = FoldedBank.holding(weights=torch.zeros_like(first))
        else:
            directions = stored[1]
            assert directions is not None
            if tuple(directions.shape) != (clusters, first.shape[0]):
                raise CheckpointError(
                    f"bank {attr}: directions {tuple(directions.shape)} are not ({clusters}, "
                    f"{first.shape[0]})"
                )
            banks[attr] = FoldedBank.holding(
                templates=torch.zeros_like(first), directions=torch.zeros_like(directions)
            )
    return banks


def read_program(
    program: Mapping[str, Any], state_dict: Mapping[str, Tensor]
) -> tuple[dict[str, FoldedBank], list[LayerSpec], list[str]]:
    """The program's banks (empty, sized from the file), layers and dropped keys, all checked."""
    if program.get("format") != PROGRAM_FORMAT or program.get("version") != PROGRAM_VERSION:
        raise CheckpointError(
            f"not an ssc traced-fold program (format {program.get('format')!r}, "
            f"version {program.get('version')!r})"
        )
    try:
        banks = _banks(program, state_dict)
        seen: dict[str, bool] = {}
        rows = _list(program, "layers", limits.MAX_KEYS, "MAX_KEYS")
        layers = [_layer(x, banks, seen) for x in rows]
        dropped = [
            _text(k, "dropped key") for k in _list(program, "dropped", limits.MAX_KEYS, "MAX_KEYS")
        ]
    except (TypeError, ValueError, KeyError) as exc:
        raise _malformed(_first_line(exc)) from None
    return banks, layers, dropped
