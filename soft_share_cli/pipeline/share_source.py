"""What ``ssc share`` converts: the source network, its groups, K per group, the conversion.

Two kinds of source: ssc's plain WRN (rebuilt from its checkpoint; its groups are the SWRN's
banks, so the result is an ordinary SWRN) and a network of the user's own (``--model``: built by
the user's factory, its groups found from the network itself or named by ``--groups``). Every
input ssc cannot share is refused here with one line that says what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from soft_share_cli.checkpoints.load import LoadedCheckpoint
from soft_share_cli.errors import ArchitectureError, DataError, InputError
from soft_share_cli.pipeline.share_report import GroupFit, ProbeCheck
from soft_share_cli.sharing.groups import ShareGroup


@dataclass
class Source:
    """The network a checkpoint holds, ready to be shared (internal)."""

    model: nn.Module  # in eval mode, on the CPU
    architecture: str  # its name for humans
    model_spec: str | None  # --model, None for ssc's WRN

    @property
    def is_wrn(self) -> bool:
        return self.model_spec is None


def open_source(ckpt: LoadedCheckpoint, model_spec: str | None) -> Source:
    """The checkpoint's network, or a refusal naming the way out (exit 2)."""
    from soft_share_cli.folding.kinds import kind_of
    from soft_share_cli.sharing.convert import RECORD_KEY

    path = ckpt.path
    if kind_of(ckpt) is not None:
        raise InputError(
            f"{path} is a folded network: it already shares its weights (as loops); ssc share "
            "converts a plain network"
        )
    if ckpt.metadata.get(RECORD_KEY) is not None:
        raise InputError(
            f"{path} already shares its weights (written by ssc share); fold it with "
            f"`ssc fold {path} -o OUT.safetensors --model ...`"
        )
    if model_spec is not None and ckpt.arch in ("swrn", "sfcn"):
        raise InputError(
            f"{path} holds an {ckpt.arch.upper()}, which already shares its weights in template "
            f"banks; fold it with `ssc fold {path} -o OUT.safetensors` (no --model)"
        )
    if model_spec is not None:
        from soft_share_cli.models.builder import load_state_dict_checked
        from soft_share_cli.models.user import load_factory

        model = load_factory(model_spec)()
        load_state_dict_checked(model, ckpt.state_dict, f"the network built by {model_spec}")
        return Source(model.eval(), f"user network {model_spec}", model_spec)
    from soft_share_cli.models.builder import rebuild_model

    try:
        model, spec = rebuild_model(ckpt)
    except ArchitectureError as exc:
        raise ArchitectureError(
            f"{path}: {exc}; to share your own network pass --model MODULE:CALLABLE"
        ) from None
    if spec.arch in ("swrn", "sfcn"):
        raise InputError(
            f"{path}: {spec.describe()} already shares its weights in template banks; fold it "
            f"with `ssc fold {path} -o OUT.safetensors`"
        )
    if spec.arch != "wrn":
        raise InputError(
            f"{path}: ssc share converts ssc's WRN or your own network (--model "
            f"MODULE:CALLABLE); {spec.describe()} is not supported (train --arch sfcn instead)"
        )
    return Source(model.eval(), spec.describe(), None)


def find_share_groups(source: Source, patterns: Sequence[str]) -> list[ShareGroup]:
    """The groups to share: the SWRN's banks for a WRN, else ``--groups`` or the runs found."""
    from soft_share_cli.sharing.groups import find_groups, groups_from_patterns, wrn_groups

    model = source.model
    if source.is_wrn:
        if patterns:
            raise InputError(
                "--groups names the layers of your own network (--model); a WRN shares as its "
                "SWRN (conv1 and conv2 of every block of a stage but the first): leave it out"
            )
        shapes = [tuple(getattr(model, f"stage_{i}")[-1].conv2.weight.shape) for i in (1, 2, 3)]
        groups = wrn_groups(model.num_blocks, shapes)  # type: ignore[arg-type]
        if not groups:
            raise InputError(
                f"{source.architecture} has one block per stage, and an SWRN shares only the "
                "blocks after a stage's first: nothing to share (use a WRN of depth 16 or more)"
            )
        return groups
    groups = groups_from_patterns(model, patterns) if patterns else find_groups(model)
    if not groups:
        raise InputError(
            f"{source.architecture}: no two same-shape 3x3 convs in one stage; name groups "
            "with --groups"
        )
    return groups


def choose_templates(
    source: Source, groups: Sequence[ShareGroup], templates: int | None, keep: float | None
) -> tuple[list[int], list[int | None], str | None]:
    """K per group (``--templates K`` for all, or the smallest K keeping ``keep`` of each
    group's squared Frobenius norm), the K each group needed (``--keep``), and a note.

    An SWRN has one K for its three banks: with ``--keep`` a WRN takes the largest K a stage
    needs, and the note says so.
    """
    from soft_share_cli import limits
    from soft_share_cli.sharing.svd import rank_for_energy, singular_values

    def weights(group: ShareGroup) -> list[torch.Tensor]:
        return [source.model.get_submodule(name).get_parameter("weight") for name in group.layers]

    for group in groups:
        if len(group.layers) > limits.MAX_LAYERS_PER_BANK:
            raise InputError(
                f"group {group.name} has {len(group.layers)} layers; a bank serves at most "
                f"{limits.MAX_LAYERS_PER_BANK}: split it with --groups"
            )
    if templates is not None:
        for group in groups:
            top = min(len(group.layers), group.layer_parameters, limits.MAX_TEMPLATES)
            if not 1 <= templates <= top:
                raise InputError(
                    f"--templates {templates}: group {group.name} has {len(group.layers)} "
                    f"layers, so K must lie in 1..{top}"
                )
        return [templates] * len(groups), [None] * len(groups), None
    assert keep is not None
    needed: list[int | None] = [rank_for_energy(singular_values(weights(g)), keep) for g in groups]
    if not source.is_wrn:
        return [int(k) for k in needed if k is not None], needed, None
    k = max(int(n) for n in needed if n is not None)
    listed = ", ".join(f"{g.name} {n}" for g, n in zip(groups, needed, strict=True))
    note = (
        f"--keep {keep:g} needs K = {listed}; an SWRN has one K for its banks, so every stage "
        f"gets the largest, K = {k}"
    )
    return [k] * len(groups), needed, note


def second_build(source: Source, x: torch.Tensor) -> nn.Module | None:
    """The user's network built again (the copy to convert; None for a WRN), refused (exit 2)
    unless it computes what the first build does on the probe ``x``: a weight it does not
    register (a conv in a plain list) is drawn anew by every build, every rebuild of the file too.
    """
    if source.is_wrn:
        return None
    from soft_share_cli.analysis.trace import trace_network
    from soft_share_cli.models.builder import load_state_dict_checked
    from soft_share_cli.models.user import load_factory

    spec = source.model_spec
    copy = load_factory(str(spec))().eval()
    load_state_dict_checked(copy, source.model.state_dict(), f"the network built by {spec}")
    first, second = trace_network(source.model, x[:2]), trace_network(copy, x[:2])
    if len(first.calls) == len(second.calls):  # the weights each conv/linear call used
        bad = [
            a
            for a, b in zip(first.calls, second.calls, strict=True)
            if a.weight_shape != b.weight_shape or not torch.equal(a.weight, b.weight)
        ]
        if bad:
            names = ", ".join(_call_name(c) for c in bad[:3]) + (", ..." if len(bad) > 3 else "")
            raise InputError(
                f"the network built by {spec} uses a weight it does not register ({names}): its "
                "values are not in the checkpoint; keep layers in nn.ModuleList"
            )
    with torch.inference_mode():
        a, b = source.model(x), copy(x)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
        scale = float(a.abs().max())
        if float((a - b).abs().max()) > 1e-4 * scale or len(first.calls) != len(second.calls):
            raise InputError(
                f"the network built by {spec} does not compute from its registered weights: "
                "built twice from the checkpoint it gives other logits on the probe (randomness "
                "in eval mode, or tensors kept outside its parameters and buffers)"
            )
    return copy


def _call_name(call: Any) -> str:
    if call.layer:
        return call.layer
    where = f"in {call.module}" if call.module else "in its own forward"
    return f"a {call.op} with a {'x'.join(map(str, call.weight_shape))} weight {where}"


def convert(
    source: Source, groups: Sequence[ShareGroup], ks: Sequence[int], copy: nn.Module | None
) -> tuple[nn.Module, list[Any], str, dict[str, Any]]:
    """The shared network (the source is left as it is; a user network's ``copy``, from
    :func:`second_build`, is converted in place), the fits, and the architecture name and
    constructor arguments it is saved with."""
    from soft_share_cli.sharing.convert import share_network, share_wrn

    if source.is_wrn:
        shared, fits = share_wrn(source.model, groups, ks)
        m = source.model
        kwargs = {
            "depth": m.depth,
            "width": m.width,
            "num_templates": int(ks[0]),
            "num_classes": m.num_classes,
            "in_channels": m.in_channels,
        }
        return shared.eval(), fits, "swrn", kwargs
    assert copy is not None and source.model_spec is not None
    fits = share_network(copy.eval(), groups, ks)
    return copy, fits, "user", {"model": source.model_spec}


def group_fits(
    groups: Sequence[ShareGroup],
    ks: Sequence[int],
    needed: Sequence[int | None],
    fits: Any,
    errors: Sequence[float | None] = (),
) -> tuple[GroupFit, ...]:
    """The report's row per group (``errors``: a group's error as stored, where the stored
    dtype changed it: see :func:`stored_errors`)."""
    errors = list(errors) or [None] * len(groups)
    return tuple(
        GroupFit(g.name, g.layers, g.shape, int(k), float(f.relative_error if e is None else e), n)
        for g, k, n, f, e in zip(groups, ks, needed, fits, errors, strict=True)
    )


def probe_inputs(
    ckpt: LoadedCheckpoint, source: Source, data: Any = None, samples: int = 16
) -> tuple[torch.Tensor, str]:
    """Seeded random inputs the source takes, and where their shape comes from: the images of
    ``--data`` when given, else ``ssc fold``'s probe (8x8 for a WRN; for a user network the
    shape :func:`~soft_share_cli.analysis.trace.probe_shape_for` finds, as ``ssc fold`` does)."""
    generator = torch.Generator().manual_seed(0)
    if data is not None:
        shape = tuple(int(n) for n in data.x.shape[1:])
        return torch.randn(samples, *shape, generator=generator), "the --data images' shape"
    if source.is_wrn:
        from soft_share_cli.folding.verify import probe_input

        return probe_input(ckpt, source.model, samples, seed=0), "ssc fold's probe"
    from soft_share_cli.analysis.trace import probe_shape_for

    shape = probe_shape_for(source.model, ckpt.metadata)
    return torch.randn(samples, *shape, generator=generator), "ssc fold's probe"


def compare(original: nn.Module, shared: nn.Module, x: torch.Tensor, basis: str) -> ProbeCheck:
    """Max |logit difference| between the two networks (eval mode) on ``x``."""
    original.eval(), shared.eval()
    with torch.inference_mode():
        a, b = original(x), shared(x)
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise InputError("the network returns no tensor; ssc share compares logits")
    diff = float((a - b).abs().max())
    scale = float(a.abs().max())
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InputError(
            "the original or shared network gives non-finite outputs on the probe inputs; "
            "nothing was written"
        )
    return ProbeCheck(tuple(x.shape), diff, scale, basis)


def check_data_fits(source: Source, data: Any, spec: str) -> None:
    """Refuse data the network cannot take (channels, classes, image size), before training."""
    channels = getattr(source.model, "in_channels", None)
    if isinstance(channels, int) and data.in_channels != channels:
        raise DataError(
            f"{spec} has {data.in_channels} input channels but {source.architecture} expects "
            f"{channels}"
        )
    if data.y.ndim != 1:
        raise DataError(f"{spec} labels every pixel; ssc share fine-tunes image classifiers")
    x = data.x[:2].to(torch.float32)
    try:
        with torch.inference_mode():
            logits = source.model.eval()(x)
    except Exception as exc:  # the user's network on the data's images
        from soft_share_cli.models.user import _first_line

        raise DataError(
            f"{source.architecture} cannot take the images of {spec} "
            f"({'x'.join(map(str, data.x.shape[1:]))}): {_first_line(exc)}"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DataError(
            f"{source.architecture} returns {shape} on {spec}, not (batch, classes) scores"
        )
    if logits.shape[1] < data.num_classes:
        raise DataError(
            f"{spec} has {data.num_classes} classes but {source.architecture} predicts "
            f"{logits.shape[1]}"
        )


# --- the dtypes written: the source's --------------------------------------------------------


def stored_dtypes(
    source: dict[str, torch.Tensor], shared: dict[str, torch.Tensor], groups: Sequence[ShareGroup]
) -> dict[str, torch.dtype]:
    """The dtype each float of ``shared`` is written in: its source key's; for a new tensor of a
    group (bank, coefficients) its layers' weights'; else the source's most common one."""
    floats = [t for t in source.values() if t.is_floating_point()]
    counts: dict[torch.dtype, int] = {}
    for t in floats:
        counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    most = max(counts, key=lambda d: counts[d]) if counts else torch.float32
    layers = {f"{name}.": source.get(f"{name}.weight") for g in groups for name in g.layers}
    out: dict[str, torch.dtype] = {}
    for key, value in shared.items():
        if not value.is_floating_point():
            continue
        old = source.get(key)
        if old is not None and old.is_floating_point():
            out[key] = old.dtype
            continue
        prefix = next((p for p in layers if key.startswith(p)), None)
        weight = layers.get(prefix) if prefix is not None else None
        out[key] = weight.dtype if weight is not None else most
    return out


def round_to_stored(model: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Round ``model``'s tensors in place to what their stored dtype holds (measured as written)."""
    with torch.no_grad():
        for key, tensor in model.state_dict(keep_vars=True).items():
            dtype = dtypes.get(key)
            if dtype is not None and dtype != tensor.dtype:
                tensor.copy_(tensor.to(dtype))


def stored_state(
    shared: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    dtypes: dict[str, torch.dtype],
) -> dict[str, torch.Tensor]:
    """``shared`` in its stored dtypes: a tensor left as it was is the source's own (bit for bit,
    float64 too); the others are cast a storage at a time (a bank's layers still share it)."""
    out: dict[str, torch.Tensor] = {}
    cast: dict[int, torch.Tensor] = {}
    for key, value in shared.items():
        old, dtype = source.get(key), dtypes.get(key, value.dtype)
        same = old is not None and old.dtype == dtype and old.shape == value.shape
        if same and torch.equal(old.to(value.dtype), value):  # type: ignore[union-attr]
            out[key] = old  # type: ignore[assignment]
            continue
        if dtype == value.dtype:
            out[key] = value
            continue
        storage = value.untyped_storage()
        if storage.data_ptr() not in cast:
            flat = torch.empty(0, dtype=value.dtype, device=value.device).set_(storage)
            cast[storage.data_ptr()] = flat.to(dtype)
        base = cast[storage.data_ptr()]
        out[key] = base.as_strided(value.shape, value.stride(), value.storage_offset())
    return out


def stored_errors(
    source: Source, shared: nn.Module, groups: Sequence[ShareGroup], dtypes: dict[str, Any]
) -> list[float | None]:
    """Per group: the relative error of the bank as stored, where its dtype is coarser than the
    float32 it was fitted in (float16, bfloat16); None where storing it changes nothing."""
    out: list[float | None] = []
    for group in groups:
        keys = [k for k in dtypes if k.startswith(f"{group.layers[0]}.")]
        if all(torch.finfo(dtypes[k]).eps <= torch.finfo(torch.float32).eps for k in keys):
            out.append(None)
            continue
        layers: list[Any] = [shared.get_submodule(n) for n in group.layers]  # SharedConv2d
        with torch.no_grad():
            w = torch.stack([source.model.get_parameter(f"{n}.weight") for n in group.layers])
            fit = torch.stack([layer.weight() for layer in layers]).double()
            w = w.double()
        norm = float(w.norm())
        out.append(float((w - fit).norm()) / norm if norm > 0 else 0.0)
    return out
