"""Rebuild the network a checkpoint came from, inferring its architecture from tensor shapes.

The authors' training checkpoints store only ``arch='swrn'``, bare state dicts nothing at all, so
depth, width, K, classes and input channels are read off the keys and shapes: the stem conv gives
the input channels, ``bank_1.templates`` gives K, the block indices of ``stage_1`` give the number
of blocks n (depth = 6n + 4), the classifier gives the classes and the width.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from soft_share_cli.errors import ArchitectureError, CheckpointError, InputError
from soft_share_cli.models.names import RFCN_BLOCKS

if TYPE_CHECKING:  # torch is imported by what builds networks; inference needs only shapes
    from torch import Tensor, nn

    from soft_share_cli.checkpoints.load import LoadedCheckpoint

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
        depth_key = "iterations" if self.arch == "rfcn" else "blocks"  # rfcn: one block looped
        if self.arch in ("sfcn", "fcn", "rfcn") and {depth_key, "width"} <= k.keys():
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

    fillable = check_state_dict_fits(model, state_dict, what)
    from soft_share_cli.models.aliases import check_aliases_agree

    check_aliases_agree(model, state_dict, what)
    full = dict(state_dict)
    for key in fillable:
        full[key] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(full, strict=True, assign=assign)


def check_state_dict_fits(
    model: nn.Module, state_dict: Mapping[str, Tensor], what: str
) -> list[str]:
    """Raise :class:`ArchitectureError` unless ``state_dict`` has ``model``'s keys and shapes.

    Reads shapes only, so ``model`` may be a skeleton on the meta device: checked before any
    weight is allocated. Returns the ``num_batches_tracked`` keys the state dict may lack.
    """
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
    return fillable


#: Bounds on the constructor arguments of ssc's own architectures, checked before building:
#: argument -> (smallest, :mod:`soft_share_cli.limits` name). Each must be a plain int.
_BOUNDED_KWARGS: dict[str, dict[str, tuple[int, str]]] = {
    "swrn": {
        "depth": (10, "MAX_DEPTH"),
        "width": (1, "MAX_WIDTH"),
        "num_templates": (1, "MAX_TEMPLATES"),
        "num_classes": (1, "MAX_CLASSES"),
        "in_channels": (1, "MAX_CHANNELS"),
    },
    "sfcn": {
        "blocks": (1, "MAX_BLOCKS"),
        "width": (1, "MAX_CHANNELS"),
        "num_templates": (1, "MAX_TEMPLATES"),
        "num_classes": (1, "MAX_CLASSES"),
        "in_channels": (1, "MAX_CHANNELS"),
    },
}
_BOUNDED_KWARGS["wrn"] = {k: v for k, v in _BOUNDED_KWARGS["swrn"].items() if k != "num_templates"}
_BOUNDED_KWARGS["fcn"] = {k: v for k, v in _BOUNDED_KWARGS["sfcn"].items() if k != "num_templates"}
_BOUNDED_KWARGS["rfcn"] = {"iterations": (1, "MAX_ITERATIONS"), **_BOUNDED_KWARGS["fcn"]}
del _BOUNDED_KWARGS["rfcn"]["blocks"]  # one block, looped: its trained count is `iterations`


def check_arch_kwargs(arch: str, kwargs: Mapping[str, Any], where: str = "the checkpoint") -> None:
    """Raise :class:`ArchitectureError` unless ``kwargs`` are sane for ssc's ``arch``.

    Every size must be a plain int (not a bool, float, NaN or string) within its limit in
    :mod:`soft_share_cli.limits`, ``recall`` a bool, a task network's arguments all known; users'
    architectures are not checked here (their shapes are, before their weights are loaded)."""
    from soft_share_cli import limits
    from soft_share_cli.errors import CheckpointError

    bounds = _BOUNDED_KWARGS.get(arch)
    if bounds is None:
        return
    try:
        for name, (minimum, limit) in bounds.items():
            if name in kwargs:
                limits.count(
                    kwargs[name], name, limit=getattr(limits, limit), name=limit, minimum=minimum
                )
        if "recall" in kwargs and type(kwargs["recall"]) is not bool:
            raise ValueError(f"recall should be true or false, got {kwargs['recall']!r}")
        for key, ok in (("dims", (1, 2)), ("block", RFCN_BLOCKS)):  # a bool is no dims
            if key in kwargs and (type(kwargs[key]) not in (int, str) or kwargs[key] not in ok):
                raise ValueError(f"{key} should be one of {ok}, got {kwargs[key]!r}")
        known = {*bounds, "recall", "dims", *(["block"] * (arch == "rfcn"))}
        if arch in ("sfcn", "fcn", "rfcn") and (extra := sorted(set(kwargs) - known)):
            raise ValueError(f"unknown argument(s) {', '.join(map(repr, extra[:4]))}")
    except (ValueError, CheckpointError) as exc:
        raise ArchitectureError(f"{where}: its stored {arch} arguments: {exc}") from None


def minimum_parameters(arch: str, kwargs: Mapping[str, Any]) -> int:
    """A lower bound on the parameters of ssc's ``arch`` built with ``kwargs`` (0: unknown).

    Arithmetic only (no network is built): the dominant weights of each architecture, so that
    a file whose stored arguments ask for far more than it holds is refused up front.
    """
    k = dict(kwargs)
    if arch in ("swrn", "wrn"):
        depth, width = k.get("depth", 10), k.get("width", 1)
        n, classes, templates = (depth - 4) // 6, k.get("num_classes", 10), k.get("num_templates")
        total = 64 * width * classes
        for c in (16 * width, 32 * width, 64 * width):
            shared = (n - 1) * 2 * templates + templates * c * c * 9 if arch == "swrn" else 0
            total += (n - 1) * 4 * c + (shared if arch == "swrn" else (n - 1) * 2 * 9 * c * c)
        return max(0, total)
    if arch in ("sfcn", "fcn", "rfcn"):  # rfcn: an fcn of one block
        blocks, width, classes = k.get("blocks", 1), k.get("width", 1), k.get("num_classes", 2)
        taps = 3 if k.get("dims", 2) == 1 else 9  # 1-d kernels of 3 taps, or 3x3
        body = (
            blocks * 2 * k["num_templates"] + k["num_templates"] * width * width * taps
            if (arch == "sfcn")
            else blocks * 2 * width * width * taps
        )
        return max(0, body + width * width * taps + width * classes)
    return 0


def _check_estimated_size(spec: ArchSpec, state_dict: Mapping[str, Tensor], where: str) -> None:
    from soft_share_cli.limits import check_built_size
    from soft_share_cli.models.params import count_state_dict_parameters

    try:
        needed = minimum_parameters(spec.arch, spec.kwargs)
        keys = _minimum_keys(spec.arch, spec.kwargs)
    except (KeyError, TypeError):
        return  # arguments missing: building reports them
    if len(state_dict) < keys:  # building costs per module: check the structure first
        raise ArchitectureError(
            f"{where}: its stored arch_kwargs declare {spec.describe()}, a network of at "
            f"least {keys} tensors, but the file holds {len(state_dict)}"
        )
    try:
        held = count_state_dict_parameters(state_dict)
        check_built_size(needed, held, f"{where}: its stored arch_kwargs")
    except InputError as exc:
        raise ArchitectureError(f"{exc} ({spec.describe()})") from None


def _minimum_keys(arch: str, kwargs: Mapping[str, Any]) -> int:
    """A lower bound on the state-dict keys of ssc's ``arch`` (0: unknown)."""
    if arch in ("swrn", "wrn"):  # per block: two BatchNorms' 4 tensors each and two convs
        return 3 * ((kwargs.get("depth", 10) - 4) // 6) * 10
    if arch in ("sfcn", "fcn", "rfcn"):  # per block: two convs (rfcn: one block)
        return 2 * kwargs.get("blocks", 1)
    return 0


def architecture_of(checkpoint: LoadedCheckpoint) -> ArchSpec:
    """The architecture a checkpoint stores, or the one its shapes imply.

    Stored arguments of ssc's own architectures are checked (:func:`check_arch_kwargs`).
    """
    if checkpoint.arch is not None and checkpoint.arch_kwargs is not None:
        where = str(checkpoint.path)
        check_arch_kwargs(checkpoint.arch, checkpoint.arch_kwargs, where)
        spec = ArchSpec(checkpoint.arch, dict(checkpoint.arch_kwargs), "stored")
        _check_estimated_size(spec, checkpoint.state_dict, where)
        return spec
    from soft_share_cli.checkpoints.train_state import state_architecture

    if (found := state_architecture(checkpoint)) is not None:  # a task network's OUTPUT.partial
        spec = ArchSpec(*found, source="train state")
        check_arch_kwargs(spec.arch, spec.kwargs, f"{checkpoint.path} (its train state)")
        _check_estimated_size(spec, checkpoint.state_dict, str(checkpoint.path))
        return spec
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
    # A skeleton without storage first: its keys and shapes are checked against the file
    # before anything is allocated, so stored arguments cannot ask for more than the file holds.
    with torch.device("meta"):
        model = build_model(spec.arch, **spec.kwargs)
    _check_fits(model, checkpoint.state_dict, spec.describe())
    if spec.arch not in _SKELETON_ARCHS:
        model = build_model(spec.arch, **spec.kwargs)
        load_state_dict_checked(model, checkpoint.state_dict, spec.describe())
    else:
        # Drawing tens of millions of initial weights only to overwrite them costs more than
        # loading the file. The checkpoint's tensors (memory-mapped, copy-on-write) become the
        # weights of the skeleton; a dtype that differs gets a cast copy.
        expected = model.state_dict()
        same = all(
            isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == expected[k].dtype
            for k, t in checkpoint.state_dict.items()
            if k in expected
        )
        if not same:
            from soft_share_cli.models.layers import allocate

            model = allocate(model, "cpu")  # loading below writes every tensor, cast
        load_state_dict_checked(model, checkpoint.state_dict, spec.describe(), assign=same)
    check_finite(model.state_dict(), f"{checkpoint.path} ({spec.describe()})")
    return model.eval(), spec


def _check_fits(skeleton: nn.Module, state_dict: Mapping[str, Tensor], what: str) -> None:
    """Keys and shapes of ``skeleton`` (meta) against the file's, and its size against theirs."""
    from soft_share_cli.limits import check_built_size
    from soft_share_cli.models.params import count_state_dict_parameters

    check_state_dict_fits(skeleton, state_dict, what)
    built = sum(p.numel() for p in skeleton.parameters())
    try:
        check_built_size(built, count_state_dict_parameters(state_dict), what)
    except InputError as exc:
        raise ArchitectureError(str(exc)) from None


def check_finite(state_dict: Mapping[str, Tensor], what: str) -> None:
    """Raise :class:`ArchitectureError` naming the floating tensors that hold NaN or infinity.

    Such a network's outputs are undefined, so evaluating or folding it is refused up front
    (``ssc analyze`` still reports the rest). Only for ssc's own architectures: a user network
    may keep ``-inf`` on purpose, e.g. in an attention mask.
    """
    from soft_share_cli.checkpoints import arrays

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


def build_checked(
    path: str | os.PathLike[str],
    build: Callable[[Any], nn.Module],
    program: Any,
    state_dict: Mapping[str, Tensor],
) -> Any:
    """``build(program)`` with ``state_dict`` loaded, checked before any weight is allocated.

    The program is validated (every count an int within :mod:`soft_share_cli.limits`), the
    network is built as a storage-less skeleton on the meta device, and its keys and shapes are
    compared with the tensors the file holds; only then is the network allocated and loaded, so
    a program that declares more than the file stores costs nothing.

    Raises:
        CheckpointError: the program is malformed, exceeds a limit, or does not fit the weights.
    """
    import torch

    from soft_share_cli.limits import check_built_size
    from soft_share_cli.models.layers import allocate
    from soft_share_cli.models.params import count_state_dict_parameters

    try:
        with torch.device("meta"):
            skeleton = build(program)
        check_state_dict_fits(skeleton, state_dict, "its loop program")
        built = sum(p.numel() for p in skeleton.parameters())
        check_built_size(built, count_state_dict_parameters(state_dict), "its loop program")
        network = allocate(skeleton, "cpu")
        load_state_dict_checked(network, state_dict, "its loop program")
    except (ValueError, CheckpointError, ArchitectureError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return network.eval()
