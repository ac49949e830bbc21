"""The truly recurrent task network (rfcn) and the progressive loss of Bansal et al. (2022)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from soft_share_cli.checkpoints.load import load_checkpoint
from soft_share_cli.data.loaders import load_data
from soft_share_cli.errors import ArchitectureError, InputError
from soft_share_cli.models.builder import ArchSpec, check_arch_kwargs, rebuild_model
from soft_share_cli.models.params import count_parameters
from soft_share_cli.models.recurrent import FCN
from soft_share_cli.models.recurrent_net import RecurrentFCN
from soft_share_cli.models.registry import build_model
from soft_share_cli.training.progressive import draw_depths, mixed_loss, progressive_logits
from soft_share_cli.training.tasks import TaskTrainConfig, _scored, train_task

DATA = "maze:size=4,count=200"


def rfcn(iterations: int = 5, width: int = 6, recall: bool = True) -> RecurrentFCN:
    torch.manual_seed(0)
    return RecurrentFCN(iterations, width, recall=recall).eval()


def by_hand(model: RecurrentFCN, x: Tensor, n: int) -> Tensor:
    """Stem, ``n`` explicit calls of the one block with the stem's output as recall, head."""
    e = F.conv2d(x, model.stem.weight, padding=1)
    h = e
    for _ in range(n):
        z = h + e if model.recall else h
        inner = F.conv2d(F.relu(z), model.block.conv1.weight, padding=1)
        h = h + F.conv2d(F.relu(inner), model.block.conv2.weight, padding=1)
    return model.head(h)


def test_one_block_tied_by_construction() -> None:
    short, long = RecurrentFCN(2, 8), RecurrentFCN(50, 8)
    assert count_parameters(short) == count_parameters(long)
    convs = 8 * 3 * 9 + 2 * 8 * 8 * 9 + 8 * 8 * 9 + (8 * 2 + 2)  # stem, block, head
    assert count_parameters(long) == convs
    assert sorted(long.state_dict()) == [
        "block.conv1.weight",
        "block.conv2.weight",
        "head.classifier.bias",
        "head.classifier.weight",
        "head.conv.weight",
        "stem.weight",
    ]
    assert build_model("rfcn", iterations=3, width=4).trained_iterations == 3


@pytest.mark.parametrize("recall", [True, False])
def test_n_iterations_apply_the_block_n_times(recall: bool) -> None:
    model = rfcn(5, recall=recall)
    x = torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        assert_close(model(x), by_hand(model, x, 5))
        model.iterations = 11  # thinking longer than trained
        assert_close(model(x), by_hand(model, x, 11))
        assert model.trained_iterations == 5
        steps = list(model.trajectory(x, 11))
        assert len(steps) == 11
        for n in (1, 4, 11):
            assert_close(steps[n - 1], by_hand(model, x, n))
        # the Stepper protocol (``--iterations auto``) follows the same trajectory
        state = model.begin(x)
        for n in range(1, 12):
            state = model.step(state, n)
            assert_close(model.read(state), steps[n - 1])
    assert "run for 11 iterations" in model.describe()
    with pytest.raises(ValueError, match="iterations"):
        model.iterations = 0


def test_an_rfcn_is_a_stepper() -> None:
    from soft_share_cli.evaluation.iterations import as_stepper

    model = rfcn(4)
    assert as_stepper(model) is model


def test_draws_cover_the_triangle_and_are_seeded() -> None:
    generator = torch.Generator().manual_seed(3)
    draws = [draw_depths(4, generator) for _ in range(400)]
    assert set(draws) == {(n, k) for n in range(4) for k in range(1, 5 - n)}
    again = torch.Generator().manual_seed(3)
    assert draws[:20] == [draw_depths(4, again) for _ in range(20)]
    assert {draw_depths(1, generator) for _ in range(5)} == {(0, 1)}


class _Counter:
    """Counts the block's calls with gradient recording on and off."""

    def __init__(self, block: nn.Module) -> None:
        self.calls = {True: 0, False: 0}
        block.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        self.calls[torch.is_grad_enabled()] += 1


@pytest.mark.parametrize("n, k", [(0, 3), (3, 2), (6, 1)])
def test_progressive_gradients_flow_through_the_last_k_iterations_only(n: int, k: int) -> None:
    model = rfcn(7).train()
    counter = _Counter(model.block)
    x, y = torch.randn(3, 3, 9, 9), torch.randint(0, 2, (3, 9, 9))
    loss = F.cross_entropy(progressive_logits(model, x, n, k), y)
    assert counter.calls == {False: n, True: k}
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # independent recomputation: the state after n iterations as a constant (n = 0: the
    # stem's output itself, which keeps its gradient, as in Bansal et al.), k calls on it
    e = model.stem(x)
    h = by_hand_state(model, x, n).detach() if n else e
    for _ in range(k):
        h = model.block(h, e)
    expected = torch.autograd.grad(F.cross_entropy(model.head(h), y), list(model.parameters()))
    for got, want in zip(grads, expected, strict=True):
        assert_close(got, want)
    assert all(g.abs().sum() > 0 for g in grads)


def by_hand_state(model: RecurrentFCN, x: Tensor, n: int) -> Tensor:
    with torch.no_grad():
        e = model.stem(x)
        h = e
        for _ in range(n):
            h = model.block(h, e)
    return h


def test_in_an_fcn_only_blocks_n_to_n_plus_k_get_gradient() -> None:
    torch.manual_seed(0)
    model = FCN(blocks=6, width=4).train()
    x, y = torch.randn(2, 3, 7, 7), torch.randint(0, 2, (2, 7, 7))
    F.cross_entropy(progressive_logits(model, x, 2, 3), y).backward()
    for b, block in enumerate(model.body):
        grads = [p.grad for p in block.parameters()]
        if 2 <= b < 5:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), b
        else:
            assert all(g is None for g in grads), b
    assert model.stem.weight.grad is not None and model.head.conv.weight.grad is not None


@pytest.mark.parametrize("arch", ["rfcn", "fcn"])
def test_the_mix_of_the_two_losses(arch: str) -> None:
    torch.manual_seed(1)
    model = build_model(arch, **({"iterations": 5} if arch == "rfcn" else {"blocks": 5}), width=4)
    x, y = torch.randn(2, 3, 7, 7), torch.randint(0, 2, (2, 7, 7))

    def full(m: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        return _scored(m, xb, yb, 1)

    plain_logits, plain = full(model, x, y)
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    logits, loss = mixed_loss(model, x, y, alpha=0.0, total=5, generator=generator, full=full)
    assert torch.equal(loss, plain) and torch.equal(logits, plain_logits)
    assert torch.equal(generator.get_state(), before)  # alpha 0 draws nothing
    for alpha in (0.3, 1.0):
        replay = torch.Generator().manual_seed(0)
        n, k = draw_depths(5, replay)
        prog = F.cross_entropy(progressive_logits(model, x, n, k), y)
        got_logits, got = mixed_loss(
            model, x, y, alpha=alpha, total=5, generator=torch.Generator().manual_seed(0), full=full
        )
        assert_close(got, (1 - alpha) * plain + alpha * prog)
        assert_close(got_logits, plain_logits)  # the accuracy counts the full-depth output


TINY = TaskTrainConfig(arch="rfcn", blocks=3, width=4, num_templates=None, epochs=2)
TINY = TaskTrainConfig(**{**TINY.__dict__, "batch_size": 16, "progressive": 0.5})


def test_progressive_training_resumes_bit_identically() -> None:
    train = load_data("maze:size=3,count=40", "train")
    states = []
    full = train_task(TINY, train, on_state=lambda s: states.append(copy.deepcopy(s)))
    resumed = train_task(TINY, train, resume=states[0])
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    plain = train_task(TaskTrainConfig(**{**TINY.__dict__, "progressive": 0.0}), train)
    assert not torch.equal(plain.model.stem.weight, full.model.stem.weight)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_a_progressive_weight_outside_0_1_is_refused(alpha: float) -> None:
    config = TaskTrainConfig(**{**TINY.__dict__, "progressive": alpha})
    with pytest.raises(InputError, match="progressive"):
        train_task(config, load_data("maze:size=3,count=40", "train"))


def test_stored_arguments_are_checked() -> None:
    check_arch_kwargs("rfcn", {"iterations": 12, "width": 32, "recall": True})
    for bad in ({"iterations": 0}, {"iterations": 10**9}, {"iterations": "3"}, {"width": 2.0}):
        with pytest.raises(ArchitectureError, match="rfcn"):
            check_arch_kwargs("rfcn", bad)
    spec = ArchSpec("rfcn", {"iterations": 12, "width": 32, "num_classes": 2, "in_channels": 1})
    assert spec.describe() == "RFCN 1x32 looped 12 times (2 classes, 1 input channel)"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The brief's command, once for the module (about 3 s of training)."""
    from soft_share_cli.cli import main

    path = tmp_path_factory.mktemp("rfcn") / "r.pt"
    args = ["train", "--arch", "rfcn", "--data", DATA, "--epochs", "1", "--progressive", "0.5"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "-o", str(path), "--json"])
    assert exit_info.value.code in (0, None)
    return path


def test_train_writes_a_checkpoint_info_and_eval_read(ssc, trained: Path) -> None:
    ckpt = load_checkpoint(trained)
    assert ckpt.arch == "rfcn"
    assert ckpt.arch_kwargs == {
        "iterations": 12,
        "width": 32,
        "num_classes": 2,
        "in_channels": 3,
        "recall": True,
        "block": "projection",  # ssc train's default block for an rfcn
    }
    assert ckpt.metadata["config"]["progressive"] == 0.5
    model, spec = rebuild_model(ckpt)
    assert isinstance(model, RecurrentFCN) and model.trained_iterations == 12
    assert model.block_kind == "projection"
    assert spec.describe() == (
        "RFCN 1x32 looped 12 times, projection block (2 classes, 3 input channels)"
    )
    info = ssc("info", str(trained), "--json")
    assert info.code == 0, info.err
    assert info.json()["architecture_name"] == spec.describe()
    run = ssc("eval", str(trained), "--data", DATA, "--json")
    assert run.code == 0, run.err
    assert run.json()["exact"] == ckpt.metadata["test_exact"]
    # the figure of an independent evaluation of the rebuilt network
    test = load_data(DATA, "test")
    with torch.no_grad():
        pixels = (model(test.x).argmax(1) == test.y).double().mean().item() * 100
    assert run.json()["pixel_accuracy"] == pytest.approx(pixels)


def test_eval_runs_the_loop_longer(ssc, trained: Path) -> None:
    test = load_data(DATA, "test")
    model, _ = rebuild_model(load_checkpoint(trained))
    with torch.no_grad():
        expected = {
            n: (out.argmax(1) == test.y).double().mean().item() * 100
            for n, out in enumerate(model.trajectory(test.x, 40), start=1)
        }
    run = ssc("eval", str(trained), "--data", DATA, "--iterations", "40", "--json")
    assert run.code == 0, run.err
    assert run.json()["iterations"] == 40
    assert run.json()["pixel_accuracy"] == pytest.approx(expected[40])
    sweep = ssc("eval", str(trained), "--data", DATA, "--iterations", "6,12,40", "--json")
    assert sweep.code == 0, sweep.err
    points = sweep.json()["points"]
    assert [p["iterations"] for p in points] == [6, 12, 40]
    assert [p["pixel_accuracy"] for p in points] == pytest.approx(
        [expected[n] for n in (6, 12, 40)]
    )
    auto = ssc("eval", str(trained), "--data", DATA, "--iterations", "auto", "--json")
    assert auto.code == 0, auto.err
    used = auto.json()["iterations_used"]
    assert 1 <= used["min"] <= used["max"] <= 48  # the default cap: 4 x the trained 12


@pytest.mark.parametrize(
    "extra, flag",
    [
        (("--templates", "3"), "--templates"),
        (("--align", "0.1"), "--align"),
        (("--depth", "16"), "--depth"),
        (("--augment",), "--augment"),
    ],
)
def test_options_rfcn_does_not_read_are_refused(
    ssc, tmp_path: Path, extra: tuple[str, ...], flag: str
) -> None:
    out = tmp_path / "r.pt"
    run = ssc("train", "--arch", "rfcn", "--data", DATA, *extra, "-o", str(out))
    assert run.code == 2 and f"{flag} does not apply to --arch rfcn" in run.err
    assert len(run.err.strip().splitlines()) == 1 and not out.exists()


def test_progressive_is_refused_for_classifiers_and_outside_0_1(ssc, tmp_path: Path) -> None:
    out = tmp_path / "w.pt"
    run = ssc("train", "--arch", "wrn", "--data", "digits", "--progressive", "0.5", "-o", str(out))
    assert run.code == 2 and "--progressive does not apply to --arch wrn" in run.err
    run = ssc("train", "--arch", "rfcn", "--data", DATA, "--progressive", "1.5", "-o", str(out))
    assert run.code == 2 and "--progressive" in run.err and not out.exists()


def test_fold_says_an_rfcn_is_already_a_loop(ssc, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.safetensors"
    run = ssc("fold", str(trained), "-o", str(out))
    assert run.code == 2
    assert len(run.err.strip().splitlines()) == 1
    assert "already one block in a real loop" in run.err and "--model" not in run.err
    assert not out.exists()
