"""A folded SWRN: each cluster's weight stored once and blocks that reuse it run in a real loop.

:func:`fold_swrn` turns a trained SWRN and its fold plan (:mod:`soft_share_cli.analysis.plan`) into
a
:class:`FoldedSWRN`, an eager module whose shared blocks are :class:`LoopedBlock` segments: one
pre-activation block executed ``iterations`` times by a Python ``for`` loop with a BatchNorm pair
per iteration (torch.fx and torch.export would unroll such a loop; an eager module keeps it).
Layer scales go into those BatchNorms where that is exact and stay explicit gains where it is not
(:func:`soft_share_cli.folding.materialize.place_scales`). The structure is a JSON *program*, so a
folded
file is safetensors weights plus that program (:func:`save_folded`, :func:`load_folded`): no
pickle, nothing to execute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soft_share_cli.analysis.plan import Absorb, BankFold, LayerFold
from soft_share_cli.errors import ArchitectureError, CheckpointError
from soft_share_cli.folding.materialize import (
    COPIED,
    STORAGES,
    FoldedBank,
    LoopedBlock,
    folded_state_dict_view,
    materialize,
    place_scales,
)
from soft_share_cli.limits import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_CLUSTERS,
    MAX_DEPTH,
    MAX_ITERATIONS,
    MAX_SEGMENTS,
    MAX_TEMPLATES,
    MAX_WIDTH,
    count,
    finite_number,
    loads_json,
)
from soft_share_cli.models.layers import allocate
from soft_share_cli.models.wrn import SWRN, Block

__all__ = [
    "FoldedBank",
    "FoldedSWRN",
    "LoopedBlock",
    "fold_swrn",
    "folded_state_dict_view",
    "is_folded_file",
    "load_folded",
    "materialize",
    "save_folded",
]

FORMAT_NAME = "ssc-folded"
FORMAT_VERSION = "1"
PROGRAM_FORMAT = "ssc-swrn-loops"  # the program's own tag (user-model folds have another)
PROGRAM_VERSION = 1


class FoldedSWRN(nn.Module):
    """An SWRN whose shared blocks run as loops; built from a JSON program (see :meth:`program`).

    Modules: ``conv_3x3``; per stage ``i`` the unshared ``stage_i_first`` block and the
    ``stage_i_loops`` list of :class:`LoopedBlock`; per used bank ``bank_i`` (:class:`FoldedBank`);
    ``lastact``, adaptive ``avgpool`` and ``classifier``.
    """

    def __init__(self, program: dict[str, Any]) -> None:
        super().__init__()
        _check_program(program)
        self._program = json.loads(json.dumps(program))  # a private, JSON-clean copy
        p = self._program
        self.depth, self.width = int(p["depth"]), int(p["width"])
        self.num_blocks = (self.depth - 4) // 6
        channels = [16, 16 * self.width, 32 * self.width, 64 * self.width]
        self.conv_3x3 = nn.Conv2d(p["in_channels"], 16, 3, stride=1, padding=1, bias=False)
        for i, stride in zip((1, 2, 3), (1, 2, 2), strict=True):
            self.add_module(f"stage_{i}_first", Block(channels[i - 1], channels[i], stride))
            spec = p["banks"][f"bank_{i}"]
            if spec["clusters"] > 0:  # a bank no layer uses is dropped
                bank = FoldedBank(spec["storage"], spec["clusters"], spec["K"], spec["shape"])
                self.add_module(f"bank_{i}", bank)
            loops = [
                LoopedBlock(
                    channels[i],
                    seg["conv1_cluster"],
                    seg["conv2_cluster"],
                    seg["iterations"],
                    seg["gain_iterations"],
                    seg.get("conv1_gain_iterations", []),
                )
                for seg in p["stages"][f"stage_{i}"]
            ]
            self.add_module(f"stage_{i}_loops", nn.ModuleList(loops))
        self.lastact = nn.Sequential(nn.BatchNorm2d(channels[3]), nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[3], p["num_classes"])
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # keep the original network's BN settings
                m.eps, m.momentum = p["batchnorm"]["eps"], p["batchnorm"]["momentum"]

    @classmethod
    def from_program(cls, program: dict[str, Any]) -> FoldedSWRN:
        """The module skeleton a program describes, with placeholder weights (load them next)."""
        return cls(program)

    def program(self) -> dict[str, Any]:
        """The loop program (JSON-able): everything needed to rebuild this skeleton."""
        return json.loads(json.dumps(self._program))

    def describe(self) -> str:
        """E.g. ``SWRN 28-1-4 (10 classes, 1 input channel) with loops 3, 3, 3``."""
        p = self._program
        channels = p["in_channels"]
        loops = ", ".join(
            "+".join(str(seg["iterations"]) for seg in p["stages"][f"stage_{i}"]) or "0"
            for i in (1, 2, 3)
        )
        return (
            f"SWRN {p['depth']}-{p['width']}-{p['num_templates']} ({p['num_classes']} classes, "
            f"{channels} input channel{'s' if channels != 1 else ''}) with loops {loops}"
        )

    def bank(self, stage: int) -> FoldedBank | None:
        """The folded bank serving stage ``stage`` (None when no layer of it is shared)."""
        bank = getattr(self, f"bank_{stage}", None)
        return bank if isinstance(bank, FoldedBank) else None

    def loops(self, stage: int) -> list[LoopedBlock]:
        """The looped segments of stage ``stage``, in execution order."""
        return [m for m in getattr(self, f"stage_{stage}_loops") if isinstance(m, LoopedBlock)]

    def iterations(self) -> Iterator[tuple[int, int, LoopedBlock, int]]:
        """``(stage, original block index, segment, iteration)`` for every shared block."""
        for stage in (1, 2, 3):
            block = 1
            for segment in self.loops(stage):
                for t in range(segment.iterations):
                    yield stage, block, segment, t
                    block += 1

    #: Memory format of the activations. Channels-last lets oneDNN run every convolution on
    #: the CPU: PyTorch otherwise sends small batch-1 convolutions (fewer than 20,480 input
    #: numbers) to its im2col path, slower here by about 15 % (benchmarks/, BENCHMARKS.md).
    #: ``torch.contiguous_format`` computes in the original network's layout.
    memory_format: torch.memory_format = torch.channels_last

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        # Again after the stem: with one input channel both layouts look alike, and the stem's
        # output would fall back to the default one.
        x = self.conv_3x3(x).contiguous(memory_format=self.memory_format)
        for i in (1, 2, 3):
            x = getattr(self, f"stage_{i}_first")(x)
            bank = self.bank(i)
            for segment in self.loops(i):
                assert bank is not None  # _check_program: segments imply clusters
                x = segment(x, bank)
        x = self.avgpool(self.lastact(x))
        return self.classifier(torch.flatten(x, 1))


def _check_program(p: Any) -> None:
    """Raise ValueError unless ``p`` is a consistent SWRN loop program."""
    if not isinstance(p, dict) or (p.get("format"), p.get("version")) != (
        PROGRAM_FORMAT,
        PROGRAM_VERSION,
    ):
        got = (p.get("format"), p.get("version")) if isinstance(p, dict) else type(p).__name__
        raise ValueError(
            f"not an SWRN loop program (format, version = {got}; "
            f"expected {PROGRAM_FORMAT!r}, {PROGRAM_VERSION})"
        )
    try:
        _check_swrn_program(p)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed loop program ({type(exc).__name__}: {exc})") from None


def _check_swrn_program(p: dict[str, Any]) -> None:
    """The checks of :func:`_check_program`; every count strictly an int within its limit."""
    depth = count(p["depth"], "the loop program's depth", limit=MAX_DEPTH, name="MAX_DEPTH")
    width = count(p["width"], "the loop program's width", limit=MAX_WIDTH, name="MAX_WIDTH")
    if depth < 10 or (depth - 4) % 6 or width < 1:
        raise ValueError(f"bad depth {depth} or width {width}")
    count(p["num_classes"], "its classes", limit=MAX_CLASSES, name="MAX_CLASSES", minimum=1)
    count(p["in_channels"], "its input channels", limit=MAX_CHANNELS, name="MAX_CHANNELS",
          minimum=1)  # fmt: skip
    count(p["num_templates"], "its templates", limit=MAX_TEMPLATES, name="MAX_TEMPLATES",
          minimum=1)  # fmt: skip
    finite_number(p["batchnorm"]["eps"], "batchnorm eps")
    if p["batchnorm"]["momentum"] is not None:
        finite_number(p["batchnorm"]["momentum"], "batchnorm momentum")
    n = (depth - 4) // 6
    for i, planes in zip((1, 2, 3), (16 * width, 32 * width, 64 * width), strict=True):
        bank, segments = p["banks"][f"bank_{i}"], p["stages"][f"stage_{i}"]
        clusters = count(bank["clusters"], f"bank_{i}'s clusters", limit=MAX_CLUSTERS,
                         name="MAX_CLUSTERS")  # fmt: skip
        count(bank["K"], f"bank_{i}'s templates", limit=MAX_TEMPLATES, name="MAX_TEMPLATES",
              minimum=1)  # fmt: skip
        if bank["storage"] not in STORAGES:
            raise ValueError(f"bank_{i} has a bad storage")
        if not isinstance(bank["shape"], list) or bank["shape"] != [planes, planes, 3, 3]:
            raise ValueError(f"bank_{i} has shape {bank['shape']}, not width {width}'s")
        if not isinstance(segments, list):
            raise ValueError(f"the segments of stage_{i} are not a list")
        count(len(segments), f"stage_{i}'s loop segments", limit=MAX_SEGMENTS, name="MAX_SEGMENTS")
        total = 0
        for s in segments:
            runs = count(s["iterations"], f"a segment of stage_{i}", limit=MAX_ITERATIONS,
                         name="MAX_ITERATIONS", minimum=1)  # fmt: skip
            total += runs
            for r in (1, 2):
                c = count(s[f"conv{r}_cluster"], "a cluster index", limit=MAX_CLUSTERS,
                          name="MAX_CLUSTERS")  # fmt: skip
                if c >= clusters:
                    raise ValueError(f"a segment of stage_{i} uses a cluster bank_{i} lacks")
            for listed in (s["gain_iterations"], s.get("conv1_gain_iterations", [])):
                if not isinstance(listed, list) or not all(
                    type(t) is int and 0 <= t < runs for t in listed[: runs + 1]
                ):
                    raise ValueError(f"a segment of stage_{i} lists bad gain iterations")
        if total != n - 1:
            raise ValueError(f"the segments of stage_{i} do not cover its {n - 1} blocks")


def fold_swrn(model: SWRN, plans: Mapping[str, BankFold]) -> FoldedSWRN:
    """Fold ``model`` as ``plans`` says; returns a new module in eval mode (``model`` untouched).

    Args:
        model: a trained SWRN (e.g. from ``rebuild_model``).
        plans: bank name (``"bank_1"``..``"bank_3"``) -> the bank's plan from
            ``folding.plan_bank(bank, clusters, state_dict=model.state_dict())``. A bank may be
            left out only when no layer uses it (depth 10).

    Raises:
        TypeError: ``model`` is not an SWRN.
        ValueError: a plan does not fit the model (layer names, K, absorption).
    """
    if not isinstance(model, SWRN):
        raise TypeError(f"fold_swrn folds an SWRN, got {type(model).__name__}")
    program, layers = _program(model, plans)
    reference = model.conv_3x3.weight
    with torch.device("meta"):  # a skeleton without storage: every tensor is written below
        skeleton = FoldedSWRN.from_program(program)
    folded = allocate(skeleton, reference.device).to(dtype=reference.dtype)
    with torch.no_grad():
        for name in COPIED:
            getattr(folded, name).load_state_dict(getattr(model, name).state_dict())
        for i in (1, 2, 3):
            first = getattr(model, f"stage_{i}")[0]
            getattr(folded, f"stage_{i}_first").load_state_dict(first.state_dict())
            bank = folded.bank(i)
            if bank is None:
                continue
            templates = getattr(model, f"bank_{i}").templates.detach()
            u = torch.as_tensor(plans[f"bank_{i}"].directions, dtype=torch.float64)
            if bank.weights is not None:  # float64 mix on the CPU, one rounding when cast back
                mixed = torch.tensordot(u, templates.to(device="cpu", dtype=torch.float64), dims=1)
                bank.weights.copy_(mixed)
            else:
                assert bank.templates is not None and bank.directions is not None
                bank.templates.copy_(templates)
                bank.directions.copy_(u)
        for stage, b, segment, t in folded.iterations():
            block = getattr(model, f"stage_{stage}")[b]
            segment.bn1[t].load_state_dict(block.bn1.state_dict())
            segment.bn2[t].load_state_dict(block.bn2.state_dict())
            place_scales(
                segment, t, layers[f"stage_{stage}.{b}.conv1"], layers[f"stage_{stage}.{b}.conv2"]
            )
    return folded.eval()


def _program(
    model: SWRN, plans: Mapping[str, BankFold]
) -> tuple[dict[str, Any], dict[str, LayerFold]]:
    """The loop program of the folded ``model`` and every shared layer's fold, by layer name."""
    settings = {(m.eps, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    if len(settings) != 1:
        raise ValueError(f"the model's BatchNorms differ in eps/momentum ({sorted(settings)})")
    (eps, momentum), n = settings.pop(), model.num_blocks
    layers: dict[str, LayerFold] = {}
    banks: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    for i in (1, 2, 3):
        name, templates = f"bank_{i}", getattr(model, f"bank_{i}").templates
        expected = [f"stage_{i}.{b}.conv{r}" for b in range(1, n) for r in (1, 2)]
        plan = plans.get(name)
        if plan is None and expected:
            raise ValueError(f"no fold plan for {name}, which serves {len(expected)} layers")
        found = {} if plan is None else {layer.name: layer for layer in plan.layers}
        if sorted(found) != sorted(expected):
            odd = sorted(set(found) ^ set(expected))[:4]
            raise ValueError(f"the plan for {name} does not cover its layers exactly ({odd})")
        if plan is not None and plan.directions.shape != (len(plan.clusters), templates.shape[0]):
            raise ValueError(f"the plan for {name} has directions of shape {plan.directions.shape}")
        layers.update(found)
        banks[name] = {
            "storage": "templates" if plan is not None and not plan.stores_weights else "weights",
            "clusters": 0 if plan is None else len(plan.clusters),
            "K": int(templates.shape[0]),
            "shape": [int(s) for s in templates.shape[1:]],
        }
        stages[f"stage_{i}"] = _segments(i, n, layers)
    program = {
        "format": PROGRAM_FORMAT,
        "version": PROGRAM_VERSION,
        "depth": model.depth,
        "width": model.width,
        "num_templates": model.num_templates,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "batchnorm": {"eps": eps, "momentum": momentum},
        "banks": banks,
        "stages": stages,
    }
    return program, layers


def _segments(stage: int, n: int, layers: Mapping[str, LayerFold]) -> list[dict[str, Any]]:
    """Maximal runs of consecutive shared blocks with the same (conv1, conv2) clusters."""
    segments: list[dict[str, Any]] = []
    keys: list[tuple[int, int]] = []
    for b in range(1, n):
        f1, f2 = layers[f"stage_{stage}.{b}.conv1"], layers[f"stage_{stage}.{b}.conv2"]
        if not keys or keys[-1] != (f1.cluster, f2.cluster):
            keys.append((f1.cluster, f2.cluster))
            segments.append(
                {
                    "conv1_cluster": f1.cluster,
                    "conv2_cluster": f2.cluster,
                    "iterations": 0,
                    "gain_iterations": [],  # conv2's explicit gains
                    "conv1_gain_iterations": [],  # conv1's (only for a zero scale)
                }
            )
        last = segments[-1]
        t = last["iterations"]
        if f1.absorb is Absorb.GAIN:
            last["conv1_gain_iterations"].append(t)
        if f2.absorb is Absorb.GAIN:
            last["gain_iterations"].append(t)
        last["iterations"] = t + 1
    return segments


# --- files ---------------------------------------------------------------------------------------


def save_folded(
    folded: FoldedSWRN, path: str | os.PathLike[str], *, report: dict[str, Any] | None = None
) -> None:
    """Write ``folded`` as safetensors with its program in the header, atomically.

    The header's ``__metadata__`` holds ``format``, ``format_version``, ``program`` and
    ``report`` (JSON strings): enough to rebuild the module without running any code.
    """
    from soft_share_cli.files import save_safetensors

    tensors = {k: v.detach().contiguous() for k, v in folded.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "program": json.dumps(folded.program()),
        "report": json.dumps(report or {}),
    }
    save_safetensors(path, tensors, metadata)  # atomically, with the umask's mode


def folded_metadata(path: str | os.PathLike[str], header: dict[str, str]) -> dict[str, Any]:
    """The parsed ``program`` and ``report`` of a folded file's safetensors header.

    Raises:
        CheckpointError: the header is not a readable folded-network header.
    """
    if header.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path}: not a folded network (its header says format "
            f"{header.get('format')!r}); make one with `ssc fold`"
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: folded format version {header.get('format_version')!r}; "
            f"this ssc reads version {FORMAT_VERSION}"
        )
    parsed: dict[str, Any] = {"format_version": int(FORMAT_VERSION)}
    for name in ("program", "report"):
        try:
            value = loads_json(header.get(name, "null"), f"{path}: its '{name}' metadata")
        except ValueError:
            raise CheckpointError(f"{path}: its '{name}' metadata is not valid JSON") from None
        if not isinstance(value, dict):
            raise CheckpointError(f"{path}: its '{name}' metadata is missing or not a JSON object")
        parsed[name] = value
    return parsed


def load_folded(path: str | os.PathLike[str]) -> FoldedSWRN:
    """Rebuild a folded network saved by :func:`save_folded`, in eval mode; never runs code.

    Raises:
        CheckpointError: the file is missing, corrupt, not a folded network, or its weights do
            not fit its program.
    """
    from soft_share_cli.checkpoints.load import load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.container != FORMAT_NAME:
        raise CheckpointError(
            f"{path}: not a folded network (a {ckpt.format} file holding a "
            f"{ckpt.container}); make one with `ssc fold`"
        )
    return build_checked(path, FoldedSWRN.from_program, ckpt.metadata["program"], ckpt.state_dict)


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
    from soft_share_cli.limits import check_built_size
    from soft_share_cli.models.builder import check_state_dict_fits, load_state_dict_checked
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


def is_folded_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file whose header marks a folded network (header only)."""
    if not os.path.isfile(path):  # a FIFO, device or socket is no file (and would block)
        return False
    try:
        with Path(path).open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= 100_000_000:  # safetensors' own header limit
                return False
            header = json.loads(fh.read(size))
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not JSON, too deep
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME
