"""Regression guards for promises no other test pins independently (issue 11, section 6).

* Exit 4: an internal error (a bug, injected here) is one ``Error: internal error (...)`` line
  that asks for ``--debug``, nothing on stdout (no partial JSON), and the traceback only under
  ``--debug``; Ctrl-C is exit 130 with one line.
* The fold of the real aligned samples is checked against a reference computed here with numpy
  alone (an SVD of each cluster's coefficients) from the tensors of the written safetensors file,
  read without ssc's loader, and its top-1 equals the original's as the README says.
* The maze figures of ``sample_checkpoints/README.md`` are measured again with ``ssc eval`` on
  the specs the README names and compared with the table, not with what the checkpoint records.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"
ALIGNED = SAMPLES / "swrn28-1-4_digits_align.pt"
INTERNAL = re.compile(
    r"^Error: internal error \((?P<type>\w+): (?P<message>.*)\); "
    r"rerun with --debug and report the traceback$"
)


# --- exit 4: internal errors ---------------------------------------------------------------------


def _raiser(exc: BaseException):
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


def _assert_internal_error(run, exc_type: str, message: str) -> None:
    assert run.code == 4, (run.code, run.out, run.err)
    assert run.out == ""  # nothing, in particular no partial JSON
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    match = INTERNAL.match(lines[0])
    assert match, lines[0]
    assert match["type"] == exc_type and match["message"] == message
    assert "Traceback" not in run.err


def _assert_debug_traceback(run, exc_type: str, injected: str) -> None:
    assert run.code == 4, (run.code, run.out, run.err)
    assert run.out == ""
    assert "Traceback (most recent call last):" in run.err
    assert injected in run.err  # the traceback reaches the function that raised
    lines = run.err.splitlines()
    assert INTERNAL.match(lines[-1]) and f"({exc_type}: " in lines[-1]  # the one line comes last
    assert sum(line.startswith("Error:") for line in lines) == 1


# (command line, function to break, exception): a top-level pipeline call and deeper ones.
INJECTIONS = [
    (
        ("info", str(ALIGNED)),
        "soft_share_cli.pipeline.info.inspect_checkpoint",
        RuntimeError("injected: two\nlines"),
    ),
    (
        ("info", str(ALIGNED), "--json"),
        "soft_share_cli.checkpoints.load.load_checkpoint",
        KeyError("injected"),
    ),
    (
        ("eval", str(ALIGNED), "--data", "digits", "--json"),
        "soft_share_cli.evaluation.classification.evaluate",
        ZeroDivisionError("injected division by zero"),
    ),
    (
        ("analyze", str(ALIGNED), "--json"),
        "soft_share_cli.pipeline.analyze.analyze_state_dict",
        IndexError("injected"),
    ),
]


@pytest.mark.parametrize(
    ("argv", "target", "exc"), INJECTIONS, ids=[" ".join(i[0][:1] + i[0][2:]) for i in INJECTIONS]
)
def test_an_internal_error_is_exit_4_with_one_line(
    ssc, monkeypatch: pytest.MonkeyPatch, argv, target: str, exc: Exception
) -> None:
    monkeypatch.setattr(target, _raiser(exc))
    message = " ".join(str(exc).split("\n"))  # a message of several lines becomes one
    _assert_internal_error(ssc(*argv), type(exc).__name__, message)
    # --debug, after the command or before it: the traceback too, and still exit 4
    _assert_debug_traceback(ssc(*argv, "--debug"), type(exc).__name__, "in fail")
    _assert_debug_traceback(ssc("--debug", *argv), type(exc).__name__, "in fail")


def test_a_json_report_that_fails_to_serialise_prints_nothing(
    ssc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the middle of the JSON (an unserialisable value after good ones): no half object."""
    from soft_share_cli.pipeline import info as pipeline

    real = pipeline.CheckpointInfo.to_dict

    def broken(self: pipeline.CheckpointInfo) -> dict:
        return {**real(self), "zz_unserialisable": object()}

    monkeypatch.setattr(pipeline.CheckpointInfo, "to_dict", broken)
    run = ssc("info", str(ALIGNED), "--json")
    assert run.code == 4 and run.out == "", (run.out, run.err)
    assert len(run.err.splitlines()) == 1 and INTERNAL.match(run.err.strip())
    assert "TypeError" in run.err


CTRL_C = [("info", str(ALIGNED)), ("info", str(ALIGNED), "--json")]


@pytest.mark.parametrize("argv", CTRL_C)
def test_ctrl_c_is_exit_130_with_one_line(ssc, monkeypatch: pytest.MonkeyPatch, argv) -> None:
    monkeypatch.setattr(
        "soft_share_cli.checkpoints.load.load_checkpoint", _raiser(KeyboardInterrupt())
    )
    run = ssc(*argv)
    assert run.code == 130 and run.out == ""
    assert [line for line in run.err.splitlines() if line.strip()] == [
        "Error: interrupted; nothing was written"
    ]
    debug = ssc(*argv, "--debug")
    assert debug.code == 130 and debug.out == "" and "KeyboardInterrupt" in debug.err


@pytest.mark.parametrize("argv", CTRL_C)
def test_ctrl_c_adds_no_blank_line(ssc, monkeypatch: pytest.MonkeyPatch, argv) -> None:
    monkeypatch.setattr(
        "soft_share_cli.checkpoints.load.load_checkpoint", _raiser(KeyboardInterrupt())
    )
    assert ssc(*argv).err == "Error: interrupted; nothing was written\n"


def test_the_injections_are_real(ssc) -> None:
    """Without the injection the same command lines succeed: exit 4 above is the injected bug."""
    for argv, _, _ in INJECTIONS[:2]:
        run = ssc(*argv)
        assert run.code == 0 and run.err == "", run.err
    assert json.loads(ssc("info", str(ALIGNED), "--json").out)["format"] == "zip"


# --- the fold of the real samples, checked with numpy alone ---------------------------------------

FOLDED_SAMPLES = ["swrn28-1-4_digits_align.pt", "authors_swrn28-1-4_digits_align.pth.tar"]


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file, parsed here (no ssc code involved)."""
    from safetensors.numpy import load_file

    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    return load_file(str(path)), header["__metadata__"]


def _original_tensors(name: str) -> dict[str, np.ndarray]:
    path = SAMPLES / name
    if path.suffix == ".pt":  # an ssc checkpoint: plain tensors, torch's own safe loader reads it
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    else:  # the authors' layout holds a pickled RecorderMeter: only ssc's loader opens it
        from soft_share_cli.checkpoints.load import load_checkpoint

        state = load_checkpoint(path).state_dict
    return {k: v.detach().double().numpy() for k, v in state.items()}


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``ssc fold SAMPLE -o OUT`` at the default threshold, once per aligned sample."""
    from soft_share_cli.cli import _state, main

    out = {}
    for name in FOLDED_SAMPLES:
        path = tmp_path_factory.mktemp("fold") / "folded.safetensors"
        _state["debug"] = False
        with pytest.raises(SystemExit) as exit_info:
            main(["fold", str(SAMPLES / name), "-o", str(path), "--json"])
        assert exit_info.value.code in (0, None)
        out[name] = path
    return out


def _file_scales(
    tensors: dict[str, np.ndarray], original: dict[str, np.ndarray], stage: int, segment: dict,
    index: int, t: int, block: int,
) -> tuple[float, float]:
    """conv1's and conv2's scale in iteration ``t``, read back from where the README puts them.

    conv1: into bn2's running mean (mu' = mu / s) or an explicit gain; conv2: into bn2's bias
    (beta' = s beta, s > 0) or an explicit gain.
    """
    loop, bn = f"stage_{stage}_loops.{index}", f"stage_{stage}.{block}.bn2"
    if t in segment["conv1_gain_iterations"]:
        s1 = float(tensors[f"{loop}.conv1_gains"][segment["conv1_gain_iterations"].index(t)])
    else:
        mean, folded_mean = original[f"{bn}.running_mean"], tensors[f"{loop}.bn2.{t}.running_mean"]
        s1 = float(mean @ mean / (mean @ folded_mean.astype(np.float64)))
    if t in segment["gain_iterations"]:
        s2 = float(tensors[f"{loop}.conv2_gains"][segment["gain_iterations"].index(t)])
        np.testing.assert_array_equal(tensors[f"{loop}.bn2.{t}.bias"], original[f"{bn}.bias"])
    else:
        bias, folded_bias = original[f"{bn}.bias"], tensors[f"{loop}.bn2.{t}.bias"]
        s2 = float(bias @ folded_bias.astype(np.float64) / (bias @ bias))
    return s1, s2


def _residual(members: np.ndarray, u: np.ndarray) -> float:
    """sum_i min_s ||a_i - s u||^2 for a unit u."""
    return float((members**2).sum() - ((members @ u) ** 2).sum())


@pytest.mark.parametrize("name", FOLDED_SAMPLES)
def test_the_folded_directions_are_the_svd_optimum(folds: dict[str, Path], name: str) -> None:
    tensors, meta = _read_safetensors(folds[name])
    program, report = json.loads(meta["program"]), json.loads(meta["report"])
    assert report["metric"] == "coefficients"  # the default: the fit is in coefficient space
    original = _original_tensors(name)
    rng = np.random.default_rng(0)
    checked = 0
    for stage in (1, 2, 3):
        bank = program["banks"][f"bank_{stage}"]
        assert bank["storage"] == "weights"
        templates = original[f"bank_{stage}.templates"]
        basis = templates.reshape(len(templates), -1).T  # (O*I*k*k, K)
        # which layer is in which cluster, and where its scale went, from the file's loops
        layers: dict[int, list[tuple[np.ndarray, float]]] = {}
        block = 1  # block 0 of each stage has weights of its own
        for index, segment in enumerate(program["stages"][f"stage_{stage}"]):
            for t in range(segment["iterations"]):
                scales = _file_scales(tensors, original, stage, segment, index, t, block)
                for role, scale in zip(("conv1", "conv2"), scales, strict=True):
                    a = original[f"stage_{stage}.{block}.{role}.coefficients"].reshape(-1)
                    layers.setdefault(segment[f"{role}_cluster"], []).append((a, scale))
                block += 1
        assert sorted(layers) == list(range(bank["clusters"]))
        for c, members_and_scales in layers.items():
            members = np.stack([a for a, _ in members_and_scales])
            # every pair of the cluster meets the threshold (|cosine| of the coefficients)
            unit_rows = members / np.linalg.norm(members, axis=1, keepdims=True)
            assert (np.abs(unit_rows @ unit_rows.T) >= report["threshold"] - 1e-9).all()
            # the reference: the top right singular vector of the members' coefficients
            v = np.linalg.svd(members, full_matrices=False)[2][0]
            # the file's direction: its stored weight W(u) = sum_k u_k T_k, solved for u
            stored = tensors[f"bank_{stage}.weights"][c].astype(np.float64).reshape(-1)
            u = np.linalg.lstsq(basis, stored, rcond=None)[0]
            assert np.linalg.norm(basis @ u - stored) <= 1e-6 * np.linalg.norm(stored)
            sign = np.sign(u @ v)
            np.testing.assert_allclose(u, sign * v, rtol=0, atol=1e-6)
            # the scales are the least-squares ones, s_i = <a_i, u>, sign included
            expected = members @ (sign * v)
            got = np.array([s for _, s in members_and_scales])
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
            # optimality: no nearby direction leaves a smaller total residual
            best = _residual(members, u / np.linalg.norm(u))
            assert best == pytest.approx(_residual(members, v), rel=1e-6, abs=1e-12)
            for size in (1e-3, 1e-2, 1e-1):
                for _ in range(4):
                    w = u + size * rng.standard_normal(u.shape)
                    assert best <= _residual(members, w / np.linalg.norm(w)) + 1e-12
            checked += 1
    assert checked == 6  # two clusters in each of the three banks


def _readme_fold_table(text: str) -> dict[str, str]:
    """The top-1 column of the README's ``ssc fold`` example (the aligned sample, --data digits)."""
    section = text[text.index("### `ssc fold CKPT -o OUT`") :]
    section = section[: section.index("```\n", section.index("```console") + 10)]
    assert "ssc fold sample_checkpoints/swrn28-1-4_digits_align.pt" in section
    rows = re.findall(r"^│ (original|folded)\s+│\s+([\d.]+) %", section, flags=re.M)
    return dict(rows)


def test_the_folded_aligned_sample_keeps_the_readme_top1(ssc, folds: dict[str, Path]) -> None:
    listed = _readme_fold_table((ROOT / "README.md").read_text())
    assert set(listed) == {"original", "folded"}
    name = "swrn28-1-4_digits_align.pt"
    original = ssc("eval", str(SAMPLES / name), "--data", "digits", "--json")
    folded = ssc("eval", str(folds[name]), "--data", "digits", "--json")
    assert original.code == folded.code == 0, original.err + folded.err
    top1 = original.json()["top1"], folded.json()["top1"]
    assert top1[1] == top1[0]  # exactly: the same test images predicted right
    assert (f"{top1[0]:.2f}", f"{top1[1]:.2f}") == (listed["original"], listed["folded"])


# --- the maze figures of sample_checkpoints/README.md, measured again --------------------------

# Each figure is measured on the full test set of the very spec the README names and must be
# the listed one to the README's precision (one decimal).


def _readme_maze_figures() -> tuple[list[str], dict[str, list[float]]]:
    """The specs the samples README says it measured, and each file's solved rates, in order."""
    text = (SAMPLES / "README.md").read_text()
    section = text[text.index("## Maze solvers") :]
    section = section.split("\n## ", 1)[0]  # up to the next section (the looped networks)
    intro, table = section.split("\n|", 1)
    specs = re.findall(r"--data (maze:[^`\s]+)", intro)
    rows = [r.strip().strip("|").split("|") for r in ("|" + table).splitlines() if r.strip()]
    header = [cell.strip() for cell in rows[0]]
    first = header.index(next(h for h in header if h.startswith("solved")))
    columns = header[first : first + len(specs)]
    # each column names the maze size of its spec: "solved 4x4", "6x6", "8x8"
    for column, spec in zip(columns, specs, strict=True):
        size = re.search(r"size=(\d+)", spec)
        assert size and column.endswith(f"{size[1]}x{size[1]}"), (column, spec)
    figures = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row]
        name = cells[0].strip("`")
        figures[name] = [float(c.rstrip(" %")) for c in cells[first : first + len(specs)]]
    return specs, figures


def test_the_maze_readme_names_three_specs_and_two_files() -> None:
    specs, figures = _readme_maze_figures()
    assert specs == ["maze:size=4,count=4000", "maze:size=6", "maze:size=8"]
    assert sorted(figures) == ["tasks/maze_plain.pt", "tasks/maze_shared.pt"]


@pytest.mark.parametrize("name", ["tasks/maze_shared.pt", "tasks/maze_plain.pt"])
def test_the_maze_readme_figures_are_measured(ssc, name: str) -> None:
    specs, figures = _readme_maze_figures()
    for spec, listed in zip(specs, figures[name], strict=True):
        run = ssc("eval", str(SAMPLES / name), "--data", spec, "--json")
        assert run.code == 0, run.err
        report = run.json()
        assert report["samples"] == (4000 if "count=4000" in spec else 1000)
        assert round(report["exact"], 1) == pytest.approx(listed), (name, spec, report["exact"])
