"""Fully convolutional task networks: size independence, the bank, folding into a real loop."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.analysis.banks import find_banks
from soft_share_cli.checkpoints.load import save_checkpoint
from soft_share_cli.errors import CheckpointError
from soft_share_cli.folding.looped import (
    LoopedFCN,
    LoopSegment,
    fold_sfcn,
    load_looped,
    looped_state_dict_view,
    save_looped,
)
from soft_share_cli.models.builder import rebuild_model
from soft_share_cli.models.params import count_parameters
from soft_share_cli.models.recurrent import FCN, SFCN
from soft_share_cli.models.registry import build_model


@pytest.mark.parametrize("arch", ["fcn", "sfcn"])
@pytest.mark.parametrize("shape", [(3, 7, 7), (3, 11, 11), (3, 9, 17), (1, 1, 16)])
def test_output_follows_the_input_size(arch: str, shape: tuple[int, int, int]) -> None:
    kwargs = {"blocks": 3, "width": 8, "in_channels": shape[0]}
    if arch == "sfcn":
        kwargs["num_templates"] = 2
    torch.manual_seed(0)
    model = build_model(arch, **kwargs).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        out = model(x)
    assert tuple(out.shape) == (2, 2, *shape[1:])
    # fully convolutional: a crop's far-away pixels do not move a pixel beyond the reach
    assert out.isfinite().all()


def test_one_bank_serves_every_body_conv_with_the_authors_names() -> None:
    model = SFCN(blocks=4, width=6, num_templates=3)
    state = model.state_dict()
    assert tuple(state["bank.templates"].shape) == (3, 6, 6, 3, 3)
    assert tuple(state["body.2.conv1.coefficients"].shape) == (3, 1, 1, 1, 1)
    (bank,) = find_banks(state).banks
    assert [layer.name for layer in bank.layers] == [
        f"body.{b}.conv{r}" for b in range(4) for r in (1, 2)
    ]
    # same depth, fewer parameters than the plain counterpart
    plain = FCN(blocks=4, width=6)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in plain.parameters())
    # generated weights start with the plain conv's spread: unit-norm coefficient rows
    norms = torch.stack([c.detach().norm() for n, c in model.named_parameters() if "coeff" in n])
    assert_close(norms, torch.ones_like(norms))


def parallel_sfcn(blocks: int = 4, recall: bool = True) -> SFCN:
    """An SFCN whose conv1s (and conv2s) are exact multiples of one direction each."""
    torch.manual_seed(1)
    model = SFCN(blocks=blocks, width=6, num_templates=3, recall=recall)
    u1, u2 = torch.randn(3), torch.randn(3)
    scales1 = [0.9, -0.7, 1.3, 0.5, 1.1, 0.8][:blocks]  # a negative conv1 scale: not a ReLU-safe
    scales2 = [0.4, 1.2, -0.6, 0.9, 0.7, 1.0][:blocks]  # sign, it must stay an explicit gain
    with torch.no_grad():
        for b, block in enumerate(model.body):
            block.conv1.coefficients.copy_((scales1[b] * u1).view(3, 1, 1, 1, 1))
            block.conv2.coefficients.copy_((scales2[b] * u2).view(3, 1, 1, 1, 1))
    return model.eval()


def fold_exactly(model: SFCN) -> LoopedFCN:
    (result,), _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=0.99))
    assert len(result.clusters) == 2  # conv1 A, conv2 B
    return fold_sfcn(model, result.fold)


@pytest.mark.parametrize("recall", [True, False])
def test_fold_of_exactly_parallel_coefficients_is_one_exact_loop(recall: bool) -> None:
    model = parallel_sfcn(recall=recall)
    looped = fold_exactly(model)
    assert len(looped.segments) == 1 and looped.trained_iterations == 4
    assert looped.iterations == 4
    x = torch.randn(3, 3, 9, 9)
    with torch.no_grad():
        assert_close(looped(x), model(x), rtol=1e-5, atol=1e-5)
        # any size: the loop is as size independent as the original
        y = torch.randn(2, 3, 13, 13)
        assert_close(looped(y), model(y), rtol=1e-5, atol=1e-5)
    # the folded network stores 2 weights instead of 3 templates and 8 coefficient vectors
    assert looped.bank.weights is not None and looped.bank.weights.shape[0] == 2


def test_more_iterations_repeat_the_last_trained_step() -> None:
    model = parallel_sfcn(blocks=4)
    looped = fold_exactly(model)
    # the reference: an SFCN with 7 blocks whose extra three copy the last block's coefficients
    longer = SFCN(blocks=7, width=6, num_templates=3).eval()
    state = model.state_dict()
    with torch.no_grad():
        longer.stem.load_state_dict(model.stem.state_dict())
        longer.head.load_state_dict(model.head.state_dict())
        longer.bank.templates.copy_(model.bank.templates)
        for b, block in enumerate(longer.body):
            src = min(b, 3)
            for r in (1, 2):
                coefficients = state[f"body.{src}.conv{r}.coefficients"]
                getattr(block, f"conv{r}").coefficients.copy_(coefficients)
    x = torch.randn(2, 3, 11, 11)
    with torch.no_grad():
        trained = looped(x)
        looped.iterations = 7
        assert_close(looped(x), longer(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(looped(x), trained)
        # fewer iterations: the first blocks only
        looped.iterations = 2
        shorter = SFCN(blocks=2, width=6, num_templates=3).eval()
        shorter.load_state_dict({k: v for k, v in longer.state_dict().items()}, strict=False)
        assert_close(looped(x), shorter(x), rtol=1e-5, atol=1e-5)


def test_the_iteration_count_changes_the_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    looped = fold_exactly(parallel_sfcn(blocks=4))
    calls: list[int] = []
    original = LoopSegment.step

    def counting(self, h, recall, bank, t):  # type: ignore[no-untyped-def]
        calls.append(t)
        return original(self, h, recall, bank, t)

    monkeypatch.setattr(LoopSegment, "step", counting)
    x = torch.randn(1, 3, 7, 7)
    with torch.no_grad():
        for n, expected in ((4, [0, 1, 2, 3]), (6, [0, 1, 2, 3, 3, 3]), (1, [0])):
            calls.clear()
            looped.iterations = n
            looped(x)
            assert calls == expected


def test_folded_file_round_trip_and_analysis_view(tmp_path) -> None:
    model = parallel_sfcn(blocks=3)
    looped = fold_exactly(model)
    path = tmp_path / "looped.safetensors"
    save_looped(looped, path, report={"source": "test"})
    again = load_looped(path)
    assert again.program() == looped.program()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert_close(again(x), looped(x))
    (result,), _, counts, _ = analyze_state_dict(looped_state_dict_view(again))
    assert len(result.bank.layers) == 6 and len(result.clusters) == 2
    assert counts.folded == count_parameters(again)  # a re-fold stores what the loop stores
    assert [loop.iterations for loop in result.loops] == [3]
    plain = tmp_path / "plain.pt"
    weights = FCN(blocks=1, width=2).state_dict()
    save_checkpoint(plain, arch="fcn", arch_kwargs={}, state_dict=weights, metadata={})
    with pytest.raises(CheckpointError, match="not a looped FCN"):
        load_looped(plain)


def test_checkpoints_rebuild_through_the_registry(tmp_path) -> None:
    from soft_share_cli.checkpoints.load import load_checkpoint

    model = SFCN(blocks=2, width=4, num_templates=2, in_channels=1)
    kwargs = {"blocks": 2, "width": 4, "num_templates": 2, "num_classes": 2, "in_channels": 1}
    save_checkpoint(
        tmp_path / "m.pt",
        arch="sfcn",
        arch_kwargs={**kwargs, "recall": True},
        state_dict=model.state_dict(),
        metadata={},
    )
    rebuilt, spec = rebuild_model(load_checkpoint(tmp_path / "m.pt"))
    assert isinstance(rebuilt, SFCN)
    assert spec.describe() == "SFCN 2x4, K=2 (2 classes, 1 input channel)"
    x = torch.randn(1, 1, 1, 10)
    with torch.no_grad():
        assert_close(rebuilt(x), model.eval()(x))


def test_trajectory_and_sweep_match_separate_runs() -> None:
    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.evaluation.tasks import evaluate_task, iteration_sweep

    looped = fold_exactly(parallel_sfcn(blocks=3))
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        steps = list(looped.trajectory(x, 5))
        for n, logits in enumerate(steps, start=1):
            looped.iterations = n
            assert_close(logits, looped(x))
    looped.iterations = 3
    data = load_data("maze:size=4,count=12")
    sweep = iteration_sweep(looped, data, [5, 1, 3], batch_size=5)
    assert [p.iterations for p in sweep] == [1, 3, 5]
    for point in sweep:
        looped.iterations = point.iterations
        single = evaluate_task(looped, data)
        assert single.iterations == point.iterations
        assert (single.exact, single.pixel_accuracy) == (point.exact, point.pixel_accuracy)


def test_signed_alignment_tells_antiparallel_layers_apart() -> None:
    from soft_share_cli.training.regularizers import (
        AlignMode,
        alignment_penalty,
        coefficient_groups,
        coefficient_names,
        recurrence_pairs,
    )

    model = parallel_sfcn(blocks=3)  # conv1 scales 0.9, -0.7, 1.3: a sign flip, then back
    groups = coefficient_groups(model)
    pairs = [recurrence_pairs(names) for names in coefficient_names(model)]
    assert pairs == [[(0, 2), (1, 3), (2, 4), (3, 5)]]  # conv1 -> next conv1, conv2 -> next conv2
    with torch.no_grad():
        agnostic = alignment_penalty(groups, AlignMode.RECURRENT, pairs)
        signed = alignment_penalty(groups, AlignMode.SIGNED, pairs)
    assert float(agnostic) == pytest.approx(0.0, abs=1e-6)  # parallel up to sign: no penalty
    # conv1 0->1, 1->2 and conv2 1->2 flip sign (penalty 1 each), conv2 0->1 does not
    assert float(signed) == pytest.approx(3 / 4, abs=1e-6)
