"""Rebuild the network a checkpoint came from, inferring its architecture from tensor shapes.

The authors' training checkpoints store only ``arch='swrn'``, bare state dicts nothing at all, so
depth, width, K, classes and input channels are read off the keys and shapes: the stem conv gives
the input channels, ``bank_1.templates`` gives K, the block indices of ``stage_1`` give the number
of blocks n (depth = 6n + 4), the classifier gives the classes and the width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from soft_share_cli.errors import ArchitectureError

if TYPE_CHECKING:  # torch is imported by what builds networks; inference needs only shapes
    from torch import Tensor, nn

    from soft_share_cli.checkpoint import LoadedCheckpoint

_BLOCK_KEY = re.compile(r"^stage_([123])\.(\d+)\.")
#: Architectures that build as a storage-less skeleton on the meta device (their constructors
#: draw no initial weights there), so a rebuild only assigns the checkpoint's tensors.
_SKELETON_ARCHS = frozenset({"swrn", "wrn"})


@dataclass(frozen=True)
class ArchSpec:
    """An architecture name and the constructor arguments that rebuild it."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "inferred"  # "stored" (the checkpoint says) or "inferred" (from shapes)

    def describe(self) -> str:
        """Human name, e.g. ``SWRN 28-10-4`` or ``WRN 16-1``, with classes and channels."""
        k = self.kwargs
        if self.arch in ("sfcn", "fcn") and {"blocks", "width"} <= k.keys():
            from soft_share_cli.models.recurrent import describe_fcn

            return describe_fcn(self.arch, k)
        if self.arch in ("swrn", "wrn") and {"depth", "width"} <= k.keys():
            name = f"{self.arch.upper()} {k['depth']}-{k['width']}"
            if self.arch == "swrn":
                name += f"-{k.get('num_templates')}"
            channels = k.get("in_channels", 3)
            plural = "s" if channels != 1 else ""
            return f"{name} ({k.get('num_classes', 10)} classes, {channels} input channel{plural})"
        args = ", ".join(f"{key}={value}" for key, value in k.items())
        return f"{self.arch}({args})"

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "kwargs": dict(self.kwargs), "source": self.source}


def _shape(state_dict: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise ArchitectureError(f"missing key {key!r}") from None


def infer_architecture(state_dict: Mapping[str, Tensor]) -> ArchSpec:
    """Infer a (S)WRN's constructor arguments from a prefix-stripped state dict.

    Raises:
        ArchitectureError: the keys or shapes do not describe an SWRN or WRN.
    """
    required = ("conv_3x3.weight", "stage_1.0.conv1.weight", "classifier.weight")
    if not all(key in state_dict for key in required):
        banks = sum(
            1 for k, v in state_dict.items() if k.endswith("templates") and len(v.shape) == 5
        )
        sample = ", ".join(list(state_dict)[:3]) or "no keys"
        hint = f"; it has {banks} template-bank key(s)" if banks else ""
        raise ArchitectureError(
            f"the state dict does not describe a known architecture (SWRN/WRN keys such as "
            f"{', '.join(required)} are missing; found {len(state_dict)} keys, e.g. {sample}){hint}"
        )
    try:
        stem_out, in_channels, *_ = _shape(state_dict, "conv_3x3.weight")
        num_classes, features = _shape(state_dict, "classifier.weight")
        blocks = {(int(m[1]), int(m[2])) for k in state_dict if (m := _BLOCK_KEY.match(k))}
        per_stage = [sorted(b for s, b in blocks if s == stage) for stage in (1, 2, 3)]
        n = len(per_stage[0])
        if stem_out != 16 or features % 64 or any(p != list(range(n)) for p in per_stage):
            raise ArchitectureError(
                f"stem has {stem_out} channels (expected 16), classifier sees {features} "
                f"features (expected 64 x width), blocks per stage {[len(p) for p in per_stage]}"
            )
        kwargs: dict[str, Any] = {"depth": 6 * n + 4, "width": features // 64}
        if "bank_1.templates" in state_dict:
            arch = "swrn"
            kwargs["num_templates"] = _shape(state_dict, "bank_1.templates")[0]
        else:
            arch = "wrn"
        kwargs.update(num_classes=num_classes, in_channels=in_channels)
    except ArchitectureError as exc:
        raise ArchitectureError(f"the state dict does not describe an SWRN/WRN: {exc}") from None
    return ArchSpec(arch, kwargs, "inferred")


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, Tensor], what: str, *, assign: bool = False
) -> None:
    """Load ``state_dict`` into ``model`` strictly, reporting every mismatch in one line.

    BatchNorm ``num_batches_tracked`` buffers (absent from PyTorch 0.4.0 files, unused in eval)
    are the only keys allowed to be missing. ``assign`` makes the model hold the given tensors
    themselves instead of copies (``nn.Module.load_state_dict(assign=True)``).
    """
    import torch

    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    fillable = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in fillable]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise ArchitectureError(f"the weights do not fit {what}: " + "; ".join(problems))
    full = dict(state_dict)
    for key in fillable:
        full[key] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(full, strict=True, assign=assign)


def architecture_of(checkpoint: LoadedCheckpoint) -> ArchSpec:
    """The architecture a checkpoint stores, or the one its shapes imply."""
    if checkpoint.arch is not None and checkpoint.arch_kwargs is not None:
        return ArchSpec(checkpoint.arch, dict(checkpoint.arch_kwargs), "stored")
    spec = infer_architecture(checkpoint.state_dict)
    if checkpoint.arch is not None and checkpoint.arch != spec.arch:
        raise ArchitectureError(
            f"the checkpoint says arch={checkpoint.arch!r} but its tensors describe {spec.arch!r}"
        )
    return spec


def rebuild_model(checkpoint: LoadedCheckpoint) -> tuple[nn.Module, ArchSpec]:
    """Build the checkpoint's network, load its weights, and return it in eval mode."""
    import torch

    from soft_share_cli.models.registry import build_model

    spec = architecture_of(checkpoint)
    if spec.arch not in _SKELETON_ARCHS:
        model = build_model(spec.arch, **spec.kwargs)
        load_state_dict_checked(model, checkpoint.state_dict, spec.describe())
    else:
        # A skeleton without storage: drawing tens of millions of initial weights only to
        # overwrite them costs more than loading the file. The checkpoint's tensors (memory-
        # mapped, copy-on-write) become the weights; a dtype that differs gets a cast copy.
        with torch.device("meta"):
            model = build_model(spec.arch, **spec.kwargs)
        expected = model.state_dict()
        same = all(
            isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == expected[k].dtype
            for k, t in checkpoint.state_dict.items()
            if k in expected
        )
        if not same:
            from soft_share_cli.layers import allocate

            model = allocate(model, "cpu")  # loading below writes every tensor, cast
        load_state_dict_checked(model, checkpoint.state_dict, spec.describe(), assign=same)
    check_finite(model.state_dict(), f"{checkpoint.path} ({spec.describe()})")
    return model.eval(), spec


def check_finite(state_dict: Mapping[str, Tensor], what: str) -> None:
    """Raise :class:`ArchitectureError` naming the floating tensors that hold NaN or infinity.

    Such a network's outputs are undefined, so evaluating or folding it is refused up front
    (``ssc analyze`` still reports the rest). Only for ssc's own architectures: a user network
    may keep ``-inf`` on purpose, e.g. in an attention mask.
    """
    from soft_share_cli import arrays

    verdicts: dict[tuple[Any, ...], bool] = {}  # by storage: a bank's aliases are read once
    bad = []
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        storage = arrays.storage_key(tensor)
        if storage not in verdicts:
            verdicts[storage] = arrays.all_finite(tensor)
        if not verdicts[storage]:
            bad.append(key)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ArchitectureError(
            f"{what}: {len(bad)} tensor(s) hold NaN or infinite values ({shown}); the network's "
            "outputs would be undefined (ssc analyze reports what is still usable)"
        )
