"""A folded SWRN: each cluster's weight stored once and blocks that reuse it run in a real loop.

:func:`fold_swrn` turns a trained SWRN and its fold plan (:mod:`soft_share_cli.analysis.plan`) into
a :class:`FoldedSWRN`, an eager module whose shared blocks are :class:`LoopedBlock` segments: one
pre-activation block executed ``iterations`` times by a Python ``for`` loop with a BatchNorm pair
per iteration (torch.fx and torch.export would unroll such a loop; an eager module keeps it).
Layer scales go into those BatchNorms where that is exact and stay explicit gains where it is not
(:func:`soft_share_cli.folding.swrn_blocks.place_scales`). The structure is a JSON *program*
(:mod:`soft_share_cli.folding.swrn_program`), so a folded file is safetensors weights plus that
program (:func:`save_folded`, :func:`load_folded`; its header:
:mod:`soft_share_cli.checkpoints.folded_header`): no pickle, nothing to execute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from soft_share_cli.analysis.plan import BankFold
from soft_share_cli.checkpoints.folded_header import FORMAT_NAME, FORMAT_VERSION
from soft_share_cli.errors import CheckpointError
from soft_share_cli.folding.bank import FoldedBank
from soft_share_cli.folding.materialize import COPIED, folded_state_dict_view, materialize
from soft_share_cli.folding.swrn_blocks import LoopedBlock, place_scales
from soft_share_cli.folding.swrn_program import check_program, swrn_program
from soft_share_cli.models.builder import build_checked
from soft_share_cli.models.layers import allocate
from soft_share_cli.models.wrn import SWRN, Block

__all__ = [
    "FoldedBank",
    "FoldedSWRN",
    "LoopedBlock",
    "fold_swrn",
    "folded_state_dict_view",
    "load_folded",
    "materialize",
    "save_folded",
]


class FoldedSWRN(nn.Module):
    """An SWRN whose shared blocks run as loops; built from a JSON program (see :meth:`program`).

    Modules: ``conv_3x3``; per stage ``i`` the unshared ``stage_i_first`` block and the
    ``stage_i_loops`` list of :class:`LoopedBlock`; per used bank ``bank_i`` (:class:`FoldedBank`);
    ``lastact``, adaptive ``avgpool`` and ``classifier``.
    """

    def __init__(self, program: dict[str, Any]) -> None:
        super().__init__()
        check_program(program)
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
                assert bank is not None  # check_program: segments imply clusters
                x = segment(x, bank)
        x = self.avgpool(self.lastact(x))
        return self.classifier(torch.flatten(x, 1))


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
    program, layers = swrn_program(model, plans)
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
