"""Turn the groups of a plain network into template banks (:mod:`.svd` fits), and back.

:func:`share_wrn` turns ssc's plain WRN into an ordinary SWRN (every ssc command reads it);
:func:`share_network` rewrites any network in place, replacing each grouped ``nn.Conv2d`` by a
:class:`~soft_share_cli.models.layers.SharedConv2d` drawing from its group's bank (the authors'
layout: each shared conv registers the bank as ``bank``, holds ``coefficients`` and keeps its own
``bias``). Every other module, parameter and buffer is left untouched.

A shared user network is rebuilt from the user's factory plus the *sharing record* the
checkpoint's metadata holds (:func:`sharing_record`, :func:`apply_record`): layer names and K per
group. The record comes from a file, so it is checked like one: every name must be a plain conv
of the freshly built network, in at most one group, K within bounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from soft_share_cli import limits
from soft_share_cli.errors import CheckpointError, InputError
from soft_share_cli.models.layers import SharedConv2d, TemplateBank, allocate
from soft_share_cli.sharing.groups import ShareGroup, shareable, tied_weights
from soft_share_cli.sharing.svd import TemplateFit, fit_templates

RECORD_FORMAT = "ssc-share"
RECORD_VERSION = 1
RECORD_KEY = "sharing"  # where the record sits in a checkpoint's metadata


def check_groups(model: nn.Module, groups: Sequence[ShareGroup], ks: Sequence[int]) -> None:
    """InputError unless every group's layers are distinct plain square-kernel convs of the
    group's shape, not hard-tied, each in one group, with one K per group (nothing is changed
    before)."""
    if len(ks) != len(groups):
        raise InputError(f"{len(groups)} group(s) need as many K, got {len(ks)}")
    modules = dict(model.named_modules())
    tied = tied_weights(model)
    seen: dict[int, str] = {}
    for group in groups:
        for name in group.layers:
            conv = modules.get(name) if name else None
            if conv is None or not shareable(conv):
                raise InputError(f"group {group.name}: {name!r} is not a plain Conv2d")
            if id(conv.weight) in tied:
                raise InputError(f"group {group.name}: {name} is hard-tied to another layer")
            if tuple(conv.weight.shape) != tuple(group.shape):
                raise InputError(f"group {group.name}: {name} does not have the group's shape")
            if conv.kernel_size[0] != conv.kernel_size[1]:
                raise InputError(f"group {group.name}: {name} has a non-square kernel")
            if id(conv) in seen:
                raise InputError(f"{name} is in two groups ({seen[id(conv)]}, {group.name})")
            seen[id(conv)] = group.name


def fit_groups(
    model: nn.Module, groups: Sequence[ShareGroup], ks: Sequence[int]
) -> list[TemplateFit]:
    """The rank-K fit of every group's weights, as ``model`` holds them now."""
    check_groups(model, groups, ks)
    fits = []
    for group, k in zip(groups, ks, strict=True):
        weights = [model.get_submodule(name).weight for name in group.layers]
        try:
            fits.append(fit_templates(weights, k))
        except InputError as exc:
            raise InputError(f"group {group.name}: {exc}") from None
    return fits


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    if isinstance(holder, nn.ModuleDict | nn.ModuleList | nn.Sequential):
        holder._modules[attr] = new  # index or key, kept in its place
    else:
        setattr(holder, attr, new)


def _bank_for(group: ShareGroup, k: int, like: torch.Tensor, empty: bool = False) -> TemplateBank:
    """A bank for ``group`` on ``like``'s device and dtype; ``empty``: uninitialised storage
    (the caller writes the templates; the global RNG is not drawn from)."""
    out_planes, in_planes, kh, kw = group.shape
    if kh != kw:
        raise InputError(f"group {group.name}: only square kernels can share a bank, got {kh}x{kw}")
    if empty:
        with torch.device("meta"):
            bank = TemplateBank(k, in_planes, out_planes, kh)
        return allocate(bank.to(like.dtype), like.device)
    with torch.device(like.device):
        bank = TemplateBank(k, in_planes, out_planes, kh)
    return bank.to(like.dtype)


def share_network(
    model: nn.Module,
    groups: Sequence[ShareGroup],
    ks: Sequence[int],
    fits: Sequence[TemplateFit] | None = None,
) -> list[TemplateFit]:
    """Replace every grouped conv of ``model`` by a shared conv, in place; returns the fits.

    With ``fits`` None the weights are fitted first (:func:`fit_groups`); a bias stays the
    layer's own. Modules outside the groups are not touched.
    """
    check_groups(model, groups, ks)
    fits = list(fit_groups(model, groups, ks) if fits is None else fits)
    for group, k, fit in zip(groups, ks, fits, strict=True):
        convs = [model.get_submodule(name) for name in group.layers]
        bank = _bank_for(group, k, convs[0].weight, empty=True)
        with torch.no_grad():
            bank.templates.copy_(fit.templates)
        for name, conv, row in zip(group.layers, convs, fit.coefficients, strict=True):
            shared = SharedConv2d.like(conv, bank).to(
                device=conv.weight.device, dtype=conv.weight.dtype
            )
            shared.bank = bank  # .to() above must not have copied the bank away
            with torch.no_grad():
                shared.coefficients.copy_(row.reshape(shared.coefficients.shape))
                if conv.bias is not None:
                    assert shared.bias is not None
                    shared.bias.copy_(conv.bias)
            shared.train(conv.training)
            _replace(model, name, shared)
    return fits


def sharing_record(
    groups: Sequence[ShareGroup], ks: Sequence[int], fits: Sequence[TemplateFit]
) -> dict[str, Any]:
    """The plain-Python record a checkpoint keeps to rebuild the shared structure."""
    return {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "groups": [
            {**g.to_dict(), "templates": int(k), "relative_error": f.relative_error}
            for g, k, f in zip(groups, ks, fits, strict=True)
        ],
    }


def read_record(record: Any, where: str) -> tuple[list[ShareGroup], list[int]]:
    """The groups and K of a stored sharing record (CheckpointError when malformed)."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{where}: malformed sharing record ({why})")

    if not isinstance(record, Mapping) or record.get("format") != RECORD_FORMAT:
        raise bad("not an ssc-share record")
    if type(record.get("version")) is not int or record.get("version") != RECORD_VERSION:
        raise bad(f"version {record.get('version')!r}; this ssc reads {RECORD_VERSION}")
    rows = record.get("groups")
    if not isinstance(rows, list) or not 1 <= len(rows) <= limits.MAX_BANKS:
        raise bad(f"'groups' must be a list of 1..{limits.MAX_BANKS} groups")
    groups, ks, seen = [], [], set()
    for row in rows:
        if not isinstance(row, Mapping):
            raise bad("a group is not an object")
        layers, shape, k = row.get("layers"), row.get("shape"), row.get("templates")
        name = row.get("name")
        if not isinstance(name, str) or len(name) > 1000:
            raise bad("a group's name is not a short string")
        if (
            not isinstance(layers, list)
            or not 2 <= len(layers) <= limits.MAX_LAYERS_PER_BANK
            or not all(isinstance(x, str) and 0 < len(x) <= 1000 for x in layers)
        ):
            raise bad(f"group layers must be 2..{limits.MAX_LAYERS_PER_BANK} module names")
        if not isinstance(shape, list) or len(shape) != 4:
            raise bad("a group's shape must list 4 sizes")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise bad("a group's shape must list positive sizes")
        if (
            not isinstance(k, int)
            or isinstance(k, bool)
            or not 1 <= k <= min(len(layers), limits.MAX_TEMPLATES)
        ):
            raise bad(f"K of group {name[:60]!r} must lie in 1..{len(layers)}")
        if seen & set(layers) or len(set(layers)) != len(layers):
            raise bad("a layer appears twice")
        seen |= set(layers)
        groups.append(ShareGroup(name, tuple(layers), tuple(shape)))
        ks.append(k)
    return groups, ks


def apply_record(model: nn.Module, record: Any, where: str) -> nn.Module:
    """Give a freshly built ``model`` the shared structure ``record`` describes (weights are
    loaded afterwards); CheckpointError when the record does not fit the network."""
    groups, ks = read_record(record, where)
    # Names are looked up in the module tree only: a record cannot reach other attributes.
    modules = dict(model.named_modules())
    seen: set[int] = set()
    for group in groups:
        for name in group.layers:
            conv = modules.get(name)
            if conv is None:
                raise CheckpointError(
                    f"{where}: shared layer {name!r} is not a module of this network"
                )
            if (
                not shareable(conv)
                or tuple(conv.weight.shape) != group.shape
                or group.shape[2] != group.shape[3]
            ):
                raise CheckpointError(
                    f"{where}: shared layer {name!r} is not a zero-padded square Conv2d of "
                    f"shape {'x'.join(map(str, group.shape))} in this network"
                )
            if id(conv) in seen:
                raise CheckpointError(f"{where}: shared layer {name!r} is named twice")
            seen.add(id(conv))
    for group, k in zip(groups, ks, strict=True):
        convs = [modules[name] for name in group.layers]
        bank = _bank_for(group, k, convs[0].weight)
        for name, conv in zip(group.layers, convs, strict=True):
            shared = SharedConv2d.like(conv, bank).to(
                device=conv.weight.device, dtype=conv.weight.dtype
            )
            shared.bank = bank
            _replace(model, name, shared)
    return model


def share_wrn(
    model: nn.Module, groups: Sequence[ShareGroup], ks: Sequence[int]
) -> tuple[nn.Module, list[TemplateFit]]:
    """An SWRN with the WRN ``model``'s weights and each stage's layers fitted by a bank.

    An SWRN has one K for its three banks: every entry of ``ks`` must be the same.
    """
    from soft_share_cli.models.wrn import SWRN

    if len(set(ks)) != 1:
        raise InputError(f"an SWRN has one K for all its banks, got {sorted(set(ks))}")
    fits = fit_groups(model, groups, ks)
    k = ks[0]
    shared = SWRN(
        model.depth,
        model.width,
        k,
        num_classes=model.num_classes,
        in_channels=model.in_channels,
    )
    source = model.state_dict()
    target = shared.state_dict()
    values: dict[str, torch.Tensor] = {}
    for key in target:
        if key in source and tuple(source[key].shape) == tuple(target[key].shape):
            values[key] = source[key]
    for group, fit in zip(groups, fits, strict=True):
        stage = group.name.rpartition("_")[2]
        values[f"bank_{stage}.templates"] = fit.templates
        for name, row in zip(group.layers, fit.coefficients, strict=True):
            values[f"{name}.coefficients"] = row.reshape(k, 1, 1, 1, 1)
            values[f"{name}.bank.templates"] = fit.templates
        block = {name.rpartition(".")[0] for name in group.layers}
        for prefix in block:
            values[f"{prefix}.bank.templates"] = fit.templates
    missing = [key for key in target if key not in values]
    if missing:
        raise InputError(f"the WRN lacks what its SWRN needs: {', '.join(missing[:3])}")
    shared.load_state_dict(values, strict=True)
    return shared.to(next(model.parameters()).device).eval(), fits
