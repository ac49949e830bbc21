"""1-d task networks (prefix sums as 1-d convolution): shapes, banks, folding, data checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint
from soft_share_cli.data.loaders import load_data
from soft_share_cli.errors import DataError
from soft_share_cli.evaluation.tasks import check_data_dims, evaluate_task
from soft_share_cli.folding.looped import fold_sfcn, load_looped, save_looped
from soft_share_cli.models.builder import check_arch_kwargs, rebuild_model
from soft_share_cli.models.params import count_parameters
from soft_share_cli.models.recurrent import FCN, SFCN
from soft_share_cli.models.recurrent_net import RecurrentFCN
from soft_share_cli.models.registry import build_model


@pytest.mark.parametrize(
    "model",
    [
        FCN(blocks=2, width=5, in_channels=1, dims=1),
        SFCN(blocks=2, width=5, num_templates=2, in_channels=1, dims=1),
        RecurrentFCN(iterations=3, width=5, in_channels=1, dims=1),
    ],
)
def test_sequence_networks_are_1d_and_answer_per_position(model: nn.Module) -> None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert convs and all(isinstance(m, nn.Conv1d) for m in convs)
    for length in (7, 32, 129):  # any length, one answer per position
        assert model(torch.randn(2, 1, length)).shape == (2, 2, length)
    with pytest.raises(RuntimeError):  # not an image network in disguise
        model(torch.randn(2, 1, 8, 8))


def test_a_1d_bank_holds_3_tap_kernels_with_the_authors_names() -> None:
    model = SFCN(blocks=3, width=4, num_templates=2, in_channels=1, dims=1)
    state = model.state_dict()
    assert tuple(state["bank.templates"].shape) == (2, 4, 4, 3)
    assert tuple(state["body.0.conv1.coefficients"].shape) == (2, 1, 1, 1)
    assert state["body.2.conv2.bank.templates"].data_ptr() == state["bank.templates"].data_ptr()
    # the generated weight is the mix of the templates, and the conv is a 1-d convolution of it
    conv = model.body[1].conv2
    weight = torch.einsum("k,koit->oit", conv.coefficients.flatten(), model.bank.templates)
    x = torch.randn(3, 4, 11)
    assert_close(conv(x), nn.functional.conv1d(x, weight, padding=1))
    (result,), _, _, _ = analyze_state_dict(state, AnalysisOptions(threshold=0.99))
    assert len(result.bank.layers) == 6  # ssc analyze reads the 1-d bank as the 2-d one


def _parallel_1d_sfcn(blocks: int = 4) -> SFCN:
    torch.manual_seed(3)
    model = SFCN(blocks=blocks, width=6, num_templates=3, in_channels=1, dims=1)
    u1, u2 = torch.randn(3), torch.randn(3)
    with torch.no_grad():
        for b, block in enumerate(model.body):
            block.conv1.coefficients.copy_(((0.8 + 0.1 * b) * u1).view(3, 1, 1, 1))
            block.conv2.coefficients.copy_(((1.2 - 0.2 * b) * u2).view(3, 1, 1, 1))
    return model.eval()


def test_a_1d_sfcn_folds_into_an_exact_loop_that_runs_longer(tmp_path) -> None:
    model = _parallel_1d_sfcn()
    (result,), _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=0.99))
    looped = fold_sfcn(model, result.fold)
    assert looped.dims == 1 and len(looped.segments) == 1 and looped.trained_iterations == 4
    x = torch.randn(3, 1, 40)
    with torch.no_grad():
        assert_close(looped(x), model(x), rtol=1e-5, atol=1e-5)
        # more iterations than trained: the last trained step repeated, by an independent
        # re-computation with the original's own blocks
        looped.iterations = 9
        e = model.stem(x)
        h = e
        for b in [0, 1, 2, 3, 3, 3, 3, 3, 3]:
            h = model.body[b](h, e)
        assert_close(looped(x), model.head(h), rtol=1e-5, atol=1e-5)
    path = tmp_path / "loop.safetensors"
    save_looped(looped, path)
    again = load_looped(path)
    assert again.program()["dims"] == 1
    assert "1-d" in again.describe()
    with torch.no_grad():
        again.iterations = 9
        assert_close(again(x), looped(x))


def test_checkpoints_of_1d_networks_rebuild_and_old_ones_stay_2d(tmp_path) -> None:
    model = RecurrentFCN(iterations=5, width=4, in_channels=1, dims=1)
    kwargs = {"iterations": 5, "width": 4, "num_classes": 2, "in_channels": 1, "dims": 1}
    save_checkpoint(tmp_path / "r.pt", arch="rfcn", arch_kwargs=kwargs,
                    state_dict=model.state_dict(), metadata={})  # fmt: skip
    rebuilt, spec = rebuild_model(load_checkpoint(tmp_path / "r.pt"))
    assert isinstance(rebuilt, RecurrentFCN) and rebuilt.dims == 1
    assert spec.describe().endswith("(2 classes, 1 input channel, 1-d)")
    x = torch.randn(2, 1, 17)
    with torch.no_grad():
        assert_close(rebuilt(x), model.eval()(x))
    old = build_model("fcn", blocks=1, width=3)  # no "dims" stored: the 2-d network it was
    assert isinstance(old.stem, nn.Conv2d)
    for bad in (3, 0, True, 1.0, "1"):
        with pytest.raises(Exception, match="dims"):
            check_arch_kwargs("sfcn", {"dims": bad})


def test_sequences_and_images_are_refused_by_the_other_kind_of_network() -> None:
    bits = load_data("prefix-sums:length=12,count=4", "test")
    assert tuple(bits.x.shape) == (4, 1, 12) and tuple(bits.y.shape) == (4, 12)
    image_net = FCN(blocks=1, width=3, in_channels=1)
    with pytest.raises(DataError, match=r"holds sequences \(1-d\) but net is a network of 2-d"):
        check_data_dims(image_net, bits, "prefix-sums:length=12", "net")
    check_data_dims(FCN(blocks=1, width=3, in_channels=1, dims=1), bits, "bits", "net")
    digits = load_data("digits", "test")
    with pytest.raises(DataError, match="holds images"):
        check_data_dims(FCN(blocks=1, width=3, in_channels=1, dims=1), digits, "digits", "net")


def test_exact_solve_needs_every_position_right() -> None:
    """A hand-built 1-d network that copies its input bit: it solves exactly the strings whose
    running parity equals the bits themselves (all ones after a 1 flip parity, so only strings
    like 1000..., 0...0), an independent count."""
    bits = load_data("prefix-sums:length=3,count=400,seed=5", "test")
    model = FCN(blocks=1, width=1, in_channels=1, dims=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.stem.weight[0, 0, 1] = 1.0  # e = x
        model.head.conv.weight[0, 0, 1] = 1.0  # passes relu(h) = x through
        model.head.classifier.weight[:, 0, 0] = torch.tensor([-1.0, 1.0])
        model.head.classifier.bias.copy_(torch.tensor([0.5, -0.5]))
    result = evaluate_task(model, bits)
    x, y = bits.x[:, 0].long(), bits.y
    expected = (x == y).all(dim=1).float().mean().item() * 100
    assert result.exact == pytest.approx(expected)
    assert 0 < expected < 100


def test_the_projection_block_recomputes_the_state_from_state_and_recall() -> None:
    torch.manual_seed(2)
    short = RecurrentFCN(3, 5, in_channels=1, dims=1, block="projection").eval()
    long = RecurrentFCN(40, 5, in_channels=1, dims=1, block="projection")
    assert count_parameters(short) == count_parameters(long)  # tied by construction
    assert sorted(k for k in short.state_dict() if k.startswith("block.")) == [
        "block.inner.0.conv1.weight", "block.inner.0.conv2.weight",
        "block.inner.1.conv1.weight", "block.inner.1.conv2.weight", "block.project.weight",
    ]  # fmt: skip
    block = short.block
    x = torch.randn(2, 1, 21)
    with torch.no_grad():
        # by hand: h' = R2(R1(W_p * [h, e])), R(z) = z + W2 * relu(W1 * relu(z)), no accumulation
        e = nn.functional.conv1d(x, short.stem.weight, padding=1)
        h = e
        for _ in range(3):
            z = nn.functional.conv1d(torch.cat([h, e], 1), block.project.weight, padding=1)
            for inner in block.inner:
                a = nn.functional.conv1d(nn.functional.relu(z), inner.conv1.weight, padding=1)
                z = z + nn.functional.conv1d(nn.functional.relu(a), inner.conv2.weight, padding=1)
            h = z
        assert_close(short(x), short.head(h))
        steps = list(short.trajectory(x, 5))
        short.iterations = 5
        assert_close(steps[-1], short(x))
    assert "projection block" in short.describe()
    with pytest.raises(ValueError, match="block must be"):
        RecurrentFCN(3, 5, block="dense")
    old = build_model("rfcn", iterations=2, width=3)  # no "block" stored: the residual one
    assert "block.conv1.weight" in old.state_dict()


def test_progressive_gradients_reach_the_projection_block_in_the_last_k_only() -> None:
    from soft_share_cli.training.progressive import progressive_logits

    torch.manual_seed(4)
    model = RecurrentFCN(6, 4, in_channels=1, dims=1, block="projection").train()
    calls = {True: 0, False: 0}
    model.block.register_forward_hook(lambda *_: calls.__setitem__(
        torch.is_grad_enabled(), calls[torch.is_grad_enabled()] + 1))  # fmt: skip
    x, y = torch.randn(3, 1, 12), torch.randint(0, 2, (3, 12))
    loss = nn.functional.cross_entropy(progressive_logits(model, x, 4, 2), y)
    assert calls == {False: 4, True: 2}
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_unknown_arguments_of_a_task_network_are_refused_before_building() -> None:
    for arch, kwargs in (("rfcn", {"iterations": 2, "width": 3, "foo": 1}),
                         ("sfcn", {"blocks": 2, "block": "projection"}),
                         ("fcn", {"blocks": 1, "num_templates": 2})):  # fmt: skip
        with pytest.raises(Exception, match="unknown argument"):
            check_arch_kwargs(arch, kwargs)
    check_arch_kwargs("rfcn", {"iterations": 2, "width": 3, "block": "residual", "dims": 1})


@pytest.mark.parametrize("dims", [3, 0, True, "1", 1.0, None])
def test_a_looped_program_with_a_bad_dims_is_refused(dims: object) -> None:
    from soft_share_cli.folding.looped import LoopedFCN, check_program

    model = _parallel_1d_sfcn()
    (result,), _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=0.99))
    program = fold_sfcn(model, result.fold).program()
    check_program(program)
    program["dims"] = dims
    with pytest.raises(ValueError, match="dims"):
        LoopedFCN(program)


def _hostile_state(tmp_path, config: dict, stem_shape=(4, 1, 3)) -> str:
    """An ``OUTPUT.partial``-like file: ssc's train-state layout with a config of our choosing."""
    path = tmp_path / "run.pt.partial"
    model = {"stem.weight": torch.zeros(stem_shape), "head.classifier.weight": torch.zeros(2, 4, 1)}
    torch.save({"format": "ssc-train-state", "format_version": 1, "model": model,
                "config": config}, path)  # fmt: skip
    return str(path)


@pytest.mark.parametrize(
    "config, says",
    [
        ({"arch": "rfcn", "blocks": 10**9, "width": 4}, "MAX_ITERATIONS"),
        ({"arch": "sfcn", "blocks": 2, "width": "4", "num_templates": 2}, "width"),
        ({"arch": "fcn", "blocks": True, "width": 4}, "blocks"),
        ({"arch": "rfcn", "blocks": 2, "width": 4, "block": ["projection"]}, "block"),
        ({"arch": "rfcn", "blocks": 2, "width": 4, "recall": "yes"}, "recall"),
        ({"arch": "sfcn", "blocks": 2, "width": 4}, "num_templates"),
        ({"arch": "fcn", "blocks": 2, "width": 10**7}, "MAX_CHANNELS"),
    ],
)
def test_a_hostile_train_state_is_refused_in_one_line(ssc, tmp_path, config, says) -> None:
    path = _hostile_state(tmp_path, config)
    for command in (("info", path), ("eval", path, "--data", "prefix-sums:length=8,count=4")):
        run = ssc(*command)
        text = run.err if command[0] == "eval" else run.out + run.err
        assert "Traceback" not in text and says in text, (command, text)
        if command[0] == "eval":
            assert run.code == 2 and run.err.count("\n") == 1, run.err


def test_a_train_state_that_is_no_task_network_is_read_as_a_state_dict(ssc, tmp_path) -> None:
    for config, shape in (({"arch": ["rfcn"]}, (4, 1, 3)), ({"arch": "rfcn"}, (4, 1, 3, 3, 3))):
        path = _hostile_state(tmp_path, config, shape)
        run = ssc("eval", path, "--data", "prefix-sums:length=8,count=4")
        assert run.code == 2 and "Traceback" not in run.err and run.err.count("\n") == 1, run.err
