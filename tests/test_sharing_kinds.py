"""Every kind of cross-layer sharing of issue 13, on the networks of ``tests/sharing_zoo.py``.

Each network is built from a seed with exactly parallel (or tied) layers planted, its state dict
saved in ``tmp_path`` and the zoo's code written there as ``zoo.py`` with a ``factory`` (built from
another seed, so only the checkpoint can make it agree), as a user would pass it to ``--model``.

From the state dict, soft sharing under other names and shapes and hard ties are found with the
right layers, clusters and counts; shared bases and flat stores cannot be seen without running
the network, and ``analyze`` says so. With ``--model`` the trace finds every kind. The zoo's
networks call their shared convs inline in a parent's ``forward``, which ``ssc fold --model``
refuses (no module stands for the call: exit 2, one line); their ``wrap=True`` variants (each
shared call a module of its own, the same state dict) fold, keep their logits and never grow,
and ``analyze --model``'s ``folded`` is what ``fold`` writes. Every expected count is computed
here from the network's sizes: ``checkpoint_unique`` by storage, ``unshared_equivalent`` with one
weight (and bias) per conv or linear *call*, everything else (BatchNorms) as stored.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sharing_zoo as zoo  # noqa: E402

ZOO = Path(zoo.__file__)
#: The classes whose shared calls are made inline unless ``wrap=True``.
WRAPPABLE = ("SoftBankNet", "TwoBankNet", "LinearBankNet", "BasisNet", "StoreNet")


@dataclass(frozen=True)
class Case:
    """One network of the zoo: its class, sizes, planted groups and what an analysis must find."""

    id: str
    kind: str  # "soft", "tie", "basis", "store"
    cls: str
    kwargs: dict[str, Any]
    planted: tuple[tuple[int, ...], ...] = ()  # forward-order layer indices made parallel
    banks: tuple[int, ...] = ()  # layers per shared group, in forward order
    state_layers: tuple[str, ...] = field(default=(), compare=False)  # layer names, state dict

    @property
    def in_channels(self) -> int:
        return int(self.kwargs.get("in_channels", 1))

    @property
    def classes(self) -> int:
        return int(self.kwargs.get("classes", 10))

    def build(self, seed: int) -> nn.Module:
        cls = getattr(zoo, self.cls)
        return zoo.seeded(seed, lambda: cls(**self.kwargs))

    def tied(self) -> Sequence[tuple[int, int]]:
        return tuple(self.kwargs.get("tied", ()))

    @property
    def inline(self) -> bool:
        """Its shared convs/linears are called inline by a parent's forward (fold refuses)."""
        return self.cls in WRAPPABLE and not self.kwargs.get("wrap", False)

    def wrapped(self) -> Case:
        """The same network (same state dict) with every shared call a module of its own."""
        return replace(self, id=f"{self.id}-wrapped", kwargs={**self.kwargs, "wrap": True})


def _soft_names(n: int, nested: bool = False) -> tuple[str, ...]:
    if nested:
        return tuple(f"stages.{i // 4}.{i % 4 // 2}.{'ab'[i % 2]}" for i in range(n))
    return tuple(f"blocks.{i}" for i in range(n))


CASES = [
    Case("soft-mixed-shapes", "soft", "SoftBankNet",
         {"k": 3, "width": 4, "layers": 4, "alpha_shapes": ("k", "1k", "k1111")},
         ((0, 2),), (4,), _soft_names(4)),
    Case("soft-nested-rgb", "soft", "SoftBankNet",
         {"k": 4, "width": 6, "layers": 6, "alpha_shapes": ("1k",), "nested": True,
          "in_channels": 3, "classes": 5},
         ((1, 4), (0, 5)), (6,), _soft_names(6, nested=True)),
    Case("two-banks", "soft", "TwoBankNet", {"k": (3, 4), "width": 4, "layers": (3, 4)},
         ((0, 2), (3, 5, 6)), (3, 4),
         (*(f"stage1.layers.{i}" for i in range(3)), *(f"stage2.layers.{i}" for i in range(4)))),
    Case("linear-bank", "soft", "LinearBankNet", {"k": 3, "width": 5, "layers": 4},
         ((1, 3),), (4,), tuple(f"mlp.{i}" for i in range(4))),
    Case("linear-bank-rgb", "soft", "LinearBankNet",
         {"k": 4, "width": 8, "layers": 5, "in_channels": 3, "classes": 7},
         ((0, 2, 4),), (5,), tuple(f"mlp.{i}" for i in range(5))),
    Case("tied-coefficients", "soft", "SoftBankNet",
         {"k": 3, "width": 4, "layers": 5, "tied": ((1, 3),)},
         ((0, 4),), (5,), _soft_names(5)),
    Case("tied-blocks", "tie", "TiedBlocksNet", {"width": 4, "runs": (3, 2)}, (), (3, 2),
         ("blocks.0.conv", "blocks.3.conv")),
    Case("tied-blocks-holder-rgb", "tie", "TiedBlocksNet",
         {"width": 6, "runs": (4,), "holder": True, "in_channels": 3}, (), (4,), ("shared.0",)),
    Case("basis-einsum", "basis", "BasisNet", {"rank": 3, "width": 4, "layers": 4},
         ((0, 2),), (4,)),
    Case("basis-matmul-rgb", "basis", "BasisNet",
         {"rank": 5, "width": 6, "layers": 5, "matmul": True, "in_channels": 3},
         ((1, 3, 4),), (5,)),
    Case("basis-bn-1x1", "basis", "BasisBNNet", {"rank": 3, "width": 4, "layers": 4},
         ((0, 3),), (4,)),
    Case("store", "store", "StoreNet", {"width": 4}, ((0, 2),), (4,)),
    Case("store-rgb", "store", "StoreNet",
         {"width": 6, "layout": ((0, 3), (2, 2), (0, 4), (1, 2), (2, 3)), "fc_k": 3,
          "in_channels": 3, "classes": 6},
         ((0, 2), (1, 4)), (5,)),
    # Many windows per layer, three layers parallel: the store outweighs its distinct weights, so
    # this one folds (the two above are kept as they are: folding them would store more).
    Case("store-parallel", "store", "StoreNet",
         {"width": 8, "layout": ((0, 6), (0, 6), (0, 6), (1, 3))}, ((0, 1, 2),), (4,)),
]  # fmt: skip
WRAPPED = [c.wrapped() for c in CASES if c.inline]
#: What ``ssc fold --model`` folds: the wrapped variants and the networks with no inline call.
FOLDABLE = WRAPPED + [c for c in CASES if c.cls not in WRAPPABLE]
BY_ID = {case.id: case for case in CASES + WRAPPED}
FROM_STATE_DICT = [c for c in CASES if c.kind in ("soft", "tie")]
NOT_FROM_STATE_DICT = [c for c in CASES if c.kind in ("basis", "store")]


def _ids(cases: Sequence[Case]) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in cases]


# --- what the answer is, from the sizes ----------------------------------------------------------


def _conv(i: int, o: int, k: int = 3, bias: bool = True) -> int:
    return i * o * k * k + (o if bias else 0)


def _linear(i: int, o: int) -> int:
    return i * o + o


def expected_counts(case: Case, model: nn.Module) -> tuple[int, int]:
    """``(checkpoint_unique, unshared_equivalent)`` from the network's sizes alone."""
    a = case.kwargs
    c, n = case.in_channels, case.classes
    w = a.get("width", 4)
    stem, head = _conv(c, w), _linear(w, n)
    if case.cls == "SoftBankNet":
        k, layers = a["k"], a["layers"]
        kept = stem + head + layers * 2 * w  # stem, head, BatchNorms
        unique = kept + k * w * w * 9 + (layers - len(case.tied())) * k
        return unique, kept + layers * w * w * 9
    if case.cls == "TwoBankNet":
        (k1, k2), (l1, l2) = a["k"], a["layers"]
        kept = stem + _conv(w, 2 * w, 1) + _linear(2 * w, n) + l1 * 2 * w + l2 * 4 * w
        banks = k1 * w * w * 9 + k2 * 4 * w * w * 9 + l1 * k1 + l2 * k2
        return kept + banks, kept + (l1 + 4 * l2) * w * w * 9
    if case.cls == "LinearBankNet":
        k, layers = a["k"], a["layers"]
        kept = stem + head + layers * w  # the layers' own biases
        return kept + k * w * w + layers * k, kept + layers * w * w
    if case.cls == "TiedBlocksNet":
        runs = a["runs"]
        kept = stem + head + sum(runs) * 2 * w
        return kept + len(runs) * w * w * 9, kept + sum(runs) * w * w * 9
    if case.cls == "BasisNet":
        r, layers = a["rank"], a["layers"]
        kept = stem + head + layers * 2 * w
        return kept + r * w * 9 + layers * w * r, kept + layers * w * w * 9
    if case.cls == "BasisBNNet":
        r, layers = a["rank"], a["layers"]
        kept = stem + head + 2 * r + layers * 2 * w  # the basis's BatchNorm once, the layers'
        unique = kept + r * w * 9 + layers * r * w
        return unique, kept + layers * (r * w * 9 + r * w)  # every call: basis and 1×1 conv
    if case.cls == "StoreNet":
        layout = a.get("layout", ((0, 2), (1, 3), (0, 3), (2, 2)))
        fc_k = a.get("fc_k", 2)
        store = int(model.store.numel())  # its length: the windows' reach
        kept = stem + len(layout) * 2 * w + n  # stem, BatchNorms, the fc's bias
        unique = kept + store + sum(k for _, k in layout) + fc_k
        return unique, kept + len(layout) * w * w * 9 + n * w
    raise AssertionError(case.cls)


def planted_partitions(case: Case) -> list[list[list[int]]]:
    """Per shared group, the clusters a default-threshold analysis must find (local indices):
    planted groups and tied coefficients together, every other layer alone."""
    parent = list(range(sum(case.banks)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    pairs = [(g[0], m) for g in case.planted for m in g[1:]] + list(case.tied())
    if case.kind == "tie":  # every use of one storage is one weight
        starts = np.cumsum((0, *case.banks))
        pairs += [
            (int(s), int(s) + j)
            for s, n in zip(starts, case.banks, strict=False)
            for j in range(1, n)
        ]
    for i, j in pairs:
        parent[root(j)] = root(i)
    out, start = [], 0
    for n in case.banks:
        groups: dict[int, list[int]] = {}
        for i in range(start, start + n):
            groups.setdefault(root(i), []).append(i - start)
        out.append(sorted(groups.values()))
        start += n
    return out


# --- building the files --------------------------------------------------------------------------


def network(case: Case) -> nn.Module:
    """The planted network the checkpoint holds."""
    return zoo.plant(case.build(seed=7), case.planted)


def write_files(case: Case, tmp_path: Path) -> tuple[nn.Module, Path, str]:
    """The network, its checkpoint, and ``tmp_path/zoo.py:factory`` (built from another seed)."""
    model = network(case)
    ckpt = tmp_path / f"{case.id}.pt"
    torch.save(model.state_dict(), ckpt)
    code = ZOO.read_text() + (
        f"\n\ndef factory():\n    return seeded(99, lambda: {case.cls}(**{case.kwargs!r}))\n"
    )
    (tmp_path / "zoo.py").write_text(code)
    return model, ckpt, f"{tmp_path / 'zoo.py'}:factory"


def npz_data(case: Case, tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    x = rng.normal(size=(12, case.in_channels, 8, 8)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(12) % case.classes)
    return f"npz:{path}"


def _json(run: Any) -> dict:
    assert run.code == 0, run.err
    return run.json()


def _partition(clusters: Sequence[Sequence[int]]) -> list[list[int]]:
    return sorted(sorted(int(i) for i in c) for c in clusters)


def test_the_zoo_is_what_it_says() -> None:
    """Sanity of the zoo itself: logits, seeds, exact planting, counts by storage."""
    for case in CASES + WRAPPED:
        model = network(case)
        x = torch.randn(3, case.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = model(x)
            again = network(case)(x)
        assert logits.shape == (3, case.classes) and torch.equal(logits, again), case.id
        unique, _ = expected_counts(case, model)
        assert sum(p.numel() for p in model.parameters()) == unique, case.id
        mixing = model.mixing()
        for group in case.planted:
            a = mixing[group[0]].detach().reshape(-1)
            for m in group[1:]:
                b = mixing[m].detach().reshape(-1)
                assert not b[a.numel() :].any(), (case.id, m)  # a store layer's extra windows
                cosine = torch.nn.functional.cosine_similarity(a, b[: a.numel()], 0)
                assert abs(float(cosine)) == pytest.approx(1.0, abs=1e-6), (case.id, m)
    assert zoo.ALPHA_SHAPES["k1111"](3) == (3, 1, 1, 1, 1)


@pytest.mark.parametrize("case", _ids(WRAPPED))
def test_a_wrapped_network_is_the_inline_one_with_modules_for_its_calls(case: Case) -> None:
    """Same keys, same values, same logits; only the module tree differs (no parameters added)."""
    inline = BY_ID[case.id.removesuffix("-wrapped")]
    a, b = network(inline), network(case)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(4, case.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), rtol=1e-5, atol=1e-6)
    modules = {type(m).__name__ for m in b.modules()} - {type(m).__name__ for m in a.modules()}
    assert modules and modules <= {"MixConv", "BankLinear", "BasisConv", "WindowOp"}


# --- from the state dict: what works now -------------------------------------------------------


def _state_dict_layers(case: Case) -> list[int]:
    """Layers per group as the state dict lists them: a holder's key is one more key."""
    extra = int(case.kwargs.get("holder", False))
    return [n + extra for n in case.banks]


@pytest.mark.parametrize("case", _ids(FROM_STATE_DICT))
def test_analyze_finds_soft_sharing_and_ties_from_the_state_dict(
    ssc, tmp_path: Path, case: Case
) -> None:
    model, ckpt, _ = write_files(case, tmp_path)
    report = _json(ssc("analyze", str(ckpt), "--json"))
    assert report["issues"] == []
    banks = report["banks"]
    assert [len(b["layers"]) for b in banks] == _state_dict_layers(case)
    want = planted_partitions(case)
    if case.kind == "tie":
        assert [b["kind"] for b in banks] == ["hard-tie"] * len(case.banks)
        assert [b["name"] for b in banks] == list(case.state_layers)
        for b, n, uses in zip(banks, _state_dict_layers(case), case.banks, strict=True):
            assert b["clusters"] == [list(range(n))] and b["templates"] == 1
            assert np.allclose(b["lsm"], 1.0)
            (loop,) = b["loops"]
            assert loop["iterations"] == uses  # the blocks, not the holder's key
        runs = ssc("analyze", str(ckpt))
        for start, length in zip(np.cumsum((0, *case.banks)), case.banks, strict=False):
            text = f"blocks {start}-{start + length - 1} repeat one block (conv A) {length} times"
            assert text in runs.out
        # A holder's key (self.shared = conv) cannot be told from a use by the state dict alone:
        # the report says so in one note (its unshared figure counts it; --model counts calls).
        words = " ".join(runs.out.split())
        assert "a module registered only to hold it (self.shared = conv)" in words
    else:
        assert [b["kind"] for b in banks] == ["soft"] * len(case.banks)
        names = [layer["name"] for b in banks for layer in b["layers"]]
        assert names == list(case.state_layers)
        assert [_partition(b["clusters"]) for b in banks] == want
        leaf = "mix" if case.cls == "LinearBankNet" else "alpha"
        assert all(f"coefficients '{leaf}' by module path" in b["rule"] for b in banks)
        templates = [case.kwargs["k"]] if case.cls != "TwoBankNet" else list(case.kwargs["k"])
        assert [b["templates"] for b in banks] == templates

    unique, unshared = expected_counts(case, model)
    params = report["params"]
    assert params["checkpoint_unique"] == unique
    assert _json(ssc("info", str(ckpt), "--json"))["unique_parameters"] == unique
    if not case.kwargs.get("holder"):
        assert params["unshared_equivalent"] == unshared
    # else: from the state dict alone a holder's key (``shared.0.weight``) looks like one more
    # use; the traced count (test_analyze_with_model_finds_the_planted_groups) is exact.
    if case.kind == "tie":
        assert params["folded"] == unique  # nothing to fold: the tie is kept
    else:  # each cluster stored once (weights or templates), plus at most a gain per storage
        w = case.kwargs["width"]
        if case.cls == "TwoBankNet":
            shapes = [w * w * 9, 4 * w * w * 9]
        else:
            shapes = [w * w * (1 if case.cls == "LinearBankNet" else 9)]
        rest = unshared - sum(n * d for n, d in zip(case.banks, shapes, strict=True))
        storages = sum(case.banks) - len(case.tied())  # coefficient storages: gains at most
        stored = sum(
            min(len(p) * d, k * d + len(p) * k)
            for p, k, d in zip(want, templates, shapes, strict=True)
        )
        assert rest + stored <= params["folded"] <= rest + stored + storages
        assert params["folded"] < unique


@pytest.mark.parametrize("case", _ids(NOT_FROM_STATE_DICT))
def test_analyze_says_a_basis_or_a_store_is_not_in_the_state_dict(
    ssc, tmp_path: Path, case: Case
) -> None:
    """A shared basis ``M_i · B`` or windows of a flat store exist only in the forward pass."""
    model, ckpt, _ = write_files(case, tmp_path)
    run = ssc("analyze", str(ckpt))
    assert run.code == 2 and len(run.err.strip().splitlines()) == 1
    assert "no template banks found" in run.err
    plain = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert f"{plain} conv/linear weights" in run.err
    if case.kind == "store":
        assert "coefficient-like tensors: layers.0.coef" in run.err
    unique, _ = expected_counts(case, model)  # ssc info still counts by storage
    assert _json(ssc("info", str(ckpt), "--json"))["unique_parameters"] == unique


# --- with --model: the traced engine ------------------------------------------------------------


@pytest.mark.parametrize("case", _ids(NOT_FROM_STATE_DICT))
def test_analyze_suggests_model_where_the_state_dict_shows_nothing(
    ssc, tmp_path: Path, case: Case
) -> None:
    _, ckpt, _ = write_files(case, tmp_path)
    run = ssc("analyze", str(ckpt))
    assert run.code == 2 and "--model" in run.err


@pytest.mark.parametrize("case", _ids(CASES + WRAPPED[:2]))
def test_analyze_with_model_finds_the_planted_groups(ssc, tmp_path: Path, case: Case) -> None:
    model, ckpt, spec = write_files(case, tmp_path)
    report = _json(ssc("analyze", str(ckpt), "--model", spec, "--json"))
    found = [(len(b["layers"]), _partition(b["clusters"])) for b in report["banks"]]
    for n, partition in zip(case.banks, planted_partitions(case), strict=True):
        assert (n, partition) in found, (case.id, found)
    unique, unshared = expected_counts(case, model)
    params = report["params"]
    assert params["checkpoint_unique"] == unique
    assert params["unshared_equivalent"] == unshared  # one weight per call, holders or not
    assert params["folded"] <= unique


@pytest.mark.parametrize("case", _ids([c for c in FROM_STATE_DICT if not c.kwargs.get("holder")]))
def test_analyze_with_model_agrees_with_the_state_dict(ssc, tmp_path: Path, case: Case) -> None:
    """Where the state dict shows the sharing, the trace finds the same clusters and figures."""
    _, ckpt, spec = write_files(case, tmp_path)
    static = _json(ssc("analyze", str(ckpt), "--json"))
    traced = _json(ssc("analyze", str(ckpt), "--model", spec, "--json"))
    for figure in ("checkpoint_unique", "unshared_equivalent"):
        assert traced["params"][figure] == static["params"][figure]
    # ``folded``: with --model, what ``ssc fold --model`` writes (tested below); the state dict's
    # is its plan's estimate, and an inline call cannot be folded at all.
    shapes = [(len(b["layers"]), _partition(b["clusters"])) for b in static["banks"]]
    assert [(len(b["layers"]), _partition(b["clusters"])) for b in traced["banks"]] == shapes


@pytest.mark.parametrize("case", _ids([BY_ID["basis-einsum"], BY_ID["store"]]))
def test_plot_similarity_with_model(ssc, tmp_path: Path, case: Case) -> None:
    _, ckpt, spec = write_files(case, tmp_path)
    out = tmp_path / "lsm.png"
    run = ssc("plot-similarity", str(ckpt), "--model", spec, "-o", str(out))
    assert run.code == 0, run.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", _ids(FOLDABLE))
def test_fold_with_model_keeps_logits_and_never_grows(ssc, tmp_path: Path, case: Case) -> None:
    from soft_share_cli.folding.kinds import load_folded

    model, ckpt, spec = write_files(case, tmp_path)
    out = tmp_path / "folded.safetensors"
    analyzed = _json(ssc("analyze", str(ckpt), "--model", spec, "--json"))["params"]
    run = ssc("fold", str(ckpt), "--model", spec, "-o", str(out), "--json")
    unique, unshared = expected_counts(case, model)
    if run.code == 2:  # nothing to fold beyond a tie, or a fold that would not store less
        assert "nothing to fold" in run.err and not out.exists(), run.err
        assert analyzed["folded"] == unique  # analyze says the checkpoint stays as it is
        assert case.kind == "tie" or case.id in ("store-wrapped", "store-rgb-wrapped"), run.err
        if case.kind != "tie":  # the small stores: their distinct weights outweigh the store
            grows = re.search(r"would store ([\d,]+) numbers for the ([\d,]+) it frees", run.err)
            assert grows, run.err
            stored, frees = (int(g.replace(",", "")) for g in grows.groups())
            assert stored >= frees
        return
    report = _json(run)
    info = _json(ssc("info", str(out), "--json"))
    assert info["unique_parameters"] <= unique  # a fold never stores more
    assert report["params"]["folded"] == info["unique_parameters"]  # the report is the file
    assert analyzed["folded"] == info["unique_parameters"]  # analyze --model says what fold does
    assert report["params"]["checkpoint_unique"] == unique
    assert report["params"]["unshared_equivalent"] == unshared

    folded = load_folded(out, model=spec)
    x = torch.randn(6, case.in_channels, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())

    run = ssc("eval", str(out), "--model", spec, "--data", npz_data(case, tmp_path), "--json")
    assert run.code == 0, run.err


@pytest.mark.parametrize("case", _ids([BY_ID["soft-mixed-shapes"], BY_ID["store"]]))
def test_fold_refuses_an_inline_call_and_analyze_says_why(ssc, tmp_path: Path, case: Case) -> None:
    """A shared conv called inline by a parent's forward has no module to replace: the fold is
    refused (exit 2, one line, nothing written) and analyze --model reports the checkpoint's own
    count as ``folded``, with the reason."""
    model, ckpt, spec = write_files(case, tmp_path)
    out = tmp_path / "folded.safetensors"
    run = ssc("fold", str(ckpt), "--model", spec, "-o", str(out))
    assert run.code == 2 and len(run.err.strip().splitlines()) == 1, run.err
    assert "called inline" in run.err and "wrap it in a module of its own" in run.err
    assert not out.exists()
    report = _json(ssc("analyze", str(ckpt), "--model", spec, "--json"))
    unique, _ = expected_counts(case, model)
    assert report["params"]["folded"] == unique
    assert "ssc fold would refuse" in report["fold_note"] and "called inline" in report["fold_note"]
    text = ssc("analyze", str(ckpt), "--model", spec)
    assert text.code == 0 and "ssc fold would refuse" in text.out


def test_a_bank_with_as_many_templates_as_layers_is_smaller_unshared(ssc, tmp_path: Path) -> None:
    """two-banks' second bank has K = 4 templates for 4 layers: K·d + 4·K numbers shared against
    4·d unshared, so the unshared equivalent is below the checkpoint (by the coefficients), by
    the state dict and by the trace alike, and the report says why."""
    case = BY_ID["two-banks"]
    model, ckpt, spec = write_files(case, tmp_path)
    unique, unshared = expected_counts(case, model)
    (k1, k2), (l1, l2) = case.kwargs["k"], case.kwargs["layers"]
    assert (k1, k2) == (l1, l2) and unique - unshared == l1 * k1 + l2 * k2
    for extra in ((), ("--model", spec)):
        run = ssc("analyze", str(ckpt), *extra)
        assert run.code == 0, run.err
        assert "the unshared equivalent is smaller than the checkpoint" in " ".join(run.out.split())
        params = _json(ssc("analyze", str(ckpt), *extra, "--json"))["params"]
        assert (params["checkpoint_unique"], params["unshared_equivalent"]) == (unique, unshared)
