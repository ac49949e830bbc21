"""Folding an SWRN into real loops: exact equivalence, loops, counts, files, views, caching."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import soft_share_cli.folding.swrn_blocks as mat
from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.analysis.banks import find_banks
from soft_share_cli.analysis.plan import Absorb, BankFold, LayerFold, parameter_counts
from soft_share_cli.analysis.similarity import Metric, bank_similarity
from soft_share_cli.checkpoints.folded_header import is_folded_file
from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint
from soft_share_cli.errors import CheckpointError
from soft_share_cli.folding.swrn import (
    FoldedBank,
    FoldedSWRN,
    LoopedBlock,
    fold_swrn,
    folded_state_dict_view,
    load_folded,
    materialize,
    save_folded,
)
from soft_share_cli.models.layers import SConv2d
from soft_share_cli.models.params import count_parameters, count_state_dict_parameters
from soft_share_cli.models.wrn import SWRN, WRN

K = 4
# Cluster of each shared layer of a bank at depth 28 (state-dict order: b1.conv1, b1.conv2, ...).
PATTERNS = {
    "loop": [0, 1, 0, 1, 0, 1],  # conv1s ∝ u_A, conv2s ∝ u_B: one block run 3 times
    "no-loop": [0, 0, 1, 1, 0, 1],  # clusters (0, 1, 4), (2, 3, 5): three 1-iteration segments
    "singletons": [0, 1, 2, 3, 4, 5],  # C = 6 > K: stored as templates + directions
}
SIGNS = [1.0, -1.0, -1.0, 1.0, 1.0, -1.0]  # conv1 and conv2 of both signs, in every pattern


def _swrn(pattern: list[int], seed: int = 0, zero_layer: int | None = None) -> SWRN:
    """An SWRN 28-1-4 whose banks' layers are exactly parallel per cluster, random BNs, eval."""
    torch.manual_seed(seed)
    model = SWRN(28, 1, K, num_classes=10, in_channels=1)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                # Near-dead channels (tiny var, small gamma): for |s| > 1.05 conv1's scale
                # cannot go into var there, and must go into gamma instead.
                m.running_var[:2], m.weight[:2] = 1e-6, 1e-3
        for stage in (1, 2, 3):
            convs = [
                m for m in getattr(model, f"stage_{stage}").modules() if isinstance(m, SConv2d)
            ]
            directions = torch.randn(max(pattern) + 1, K, generator=g)
            for i, conv in enumerate(convs):
                scale = SIGNS[i] * (0.6 + 0.8 * torch.rand((), generator=g))
                coefficients = scale * directions[pattern[i]] / directions[pattern[i]].norm()
                if i == zero_layer:
                    coefficients = torch.zeros(K)  # a zero scale: needs an explicit conv1 gain
                conv.coefficients.copy_(coefficients.view(K, 1, 1, 1, 1))
    return model.eval()


def _plan(model: nn.Module) -> dict[str, BankFold]:
    banks, _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=0.999))
    return {b.bank.name: b.fold for b in banks}


def _batch(seed: int = 7) -> Tensor:
    return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


CASES = [*PATTERNS, "zero-scale"]


def _case(name: str) -> tuple[SWRN, dict[str, BankFold]]:
    if name == "zero-scale":
        model = _swrn(PATTERNS["loop"], seed=3, zero_layer=2)  # block 2's conv1
    else:
        model = _swrn(PATTERNS[name])
    return model, _plan(model)


@pytest.mark.parametrize("case", CASES)
def test_folded_logits_equal_the_original(case: str) -> None:
    model, plans = _case(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_swrn(model, plans)
    assert not folded.training
    x = _batch()
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-4)
    assert float(expected.std()) > 0.1  # not trivially small logits
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is untouched
    if case != "zero-scale":  # near-dead channels took the gamma form of conv1's fold
        kept = [
            bool((seg.bn2[t].running_var == getattr(model, f"stage_{st}")[b].bn2.running_var).any())
            for st, b, seg, t in folded.iterations()
        ]
        assert any(kept)
    # The plan really needed every kind of absorption the case was built for.
    absorbs = {layer.absorb for plan in plans.values() for layer in plan.layers}
    if case == "zero-scale":
        # The zero layer is a cluster alone: its own (zero) coefficients, no gain (UNIT).
        assert [s.gain(1, 0) for s in folded.loops(1)] == [None, None, None]
        unit = [x for plan in plans.values() for x in plan.layers if x.absorb is Absorb.UNIT]
        assert [(x.name, x.scale) for x in unit] == [(f"stage_{i}.2.conv1", 1.0) for i in (1, 2, 3)]
        for stage, x in enumerate(unit, 1):
            bank = folded.bank(stage)
            assert bank is not None and not bool(bank.weight(x.cluster).any())
    elif case == "singletons":  # a lone layer's direction takes its sign: no gain needed
        assert absorbs == {Absorb.BN_STATS, Absorb.BN_AFFINE}
    else:
        assert absorbs == {Absorb.BN_STATS, Absorb.BN_AFFINE, Absorb.GAIN}


def test_clusters_are_found_as_built() -> None:
    _, plans = _case("no-loop")
    assert [list(c) for c in plans["bank_1"].clusters] == [[0, 1, 4], [2, 3, 5]]
    folded = fold_swrn(*_case("no-loop"))
    assert [(s.conv1_cluster, s.conv2_cluster, s.iterations) for s in folded.loops(2)] == [
        (0, 0, 1),
        (1, 1, 1),
        (0, 1, 1),
    ]


@pytest.mark.parametrize(("case", "clusters"), [("loop", 2), ("no-loop", 2), ("singletons", 6)])
def test_shared_layers_use_one_weight_per_cluster(
    case: str, clusters: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    folded = fold_swrn(*_case(case))
    used: list[int] = []

    def spy(x: Tensor, weight: Tensor, **kwargs: int) -> Tensor:
        used.append(weight.data_ptr())
        return F.conv2d(x, weight, **kwargs)

    # Only the looped blocks call swrn_blocks' F; the stem and first blocks are nn.Conv2d.
    monkeypatch.setattr(mat, "F", SimpleNamespace(conv2d=spy, relu=F.relu))
    calls: list[int] = []
    for block in folded.modules():
        if isinstance(block, LoopedBlock):
            block.register_forward_hook(lambda m, i, o: calls.append(m.iterations))
    with torch.no_grad():
        folded(_batch())
    assert len(used) == 3 * 2 * 3  # 3 stages x 3 shared blocks x 2 convs
    assert len(set(used)) == 3 * clusters  # but only C distinct weights per bank
    assert len(calls) == len([m for m in folded.modules() if isinstance(m, LoopedBlock)])
    assert sum(calls) == 9


def test_a_loop_is_a_python_for_loop() -> None:
    folded = fold_swrn(*_case("loop"))
    segments = [folded.loops(stage) for stage in (1, 2, 3)]
    assert [[s.iterations for s in stage] for stage in segments] == [[3], [3], [3]]
    assert len(segments[0][0].bn1) == len(segments[0][0].bn2) == 3  # BNs per iteration
    assert "for t in range(self.iterations)" in inspect.getsource(LoopedBlock.forward)
    assert folded.program()["stages"]["stage_1"][0]["iterations"] == 3


@pytest.mark.parametrize("case", CASES)
def test_parameter_count_is_the_plans(case: str) -> None:
    model, plans = _case(case)
    folded = fold_swrn(model, plans)
    counts = parameter_counts(
        count_state_dict_parameters(model.state_dict()), tuple(plans.values())
    )
    assert sum(p.numel() for p in folded.parameters()) == counts.folded
    for stage in (1, 2, 3):
        bank, plan = folded.bank(stage), plans[f"bank_{stage}"]
        assert isinstance(bank, FoldedBank)
        c, d = len(plan.clusters), plan.weight_numel
        assert bank.storage == ("weights" if c * d <= K * d + c * K else "templates")
        assert bank.storage == ("templates" if case == "singletons" else "weights")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    folded = fold_swrn(*_case("singletons"))
    path = tmp_path / "net.safetensors"
    save_folded(folded, path, report={"threshold": 0.999})
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])  # safetensors layout
    meta = header["__metadata__"]
    assert meta["format"] == "ssc-folded" and meta["format_version"] == "1"
    assert json.loads(meta["program"]) == folded.program()
    assert json.loads(meta["report"]) == {"threshold": 0.999}
    assert is_folded_file(path)

    loaded = load_folded(path)
    assert isinstance(loaded, FoldedSWRN) and not loaded.training
    assert loaded.program() == folded.program()
    x = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), folded(x), atol=0, rtol=0)
    ckpt = load_checkpoint(path)  # the generic loader knows the container too
    assert ckpt.container == "ssc-folded"
    assert ckpt.metadata["program"] == folded.program()


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    folded = fold_swrn(*_case("loop"))
    path = tmp_path / "net.safetensors"
    path.write_bytes(b"old")

    def broken(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_folded(folded, path)
    assert path.read_bytes() == b"old"  # untouched, and no temporary file left behind
    assert os.listdir(tmp_path) == ["net.safetensors"]


def test_load_refuses_other_files(tmp_path: Path) -> None:
    model, plans = _case("loop")
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, arch="swrn", arch_kwargs={}, state_dict=model.state_dict(), metadata={})
    with pytest.raises(CheckpointError, match="not a folded network"):
        load_folded(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError):
        load_folded(garbage)
    assert not is_folded_file(garbage) and not is_folded_file(plain)
    assert not is_folded_file(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_folded(tmp_path / "missing.safetensors")

    good = tmp_path / "good.safetensors"
    save_folded(fold_swrn(model, plans), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_folded(truncated)

    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in load_folded(good).state_dict().items()}
    for name, program in (("bad-json", "{"), ("wrong", json.dumps({"format": "ssc-user-fold"}))):
        bad = tmp_path / f"{name}.safetensors"
        metadata = {"format": "ssc-folded", "format_version": "1", "program": program}
        save_file(tensors, str(bad), metadata=metadata)
        with pytest.raises(CheckpointError):
            load_folded(bad)


@pytest.mark.parametrize("case", ["loop", "singletons", "zero-scale"])
def test_materialize_gives_a_plain_wrn(case: str) -> None:
    model, plans = _case(case)
    folded = fold_swrn(model, plans)
    plain = materialize(folded)
    assert isinstance(plain, WRN) and not plain.training
    WRN(28, 1, num_classes=10, in_channels=1).load_state_dict(plain.state_dict(), strict=True)
    x = _batch()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), folded(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["no-loop", "singletons"])
def test_view_reads_as_the_original_banks(case: str) -> None:
    model, plans = _case(case)
    folded = fold_swrn(model, plans)
    view = folded_state_dict_view(folded)
    original, found = find_banks(model.state_dict()), find_banks(view)
    assert not found.issues
    assert [b.name for b in found.banks] == ["bank_1", "bank_2", "bank_3"]
    for ours, theirs in zip(found.banks, original.banks, strict=True):
        plan = plans[ours.name]
        assert [lay.name for lay in ours.layers] == [lay.name for lay in theirs.layers]
        # the bank's own templates when it stores them, else its distinct weights
        assert ours.num_templates == (len(plan.clusters) if plan.stores_weights else K)
        lsm = bank_similarity(ours, Metric.COEFFICIENTS, False).matrix
        for members in plan.clusters:
            np.testing.assert_allclose(lsm[np.ix_(members, members)], 1.0, atol=1e-6)
    assert {p.stores_weights for p in plans.values()} == {case == "no-loop"}
    banks, _, counts, _ = analyze_state_dict(view, AnalysisOptions(threshold=0.999))
    assert [b.clusters for b in banks] == [plans[b.bank.name].clusters for b in banks]
    # A re-fold of the view stores what the folded network stores: the view's BatchNorms let
    # it absorb the same scales, and templates storage stays templates storage.
    assert counts.folded == count_parameters(folded)
    assert counts.unshared_equivalent == count_parameters(WRN(28, 1, num_classes=10, in_channels=1))


def test_templates_are_materialised_once_in_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    folded = fold_swrn(*_case("singletons"))
    calls: list[int] = []
    original = FoldedBank._materialise

    def counted(self: FoldedBank) -> Tensor:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(FoldedBank, "_materialise", counted)
    x = _batch()
    with torch.no_grad():
        first = folded(x)
        again = folded(x)
    assert len(calls) == 3  # once per bank, not per layer or per forward
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    bank = folded.bank(1)
    assert bank is not None and bank.templates is not None
    with torch.no_grad():
        bank.templates.mul_(1.5)  # an in-place edit must refresh the cache
        changed = folded(x)
    assert len(calls) == 4
    assert not torch.allclose(changed, first)


@pytest.mark.parametrize("case", ["loop", "singletons"])  # weights and templates storage
def test_channels_last_computes_what_the_original_layout_does(case: str) -> None:
    folded = fold_swrn(*_case(case))
    assert folded.memory_format is torch.channels_last  # the default, for oneDNN convolutions
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    seen: list[bool] = []
    hook = folded.stage_2_loops[0].register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        fast = folded(x)
        folded.memory_format = torch.contiguous_format
        plain = folded(x)
    hook.remove()
    assert seen == [True, False]  # the loops really ran in both layouts
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)
    bank = folded.bank(2)
    assert bank is not None
    with torch.no_grad():
        laid_out = bank.weight(0, torch.channels_last)
        assert laid_out.is_contiguous(memory_format=torch.channels_last)
        assert bank.weight(0, torch.channels_last) is laid_out  # cached, not laid out again
        torch.testing.assert_close(laid_out, bank.weight(0), atol=0, rtol=0)
        stored = bank.weights if bank.weights is not None else bank.templates
        assert stored is not None
        stored.mul_(2.0)  # an in-place edit refreshes the channels-last copies too
        torch.testing.assert_close(bank.weight(0, torch.channels_last), 2 * laid_out)


def test_gradients_flow_and_inference_tensors_do_not_leak() -> None:
    folded = fold_swrn(*_case("singletons"))
    x = _batch()
    with torch.inference_mode():
        folded(x)  # fills the cache with inference tensors
    with torch.no_grad():
        folded(x)  # a different cache key: recomputed outside inference mode
    folded.train()
    folded(x).square().mean().backward()
    bank = folded.bank(1)
    assert bank is not None and bank.templates is not None and bank.directions is not None
    assert bank.templates.grad is not None and bank.directions.grad is not None
    assert float(bank.directions.grad.abs().sum()) > 0


def test_conv1_scale_into_bn_statistics_both_branches() -> None:
    torch.manual_seed(0)
    block = LoopedBlock(8, 0, 0, 1)
    bn = block.bn2[0]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.running_var[:3] = 1e-7  # (var + eps) / s^2 - eps < 0 here for |s| = 3
        bn.weight.normal_()
        bn.bias.normal_()
    reference = nn.BatchNorm2d(8).eval()
    reference.load_state_dict(bn.state_dict())
    block.eval()
    s = -3.0
    layer = LayerFold("b.conv1", 0, s, 0.0, Absorb.BN_STATS)
    with torch.no_grad():
        mat.place_scales(block, 0, layer, LayerFold("b.conv2", 0, 1.0, 0.0, Absorb.BN_AFFINE))
        z = torch.randn(4, 8, 3, 3)
        torch.testing.assert_close(bn(z), reference(s * z), atol=1e-5, rtol=1e-5)
    assert bool((bn.running_var >= 0).all())


def test_bad_inputs_are_refused() -> None:
    model, plans = _case("loop")
    with pytest.raises(ValueError, match="no fold plan for bank_2"):
        fold_swrn(model, {k: v for k, v in plans.items() if k != "bank_2"})
    with pytest.raises(TypeError):
        fold_swrn(WRN(16, 1), plans)  # type: ignore[arg-type]
    program = fold_swrn(model, plans).program()
    program["stages"]["stage_1"][0]["iterations"] = 2
    with pytest.raises(ValueError, match="do not cover"):
        FoldedSWRN.from_program(program)


def test_depth_10_has_no_shared_layers() -> None:
    torch.manual_seed(0)
    model = SWRN(10, 1, 2, num_classes=5, in_channels=1).eval()
    folded = fold_swrn(model, {})
    assert folded.bank(1) is None and folded.loops(1) == []
    with torch.no_grad():
        torch.testing.assert_close(folded(_batch()), model(_batch()), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_fold_writes_every_tensor_of_its_uninitialised_skeleton(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fold_swrn builds the folded network without initialising it (meta device, then
    # allocate): poison that memory and check that nothing of it survives the fold.
    import soft_share_cli.folding.swrn as folded_module
    from soft_share_cli.models.layers import allocate

    def poisoned(module: nn.Module, device: Any) -> nn.Module:
        module = allocate(module, device)
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.fill_(float("nan") if tensor.is_floating_point() else -7)
        return module

    monkeypatch.setattr(folded_module, "allocate", poisoned)
    model, plans = _case(case)
    folded = fold_swrn(model, plans)
    for key, tensor in folded.state_dict().items():
        assert bool(torch.isfinite(tensor.float()).all()) and not bool((tensor == -7).any()), key
