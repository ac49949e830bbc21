"""Iteration control at test time: ``ssc eval --iterations N | N1,N2,... | auto`` (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from soft_share_cli.data.loaders import Dataset, load_data
from soft_share_cli.errors import DataError, InputError
from soft_share_cli.evaluation.iterations import (
    AutoOptions,
    IterationMode,
    IterationRequest,
    as_stepper,
    evaluate_auto,
    parse_iterations,
    sweep_iterations,
)
from soft_share_cli.folding.looped import LoopedFCN, load_looped
from soft_share_cli.limits import MAX_ITERATIONS

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
SHARED = SAMPLES / "tasks" / "maze_shared.pt"
SPEC = "maze:size=4,count=40"


@pytest.fixture(scope="module")
def looped_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled shared maze solver, folded once for the module (12 trained iterations)."""
    from soft_share_cli.cli import main

    out = tmp_path_factory.mktemp("iterations") / "maze_looped.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["fold", str(SHARED), "-o", str(out), "--json"])
    assert exit_info.value.code in (0, None)
    return out


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", IterationRequest(IterationMode.FIXED, (12,))),
        (" 10, 20,40 ", IterationRequest(IterationMode.SWEEP, (10, 20, 40))),
        ("1,10000", IterationRequest(IterationMode.SWEEP, (1, MAX_ITERATIONS))),
        ("auto", IterationRequest(IterationMode.AUTO)),
        ("AUTO", IterationRequest(IterationMode.AUTO)),
    ],
)
def test_iterations_parse(text: str, expected: IterationRequest) -> None:
    request = parse_iterations(text)
    assert request == expected
    assert request.count == (expected.counts[0] if expected.mode is IterationMode.FIXED else None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "not between 1 and 10000"),
        ("10001", "not between 1 and 10000"),
        ("3," + "9" * 5000, "not between 1 and 10000"),  # never int() of 5,000 digits
        ("20,10", "distinct and ascending"),
        ("5,5", "distinct and ascending"),
        ("", "takes a count"),
        ("5,,6", "takes a count"),
        ("10,", "takes a count"),
        ("-3", "takes a count"),
        ("1.5", "takes a count"),
        ("+4", "takes a count"),
        ("\u0663", "takes a count"),  # an Arabic-Indic three is a digit to Python, not to us
        ("automatic", "takes a count"),
    ],
)
def test_bad_iterations_are_refused(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_iterations(text)


# --- the sweep ----------------------------------------------------------------------------------


def test_sweep_equals_separate_runs_of_each_count(ssc, looped_file: Path) -> None:
    counts = (4, 9, 12, 20)
    run = ssc("eval", str(looped_file), "--data", SPEC, "--iterations", "4,9,12,20", "--json")
    assert run.code == 0, run.err
    sweep = run.json()
    assert [p["iterations"] for p in sweep["points"]] == list(counts)
    for point in sweep["points"]:
        single = ssc(
            "eval", str(looped_file), "--data", SPEC, "--iterations", str(point["iterations"]),
            "--json",
        )  # fmt: skip
        assert single.code == 0, single.err
        alone = single.json()
        assert (alone["exact"], alone["pixel_accuracy"]) == (
            point["exact"],
            point["pixel_accuracy"],
        )
    # the best count: the highest solve rate (known here from the separate runs)
    best = max(sweep["points"], key=lambda p: (p["exact"], p["pixel_accuracy"], -p["iterations"]))
    assert sweep["best"] == best
    assert sweep["points"][0]["exact"] < sweep["best"]["exact"]  # 4 iterations are too few


def test_sweep_batches_do_not_change_the_figures(looped_file: Path) -> None:
    looped = load_looped(looped_file)
    data = load_data(SPEC)
    whole = sweep_iterations(looped, data, [12, 3, 7])
    batched = sweep_iterations(looped, data, [3, 7, 12], batch_size=7)
    assert whole.points == batched.points and [p.iterations for p in whole.points] == [3, 7, 12]
    assert whole.trained_iterations == 12 and whole.samples == 40
    looped.iterations = 7
    from soft_share_cli.evaluation.tasks import evaluate_task

    single = evaluate_task(looped, data, batch_size=40)
    assert (single.exact, single.pixel_accuracy) == (
        whole.points[1].exact,
        whole.points[1].pixel_accuracy,
    )


def test_sweep_table_and_plot(ssc, looped_file: Path, tmp_path: Path) -> None:
    plot = tmp_path / "sweep.png"
    run = ssc("eval", str(looped_file), "--data", SPEC, "--iterations", "6,12,18",
              "--plot", str(plot))  # fmt: skip
    assert run.code == 0, run.err
    assert "Accuracy against iterations" in run.out and "trained" in run.out and "best:" in run.out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "again.png"
    assert ssc("eval", str(looped_file), "--data", SPEC, "--iterations", "6,12,18",
               "--plot", str(again)).code == 0  # fmt: skip
    assert again.read_bytes() == plot.read_bytes()  # the same figure, byte for byte


# --- auto ---------------------------------------------------------------------------------------


class Settling(nn.Module):
    """A fake loop: each instance's per-pixel class flips at every iteration until iteration
    ``k`` (the instance's first input pixel), then stays; ``k`` beyond the cap never settles."""

    trained_iterations = 4

    def begin(self, x: Tensor) -> tuple[Tensor, ...]:
        return x[:, 0, 0, 0].long(), torch.zeros(len(x), dtype=torch.long), x[:, :1]

    def step(self, state: tuple[Tensor, ...], n: int) -> tuple[Tensor, ...]:
        k, _, x = state
        return k, torch.full_like(k, n), x

    def read(self, state: tuple[Tensor, ...]) -> Tensor:
        k, n, x = state
        sign = 1.0 - 2.0 * (torch.minimum(n, k) % 2).float()  # +1 when min(n, k) is even
        s = sign.view(-1, 1, 1, 1) * torch.ones_like(x)
        return torch.cat([s, -s], dim=1)  # class 0 wins where s > 0


def settling_data(ks: list[int]) -> Dataset:
    x = torch.zeros(len(ks), 1, 3, 3)
    x[:, 0, 0, 0] = torch.tensor(ks, dtype=torch.float32)
    return Dataset("fake", "test", x, torch.zeros(len(ks), 3, 3, dtype=torch.long), 2)


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_auto_stops_where_the_output_stops_changing(patience: int) -> None:
    ks = [1, 2, 3, 5, 8, 6, 4, 7]
    result = evaluate_auto(
        Settling(), settling_data(ks), AutoOptions(patience=patience), batch_size=3
    )
    # iteration 1 is never still, k + 1 ... k + patience are: each instance stops at k + patience
    assert result.used.tolist() == [k + patience for k in ks]
    assert result.max_iterations == 16 and result.capped == 0  # the cap: 4 x trained
    assert result.mean_iterations == sum(ks) / len(ks) + patience
    assert result.median_iterations == 4.5 + patience
    assert (result.fewest_iterations, result.most_iterations) == (1 + patience, 8 + patience)
    # every pixel is class 0 exactly when the settled k is even
    assert result.exact == 100.0 * sum(k % 2 == 0 for k in ks) / len(ks)
    assert result.pixel_accuracy == result.exact


def test_auto_runs_to_the_cap_when_the_output_keeps_changing() -> None:
    ks = [100, 2, 101, 3]  # the first and third oscillate past any cap used here
    for cap in (9, 10):
        result = evaluate_auto(Settling(), settling_data(ks), AutoOptions(max_iterations=cap))
        assert result.used.tolist() == [cap, 2 + 3, cap, 3 + 3]
        assert result.capped == 2 and result.max_iterations == cap
        # scored on the output at the cap: class 0 where min(cap, k) is even
        solved = [min(cap, k) % 2 == 0 for k in (100, 2, 101, 3)]
        assert result.exact == 100.0 * sum(solved) / 4


class Growing(nn.Module):
    """Logits ``n * (1, -1)``: the prediction never changes, the logits shrink in relative
    change (1 / (n - 1) from iteration n - 1 to n)."""

    trained_iterations = 10

    def begin(self, x: Tensor) -> tuple[Tensor, ...]:
        return (x[:, :1], torch.zeros(len(x)))

    def step(self, state: tuple[Tensor, ...], n: int) -> tuple[Tensor, ...]:
        return (state[0], torch.full((len(state[0]),), float(n)))

    def read(self, state: tuple[Tensor, ...]) -> Tensor:
        one = torch.ones_like(state[0]) * state[1].view(-1, 1, 1, 1)
        return torch.cat([one, -one], dim=1)


def test_the_tolerance_also_bounds_the_change_of_the_logits() -> None:
    data = settling_data([0, 0])
    plain = evaluate_auto(Growing(), data, AutoOptions(patience=2))
    assert plain.used.tolist() == [3, 3]  # the argmax alone: still at 2 and 3
    # still only once 1 / (n - 1) <= 0.25, i.e. from n = 5: stops at 6
    tight = evaluate_auto(Growing(), data, AutoOptions(patience=2, tolerance=0.25))
    assert tight.used.tolist() == [6, 6] and tight.exact == 100.0


def test_auto_on_the_folded_sample_follows_its_own_trajectory(looped_file: Path) -> None:
    """Independent re-computation: the first iteration after which the prediction has been the
    same ``patience + 1`` times running, from the full trajectory of every maze."""
    looped = load_looped(looped_file)
    data = load_data("maze:size=6,count=30")  # 1.5x the training size: some never settle
    patience, cap = 3, 30
    result = evaluate_auto(looped, data, AutoOptions(patience, None, cap), batch_size=8)
    with torch.inference_mode():
        preds = torch.stack([z.argmax(1) for z in looped.trajectory(data.x, cap)])  # (cap, N,..)
    expected, solved, capped = [], 0, 0
    for i in range(len(data)):
        # still[m]: the prediction after iteration m + 2 equals the one after iteration m + 1
        still = [bool((preds[m + 1][i] == preds[m][i]).all()) for m in range(cap - 1)]
        met = [n for n in range(patience + 1, cap + 1) if all(still[n - 1 - patience : n - 1])]
        stop = met[0] if met else cap
        expected.append(stop)
        capped += not met
        solved += bool((preds[stop - 1][i] == data.y[i]).all())
    assert result.used.tolist() == expected
    assert result.exact == 100.0 * solved / len(data) and result.capped == capped
    assert 0 < capped < len(data) and min(expected) < looped.trained_iterations


def test_auto_needs_a_loop_and_room_for_its_patience() -> None:
    with pytest.raises(InputError, match="needs a looped network"):
        as_stepper(nn.Conv2d(1, 2, 1))
    with pytest.raises(InputError, match="no room"):
        AutoOptions(patience=3, max_iterations=3)
    with pytest.raises(InputError, match="--patience"):
        AutoOptions(patience=0)
    with pytest.raises(InputError, match="--tolerance"):
        AutoOptions(tolerance=float("nan"))
    digits = load_data("digits?limit=4")
    with pytest.raises(DataError, match="one label per image"):
        evaluate_auto(Settling(), digits)
    assert isinstance(as_stepper(Settling()), Settling)


# --- the CLI: JSON and refusals ----------------------------------------------------------------


def test_auto_json_schema(ssc, looped_file: Path) -> None:
    run = ssc("eval", str(looped_file), "--data", SPEC, "--iterations", "auto",
              "--patience", "2", "--max-iterations", "20", "--json")  # fmt: skip
    assert run.code == 0, run.err
    report = run.json()
    assert list(report) == [
        "schema_version", "checkpoint", "architecture", "data", "device", "batch_size", "mode",
        "samples", "exact", "pixel_accuracy", "loss", "trained_iterations", "rule",
        "iterations_used", "timing",
    ]  # fmt: skip
    assert report["mode"] == "auto" and report["samples"] == 40
    assert report["rule"] == {"patience": 2, "tolerance": None, "max_iterations": 20}
    used = report["iterations_used"]
    assert set(used) == {"mean", "median", "min", "max", "capped"}
    assert 3 <= used["min"] <= used["median"] <= used["max"] <= 20
    assert 0 <= used["capped"] <= 40 and set(report["timing"]) == {"seconds", "throughput"}
    text = ssc("eval", str(looped_file), "--data", SPEC, "--iterations", "auto")
    assert text.code == 0 and "iterations used" in text.out and "hit the cap" in text.out


def test_sweep_json_schema(ssc, looped_file: Path) -> None:
    run = ssc("eval", str(looped_file), "--data", SPEC, "--iterations", "2,12", "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert list(report) == [
        "schema_version", "checkpoint", "architecture", "data", "device", "batch_size", "mode",
        "samples", "trained_iterations", "points", "best", "timing",
    ]  # fmt: skip
    assert report["mode"] == "sweep" and report["trained_iterations"] == 12
    assert all(set(p) == {"iterations", "exact", "pixel_accuracy"} for p in report["points"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--iterations", "12", "--plot", "{tmp}/p.png"), "needs a sweep"),
        (("--iterations", "auto", "--plot", "{tmp}/p.png"), "needs a sweep"),
        (("--plot", "{tmp}/p.png"), "needs a sweep"),
        (("--iterations", "4,8", "--plot", "{tmp}/p.txt"), "cannot save a figure"),
        (("--tolerance", "0.1"), "--tolerance applies to --iterations auto"),
        (("--iterations", "4,8", "--patience", "2"), "--patience applies to --iterations auto"),
        (("--iterations", "5", "--max-iterations", "9"), "--max-iterations applies"),
        (("--iterations", "auto", "--max-iterations", "2"), "no room"),
        (("--iterations", "8,4"), "distinct and ascending"),
        (("--iterations", "0"), "not between 1 and"),
    ],
)
def test_options_that_cannot_apply_are_refused(
    ssc, looped_file: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    run = ssc("eval", str(looped_file), "--data", SPEC, *argv)
    assert run.code == 2
    assert run.err.startswith("Error: ") and run.err.count("\n") == 1 and message in run.err
    assert list(tmp_path.iterdir()) == []  # no plot, not even a partial one


@pytest.mark.parametrize("iterations", ["4,8", "auto"])
def test_sweep_and_auto_need_a_looped_network_and_task_data(
    ssc, looped_file: Path, iterations: str
) -> None:
    run = ssc("eval", str(SHARED), "--data", SPEC, "--iterations", iterations)
    assert run.code == 2 and run.err.count("\n") == 1
    assert "has no loop that can run longer" in run.err and "ssc fold" in run.err
    run = ssc("eval", str(looped_file), "--data", "digits", "--iterations", iterations)
    assert run.code == 2 and run.err.count("\n") == 1 and "is not a task" in run.err


def test_a_looped_network_is_a_stepper_that_matches_its_trajectory(looped_file: Path) -> None:
    looped = load_looped(looped_file)
    assert isinstance(looped, LoopedFCN)
    stepper = as_stepper(looped)
    x = load_data("maze:size=3,count=2").x
    with torch.inference_mode():
        state = stepper.begin(x)
        for n, expected in enumerate(looped.trajectory(x, 15), start=1):  # past the trained 12
            state = stepper.step(state, n)
            assert torch.equal(stepper.read(state), expected)


def test_help_states_the_library_defaults(ssc) -> None:
    from soft_share_cli.evaluation.iterations import CAP_FACTOR, DEFAULT_PATIENCE

    run = ssc("eval", "--help")
    text = " ".join(run.out.split())
    assert run.code == 0 and f"[default: {DEFAULT_PATIENCE}]" in text
    assert f"[default: {CAP_FACTOR} x the trained count]" in text
