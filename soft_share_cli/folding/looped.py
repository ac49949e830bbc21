"""Folded fully convolutional nets: the shared body as a real loop that can run longer.

:func:`fold_sfcn` turns a trained :class:`~soft_share_cli.models.recurrent.SFCN` and the fold
plan of its one bank (:func:`soft_share_cli.analysis.plan.plan_bank`) into a :class:`LoopedFCN`: the
distinct weights are stored once (:class:`~soft_share_cli.folding.bank.FoldedBank`), runs of
consecutive blocks whose two convs fall in the same clusters become :class:`LoopSegment`\\ s,
and a Python ``for`` loop runs each. Every layer's least-squares scale stays an explicit gain
(no BatchNorm to absorb it), so with exactly parallel coefficients the fold is exact; a layer
whose cluster is its own coefficients (``Absorb.UNIT``) has none. A segment lists the iterations
whose convs carry a gain (``conv{1,2}_gain_iterations``; without the lists: every iteration).
A 1-d SFCN folds into a loop of 1-d convolutions (``"dims": 1``; programs without it are 2-d).

**Thinking longer.** ``LoopedFCN.iterations`` (default: the trained number of blocks) is the
total number of block applications. Fewer stop early; more keep running the *last* segment with
its last iteration's weights and gains — the step the network was trained to take last. This is
the eval-time override of ``ssc eval FOLDED --iterations I``.

Files are the ``ssc-folded`` safetensors of :mod:`soft_share_cli.folding.swrn` with a program tagged
``ssc-fcn-loops``: weights plus JSON, nothing to execute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.analysis.plan import Absorb, BankFold
from soft_share_cli.errors import CheckpointError
from soft_share_cli.folding.bank import STORAGES, FoldedBank
from soft_share_cli.limits import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_CLUSTERS,
    MAX_ITERATIONS,
    MAX_SEGMENTS,
    MAX_TEMPLATES,
    count,
)
from soft_share_cli.models.layers import CONVS, conv
from soft_share_cli.models.recurrent import SFCN, Head, check_dims, describe_fcn

PROGRAM_FORMAT = "ssc-fcn-loops"
PROGRAM_VERSION = 1


class LoopSegment(nn.Module):
    """``iterations`` consecutive blocks sharing two weights, each conv with its own gain.

    Only the iterations listed in ``conv1_gain_iterations`` / ``conv2_gain_iterations`` (None:
    every iteration) have a gain for that conv (``conv1_gains`` / ``conv2_gains``, one entry per
    listed iteration, in order); the others run with the cluster's weight as it is.
    """

    conv1_gains: nn.Parameter | None
    conv2_gains: nn.Parameter | None

    def __init__(
        self,
        conv1_cluster: int,
        conv2_cluster: int,
        iterations: int,
        conv1_gain_iterations: Sequence[int] | None = None,
        conv2_gain_iterations: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"a loop segment needs at least one iteration, got {iterations}")
        self.conv1_cluster = conv1_cluster
        self.conv2_cluster = conv2_cluster
        self.iterations = iterations
        self._slots: dict[int, dict[int, int]] = {}
        for r, listed in ((1, conv1_gain_iterations), (2, conv2_gain_iterations)):
            listed = list(range(iterations)) if listed is None else list(listed)
            if not _iterations_list(listed, iterations):
                raise ValueError(f"gain iterations {listed} must be sorted, unique, valid")
            self._slots[r] = {t: j for j, t in enumerate(listed)}
            param = nn.Parameter(torch.ones(len(listed))) if listed else None
            self.register_parameter(f"conv{r}_gains", param)

    def gain(self, conv: int, t: int) -> Tensor | None:
        """The explicit gain of conv ``conv`` (1 or 2) at iteration ``t``, or None (none)."""
        gains = self.conv1_gains if conv == 1 else self.conv2_gains
        j = self._slots[conv].get(t)
        return None if j is None or gains is None else gains[j]

    def step(self, h: Tensor, recall: Tensor | None, bank: FoldedBank, t: int) -> Tensor:
        """Block ``t`` of the segment: ``h + g2 W2 * relu(g1 W1 * relu(h [+ recall]))``."""
        z = h if recall is None else h + recall
        out = conv(F.relu(z), bank.weight(self.conv1_cluster), None, 1, 1)
        if (g1 := self.gain(1, t)) is not None:
            out = out * g1
        out = conv(F.relu(out), bank.weight(self.conv2_cluster), None, 1, 1)
        if (g2 := self.gain(2, t)) is not None:
            out = out * g2
        return h + out

    def extra_repr(self) -> str:
        return (
            f"conv1_cluster={self.conv1_cluster}, conv2_cluster={self.conv2_cluster}, "
            f"iterations={self.iterations}"
        )


class LoopedFCN(nn.Module):
    """A folded SFCN: stem, looped body segments, head; built from a JSON program."""

    def __init__(self, program: dict[str, Any]) -> None:
        super().__init__()
        check_program(program)
        self._program = json.loads(json.dumps(program))
        p = self._program
        self.width, self.num_classes = int(p["width"]), int(p["num_classes"])
        self.in_channels, self.recall = int(p["in_channels"]), bool(p["recall"])
        self.trained_iterations = sum(int(s["iterations"]) for s in p["segments"])
        self.iterations = self.trained_iterations  # override to think longer (or shorter)
        self.dims = int(p.get("dims", 2))  # programs before 1-d networks have no "dims": 2-d
        self.stem = CONVS[self.dims](self.in_channels, self.width, 3, padding=1, bias=False)
        width, bank = self.width, p["bank"]
        shape = [width, width] + [3] * self.dims
        self.bank = FoldedBank(bank["storage"], bank["clusters"], bank["K"], shape)
        self.segments = nn.ModuleList(
            LoopSegment(s["conv1_cluster"], s["conv2_cluster"], s["iterations"],
                        s.get("conv1_gain_iterations"), s.get("conv2_gain_iterations"))
            for s in p["segments"]
        )  # fmt: skip
        self.head = Head(self.width, self.num_classes, self.dims)

    def program(self) -> dict[str, Any]:
        """The loop program (JSON-able): everything needed to rebuild this skeleton."""
        return json.loads(json.dumps(self._program))

    def describe(self) -> str:
        """E.g. ``SFCN 12x32, K=4 (...) looped: 1 loop (12 iterations)``."""
        p = self._program
        source = describe_fcn("sfcn", {**p, "blocks": self.trained_iterations})
        runs = "+".join(str(s["iterations"]) for s in p["segments"])
        loops = len(p["segments"])
        text = f"{source} looped: {loops} loop{'s' if loops != 1 else ''} ({runs} iterations)"
        if self.iterations != self.trained_iterations:
            text += f", run for {self.iterations} iterations"
        return text

    def loop_segments(self) -> list[LoopSegment]:
        """The body's segments, in execution order."""
        return [s for s in self.segments if isinstance(s, LoopSegment)]

    def schedule(self, iterations: int | None = None) -> list[tuple[int, int]]:
        """``(segment, iteration)`` for each block application of a run of ``iterations``."""
        n = self.iterations if iterations is None else iterations
        order = [
            (j, t) for j, seg in enumerate(self.loop_segments()) for t in range(seg.iterations)
        ]
        if n <= len(order):
            return order[:n]
        return order + [order[-1]] * (n - len(order))

    def forward(self, x: Tensor) -> Tensor:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        e = self.stem(x)
        h = e
        recall = e if self.recall else None
        segments = self.loop_segments()
        done = 0
        for segment in segments:  # the real loops
            for t in range(min(segment.iterations, self.iterations - done)):
                h = segment.step(h, recall, self.bank, t)
            done += min(segment.iterations, self.iterations - done)
        last = segments[-1]
        for _ in range(self.iterations - done):  # thinking longer: repeat the last step
            h = last.step(h, recall, self.bank, last.iterations - 1)
        return self.head(h)

    def trajectory(self, x: Tensor, iterations: int) -> Iterator[Tensor]:
        """The logits after each of ``iterations`` block applications, in one pass.

        Identical to ``forward`` with ``self.iterations = n`` for every ``n <= iterations``, at
        the cost of one run of the longest (a sweep over iteration counts needs no reruns).
        """
        e = self.stem(x)
        h = e
        recall = e if self.recall else None
        segments = self.loop_segments()
        for j, t in self.schedule(iterations):
            h = segments[j].step(h, recall, self.bank, t)
            yield self.head(h)


def check_program(p: Any) -> None:
    """Raise ValueError unless ``p`` is a consistent ``ssc-fcn-loops`` program."""
    if not isinstance(p, dict) or (p.get("format"), p.get("version")) != (
        PROGRAM_FORMAT,
        PROGRAM_VERSION,
    ):
        raise ValueError(f"not a looped FCN program (expected format {PROGRAM_FORMAT!r})")
    try:
        count(p["width"], "the loop program's width", limit=MAX_CHANNELS,
                      name="MAX_CHANNELS", minimum=1)  # fmt: skip
        count(p["num_classes"], "its classes", limit=MAX_CLASSES, name="MAX_CLASSES", minimum=1)
        count(p["in_channels"], "its input channels", limit=MAX_CHANNELS, name="MAX_CHANNELS",
              minimum=1)  # fmt: skip
        if "num_templates" in p:
            count(p["num_templates"], "its templates", limit=MAX_TEMPLATES, name="MAX_TEMPLATES",
                  minimum=1)  # fmt: skip
        bank, segments = p["bank"], p["segments"]
        clusters = count(bank["clusters"], "its bank's clusters", limit=MAX_CLUSTERS,
                         name="MAX_CLUSTERS", minimum=1)  # fmt: skip
        count(bank["K"], "its bank's templates", limit=MAX_TEMPLATES, name="MAX_TEMPLATES",
              minimum=1)  # fmt: skip
        if bank["storage"] not in STORAGES:
            raise ValueError("the bank has a bad storage")
        if not isinstance(segments, list) or not segments:
            raise ValueError("the body needs at least one segment of at least one iteration")
        count(len(segments), "its loop segments", limit=MAX_SEGMENTS, name="MAX_SEGMENTS")
        total = 0
        for s in segments:
            runs = count(s["iterations"], "a loop segment", limit=MAX_ITERATIONS,
                         name="MAX_ITERATIONS", minimum=1)  # fmt: skip
            total += runs
            for listed in (s.get("conv1_gain_iterations"), s.get("conv2_gain_iterations")):
                if listed is not None and not _iterations_list(listed, runs):
                    raise ValueError("a segment lists bad gain iterations")
            for r in (1, 2):
                c = count(s[f"conv{r}_cluster"], "a cluster index", limit=MAX_CLUSTERS,
                          name="MAX_CLUSTERS")  # fmt: skip
                if c >= clusters:
                    raise ValueError("a segment uses a cluster the bank lacks")
        count(total, "its iterations in all", limit=MAX_ITERATIONS, name="MAX_ITERATIONS")
        check_dims(p.get("dims", 2))
        if type(p["recall"]) is not bool:
            raise ValueError(f"recall should be true or false, got {p['recall']!r}")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed looped FCN program ({type(exc).__name__}: {exc})") from None


def _iterations_list(listed: Any, runs: int) -> bool:
    """A sorted list of distinct iteration indices below ``runs`` (checked before it is read)."""
    return (
        isinstance(listed, list)
        and len(listed) <= runs
        and sorted(set(listed)) == listed
        and all(type(t) is int and 0 <= t < runs for t in listed)
    )


def is_looped_program(program: Any) -> bool:
    """Whether a folded file's program describes a :class:`LoopedFCN`."""
    return isinstance(program, dict) and program.get("format") == PROGRAM_FORMAT


def fold_sfcn(model: SFCN, plan: BankFold) -> LoopedFCN:
    """Fold ``model``'s bank as ``plan`` says; returns a new :class:`LoopedFCN` in eval mode.

    Raises:
        TypeError: ``model`` is not an SFCN.
        ValueError: the plan does not cover the body's convs exactly.
    """
    if not isinstance(model, SFCN):
        raise TypeError(f"fold_sfcn folds an SFCN, got {type(model).__name__}")
    layers = {layer.name: layer for layer in plan.layers}
    expected = [f"body.{b}.conv{r}" for b in range(model.blocks) for r in (1, 2)]
    if sorted(layers) != sorted(expected):
        odd = sorted(set(layers) ^ set(expected))[:4]
        raise ValueError(f"the plan does not cover the body's convs exactly ({odd})")
    odd = [x.name for x in plan.layers if x.absorb not in (Absorb.GAIN, Absorb.UNIT)]
    if odd:
        raise ValueError(f"an SFCN has no BatchNorm to absorb a scale into ({odd[:4]})")
    segments: list[dict[str, Any]] = []
    for b in range(model.blocks):
        key = (layers[f"body.{b}.conv1"].cluster, layers[f"body.{b}.conv2"].cluster)
        if not segments or (segments[-1]["conv1_cluster"], segments[-1]["conv2_cluster"]) != key:
            segments.append({"conv1_cluster": key[0], "conv2_cluster": key[1], "iterations": 0,
                             "conv1_gain_iterations": [], "conv2_gain_iterations": []})  # fmt: skip
        last = segments[-1]
        for r in (1, 2):  # a layer that is its own cluster's coefficients needs no gain
            if layers[f"body.{b}.conv{r}"].absorb is Absorb.GAIN:
                last[f"conv{r}_gain_iterations"].append(last["iterations"])
        last["iterations"] += 1
    program = {
        "format": PROGRAM_FORMAT,
        "version": PROGRAM_VERSION,
        "width": model.width,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "recall": model.recall,
        "dims": model.dims,
        "num_templates": model.num_templates,
        "bank": {
            "storage": "weights" if plan.stores_weights else "templates",
            "clusters": len(plan.clusters),
            "K": model.num_templates,
        },
        "segments": segments,
    }
    reference = model.stem.weight
    looped = LoopedFCN(program).to(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        looped.stem.load_state_dict(model.stem.state_dict())
        looped.head.load_state_dict(model.head.state_dict())
        templates = model.bank.templates.detach()
        u = torch.as_tensor(plan.directions, dtype=torch.float64)
        if looped.bank.weights is not None:  # float64 mix on the CPU, one rounding when cast
            mixed = torch.tensordot(u, templates.to(device="cpu", dtype=torch.float64), dims=1)
            looped.bank.weights.copy_(mixed)
        else:
            assert looped.bank.templates is not None and looped.bank.directions is not None
            looped.bank.templates.copy_(templates)
            looped.bank.directions.copy_(u)
        for b, (j, t) in enumerate(looped.schedule()):
            segment = looped.segments[j]
            assert isinstance(segment, LoopSegment)
            for r in (1, 2):
                gain = segment.gain(r, t)
                if gain is not None:
                    gain.fill_(layers[f"body.{b}.conv{r}"].scale)
    return looped.eval()


def looped_state_dict_view(looped: LoopedFCN) -> dict[str, Tensor]:
    """A soft-shared view of ``looped`` for ``ssc analyze``.

    ``bank.templates`` holds what the bank stores as templates
    (:meth:`~soft_share_cli.folding.bank.FoldedBank.view_templates`: its K templates or its C
    distinct weights); block ``b``'s convs keep their original names with
    ``body.<b>.conv<r>.coefficients``: their cluster's direction times their gain.
    """
    view = {
        k: v.detach()
        for k, v in looped.state_dict().items()
        if not k.startswith(("bank.", "segments."))
    }
    with torch.no_grad():
        templates = view["bank.templates"] = looped.bank.view_templates()
        for b, (j, t) in enumerate(looped.schedule(looped.trained_iterations)):
            segment = looped.segments[j]
            assert isinstance(segment, LoopSegment)
            for r, cluster in ((1, segment.conv1_cluster), (2, segment.conv2_cluster)):
                view[f"body.{b}.conv{r}.coefficients"] = looped.bank.view_coefficients(
                    cluster, segment.gain(r, t)
                )
                # the same tensor under each conv's key, as an SFCN's state dict has it (one
                # storage: counted once), so the view rebuilds as the SFCN it was folded from
                view[f"body.{b}.conv{r}.bank.templates"] = templates
    return view


def looped_source(looped: LoopedFCN, view: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """The architecture (name, constructor arguments) that :func:`looped_state_dict_view`'s
    ``view`` of ``looped`` loads into: an SFCN of its trained depth."""
    p = looped.program()
    return "sfcn", {
        "blocks": looped.trained_iterations,
        "width": p["width"],
        "num_templates": int(view["bank.templates"].shape[0]),
        "num_classes": p["num_classes"],
        "in_channels": p["in_channels"],
        "recall": p.get("recall", True),
        "dims": p.get("dims", 2),
    }


def save_looped(
    looped: LoopedFCN, path: str | os.PathLike[str], *, report: Mapping[str, Any] | None = None
) -> None:
    """Write ``looped`` as ``ssc-folded`` safetensors with its program in the header, atomically."""
    from soft_share_cli.checkpoints.folded_header import FORMAT_NAME, FORMAT_VERSION
    from soft_share_cli.files import save_safetensors

    tensors = {k: v.detach().contiguous() for k, v in looped.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "program": json.dumps(looped.program()),
        "report": json.dumps(dict(report or {})),
    }
    save_safetensors(path, tensors, metadata)  # atomically, with the umask's mode


def load_looped(path: str | os.PathLike[str]) -> LoopedFCN:
    """Rebuild a network saved by :func:`save_looped`, in eval mode; never runs code.

    Raises:
        CheckpointError: not a looped FCN file, or its weights do not fit its program.
    """
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.models.builder import build_checked

    ckpt = load_checkpoint(path)
    program = ckpt.metadata.get("program") if ckpt.container == "ssc-folded" else None
    if not is_looped_program(program):
        raise CheckpointError(f"{path}: not a looped FCN (make one with `ssc fold` on an SFCN)")
    assert isinstance(program, dict)
    return build_checked(path, LoopedFCN, program, ckpt.state_dict)
