"""The JSON *program* of a folded SWRN: made from a model and its fold plan, checked when read.

:func:`swrn_program` describes the folded network :func:`soft_share_cli.folding.swrn.fold_swrn`
builds: per stage the runs of consecutive shared blocks with the same clusters (one looped
segment each) and per bank how its clusters are stored. :func:`check_program` is what a program
read from a file must pass before :class:`~soft_share_cli.folding.swrn.FoldedSWRN` builds anything
from it: every count strictly an int within :mod:`soft_share_cli.limits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from soft_share_cli.analysis.plan import Absorb, BankFold, LayerFold
from soft_share_cli.folding.bank import STORAGES
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
)
from soft_share_cli.models.wrn import SWRN

PROGRAM_FORMAT = "ssc-swrn-loops"  # the program's own tag (user-model folds have another)
PROGRAM_VERSION = 1


def check_program(p: Any) -> None:
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
    """The checks of :func:`check_program`; every count strictly an int within its limit."""
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


def swrn_program(
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
