"""Which layers ``ssc share`` puts into one template bank.

* ssc's plain WRN: the layers the SWRN shares, conv1 and conv2 of every block of a stage but the
  first (that block changes the width and stride), so the result is an ordinary SWRN.
* Any other network: the **runs of same-shape 3x3 convolutions inside one stage**, found from the
  network itself. A layer qualifies when it is an ``nn.Conv2d`` (not a subclass) with a 3x3
  kernel, zero padding, and a weight no other module holds (hard-tied layers already share).
  Layers are taken in module order; the *stage* of a layer is the innermost container
  (``nn.Sequential``, ``nn.ModuleList`` or ``nn.ModuleDict``) below the root that holds it in a
  block (a child that is neither a container nor the layer: ``layer2`` of a torchvision ResNet,
  ``features.stage2`` of pytorchcv's, each list of a ``ModuleDict`` of block lists); failing
  that, its outermost container below the root (a VGG of nested ``nn.Sequential``), or the
  root. Within a stage, same-shape layers form one run until a qualifying layer of another shape
  intervenes (1x1 shortcuts and other non-3x3 layers do not break a run). Runs of one layer are
  left alone.
* ``--groups``: each value is a comma-separated list of shell-style patterns over module names
  (``features.stage2.*.conv``); the ``nn.Conv2d`` layers they match form one group.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from soft_share_cli.errors import InputError

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class ShareGroup:
    """Layers (module names, in module order) that will draw their weights from one bank."""

    name: str  # the layers' longest common module path, else "FIRST..LAST" (a flat Sequential)
    layers: tuple[str, ...]
    shape: tuple[int, ...]  # the weight shape every layer has

    @property
    def layer_parameters(self) -> int:
        """Parameters of one layer's weight."""
        size = 1
        for n in self.shape:
            size *= n
        return size

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "layers": list(self.layers), "shape": list(self.shape)}


def _common_name(layers: Sequence[str]) -> str:
    """The layers' longest common module path; with none (layers of a flat ``nn.Sequential``,
    or of the root) the first and last layer, ``3..11``, which tells two such groups apart."""
    parts = [name.split(".") for name in layers]
    common: list[str] = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    if len(common) == len(parts[0]):  # one layer: its parent
        common = common[:-1]
    if common:
        return ".".join(common)
    return layers[0] if len(layers) == 1 else f"{layers[0]}..{layers[-1]}"


def _named(groups: list[tuple[list[str], tuple[int, ...]]]) -> list[ShareGroup]:
    out: list[ShareGroup] = []
    seen: dict[str, int] = {}
    for layers, shape in groups:
        name = _common_name(layers)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        out.append(ShareGroup(name, tuple(layers), shape))
    return out


def tied_weights(model: nn.Module) -> set[int]:
    """ids of weights held at more than one place (already shared): by two modules, or by one
    module registered under two names (``named_modules`` would list it once)."""
    holders: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            holders[id(weight)] = holders.get(id(weight), 0) + 1
    return {key for key, count in holders.items() if count > 1}


def shareable(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` with zero padding: what a bank's generated weight can replace."""
    return type(module) is nn.Conv2d and module.padding_mode == "zeros"


def _stage_of(model: nn.Module, name: str) -> str:
    """The innermost container on ``name``'s path whose child there is a block (neither a
    container nor the layer itself); failing that the outermost container, or the root."""
    parts = name.split(".")
    containers = []
    module = model
    for depth in range(1, len(parts) + 1):
        child = module.get_submodule(parts[depth - 1])
        if isinstance(module, _CONTAINERS) and depth > 1:
            containers.append((".".join(parts[: depth - 1]), child))
        module = child
    blocks = [
        path
        for path, child in containers
        if not isinstance(child, _CONTAINERS) and child is not module
    ]
    if blocks:
        return blocks[-1]
    return containers[0][0] if containers else ""


def find_groups(model: nn.Module, kernel: tuple[int, int] = (3, 3)) -> list[ShareGroup]:
    """The runs of same-shape ``kernel`` convolutions inside one stage (see the module doc)."""
    tied = tied_weights(model)
    runs: dict[str, list[tuple[list[str], tuple[int, ...]]]] = {}
    for name, module in model.named_modules():
        if not name or not shareable(module) or tuple(module.kernel_size) != kernel:
            continue
        if id(module.weight) in tied:
            continue
        shape = tuple(module.weight.shape)
        stage = runs.setdefault(_stage_of(model, name), [])
        if stage and stage[-1][1] == shape:
            stage[-1][0].append(name)
        else:
            stage.append(([name], shape))
    found = [run for stage in runs.values() for run in stage if len(run[0]) >= 2]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    found.sort(key=lambda run: order[run[0][0]])
    return _named(found)


def groups_from_patterns(model: nn.Module, specs: Sequence[str]) -> list[ShareGroup]:
    """One group per ``--groups`` value (comma-separated module-name patterns).

    Raises:
        InputError: a pattern that matches no conv, a group of fewer than two convs, of convs of
            different shapes, of convs that are not plain zero-padded ``nn.Conv2d`` with a square
            kernel, of hard-tied convs, or a conv in two groups.
    """
    convs = [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d)]
    tied = tied_weights(model)
    taken: dict[str, int] = {}
    groups: list[tuple[list[str], tuple[int, ...]]] = []
    for number, spec in enumerate(specs, start=1):
        patterns = [p.strip() for p in spec.split(",") if p.strip()]
        if not patterns:
            raise InputError(f"--groups {spec!r}: no module-name pattern")
        layers: list[str] = []
        for pattern in patterns:
            hits = [n for n, _ in convs if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise InputError(f"--groups pattern {pattern!r} matches no Conv2d of the network")
            layers.extend(n for n in hits if n not in layers)
        order = [n for n, _ in convs]
        layers.sort(key=order.index)
        modules = dict(convs)
        for name in layers:
            if not shareable(modules[name]):
                raise InputError(
                    f"--groups: {name} is a {type(modules[name]).__name__} with "
                    f"padding_mode={modules[name].padding_mode!r}; only plain zero-padded "
                    "nn.Conv2d layers can share a bank"
                )
            kh, kw = modules[name].kernel_size
            if kh != kw:
                raise InputError(
                    f"--groups: {name} has a {kh}x{kw} kernel; only square kernels share a bank"
                )
            if id(modules[name].weight) in tied:
                raise InputError(
                    f"--groups: {name} holds a weight another layer holds too (already shared)"
                )
            if name in taken:
                raise InputError(f"--groups: {name} is in group {taken[name]} and group {number}")
            taken[name] = number
        shapes = {tuple(modules[n].weight.shape) for n in layers}
        if len(shapes) > 1:
            listed = ", ".join("x".join(map(str, s)) for s in sorted(shapes))
            raise InputError(f"--groups {spec!r}: its convs have different shapes ({listed})")
        if len(layers) < 2:
            raise InputError(f"--groups {spec!r} matches one conv ({layers[0]}); a bank needs two")
        groups.append((layers, shapes.pop()))
    return _named(groups)


def wrn_groups(num_blocks: int, shapes: Sequence[tuple[int, ...]]) -> list[ShareGroup]:
    """The SWRN's banks in a WRN of ``num_blocks`` blocks per stage (``shapes``: per stage)."""
    groups = []
    for stage, shape in zip((1, 2, 3), shapes, strict=True):
        layers = [f"stage_{stage}.{b}.conv{j}" for b in range(1, num_blocks) for j in (1, 2)]
        if layers:
            groups.append(ShareGroup(f"stage_{stage}", tuple(layers), tuple(shape)))
    return groups
