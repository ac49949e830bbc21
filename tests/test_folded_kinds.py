"""Issue 12: every kind of folded file through one door (folding/kinds.py).

* ``soft_share_cli.load_folded(path, model=None)`` loads SWRN, looped-FCN and user folds, each
  computing what the network it was folded from computes;
* ``ssc info``, ``analyze``, ``plot-similarity`` and ``eval`` read every kind;
* ``ssc fold`` accepts a folded file: a lower threshold merges more (the same figures as folding
  the original at that threshold), the same threshold saves nothing and says so, writing
  nothing; a fold of a user network is refused with a line saying what to do instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_surgery import USER_CODE, _readme_net

import soft_share_cli
from soft_share_cli.checkpoints.load import load_checkpoint
from soft_share_cli.models.builder import rebuild_model

ROOT = Path(__file__).resolve().parent.parent
PLAIN = ROOT / "sample_checkpoints" / "swrn28-1-4_digits.pt"
ALIGNED = ROOT / "sample_checkpoints" / "swrn28-1-4_digits_align.pt"
MAZE = ROOT / "sample_checkpoints" / "tasks" / "maze_shared.pt"


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> dict[str, tuple[Path, Path, str | None]]:
    """kind -> (folded file, original checkpoint, --model spec)."""
    from soft_share_cli.analysis.analyze import AnalysisOptions
    from soft_share_cli.pipeline.fold import FoldOptions, fold_checkpoint

    tmp = tmp_path_factory.mktemp("kinds")
    user_file = tmp / "readme_net.py"
    user_file.write_text(USER_CODE)
    user_ckpt = tmp / "user.pt"
    torch.save(_readme_net(user_file, [[1, 2, 3], [2, 4, 6], [3, -1, 0.5]]).state_dict(), user_ckpt)
    spec = f"{user_file}:ReadmeNet"
    out = {
        "swrn": (tmp / "swrn.safetensors", PLAIN, None, 0.999),
        "fcn": (tmp / "fcn.safetensors", MAZE, None, None),
        "user": (tmp / "user.safetensors", user_ckpt, spec, None),
    }
    for folded, source, model, threshold in out.values():
        analysis = AnalysisOptions() if threshold is None else AnalysisOptions(threshold=threshold)
        report = fold_checkpoint(source, folded, FoldOptions(analysis=analysis, model=model))
        assert report.output == str(folded), report
    return {kind: (f, s, m) for kind, (f, s, m, _) in out.items()}


def _original(source: Path, spec: str | None) -> torch.nn.Module:
    if spec is None:
        return rebuild_model(load_checkpoint(source))[0].eval()
    from soft_share_cli.models.user import build_user_model

    return build_user_model(spec, load_checkpoint(source).state_dict).eval()


@pytest.mark.parametrize("kind", ["swrn", "fcn", "user"])
def test_load_folded_loads_every_kind(folds, kind):
    folded, source, spec = folds[kind]
    network = soft_share_cli.load_folded(folded, model=spec)
    assert not network.training
    original = _original(source, spec)
    shape = (3, 3, 9, 9) if kind == "fcn" else (3, 1, 8, 8)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = original(x), network(x)
    assert a.shape == b.shape
    # SWRN at 0.999 and the exact user fold reproduce the original; the FCN fold is approximate
    tolerance = 0.5 if kind == "fcn" else 1e-3
    assert (a - b).abs().max().item() < tolerance * max(1.0, a.abs().max().item())


def test_load_folded_takes_the_factory_itself(folds):
    """From Python, the callable that builds the network serves as well as its spec."""
    from soft_share_cli.models.user import load_factory

    folded, source, spec = folds["user"]
    factory = load_factory(spec)  # the user's own class, imported as a user would
    by_spec = soft_share_cli.load_folded(folded, model=spec)
    by_callable = soft_share_cli.load_folded(folded, model=factory)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(by_callable(x), by_spec(x), rtol=0, atol=0)
    assert not by_callable.training

    def not_a_network() -> object:
        return "a string"

    from soft_share_cli.errors import InputError

    with pytest.raises(InputError, match="not a torch.nn.Module"):
        soft_share_cli.load_folded(folded, model=not_a_network)


def test_load_folded_of_a_user_fold_needs_the_model(folds):
    from soft_share_cli.errors import InputError

    with pytest.raises(InputError, match="module:callable"):
        soft_share_cli.load_folded(folds["user"][0])
    from soft_share_cli.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a folded file"):
        soft_share_cli.load_folded(PLAIN)


@pytest.mark.parametrize("kind", ["swrn", "fcn", "user"])
def test_every_command_reads_every_kind(ssc, folds, kind, tmp_path):
    folded, _, spec = folds[kind]
    info = ssc("info", str(folded), "--json")
    assert info.code == 0, info.err
    assert info.json()["architecture_name"].startswith("folded")
    analyze = ssc("analyze", str(folded), "--json")
    assert analyze.code == 0, analyze.err
    assert analyze.json()["banks"]
    plot = ssc("plot-similarity", str(folded), "-o", str(tmp_path / "lsm.png"))
    assert plot.code == 0, plot.err
    assert (tmp_path / "lsm.png").stat().st_size > 0
    data = "maze:size=3,count=4" if kind == "fcn" else "digits?limit=30"
    model = ("--model", spec) if spec else ()
    run = ssc("eval", str(folded), "--data", data, *model, "--json")
    assert run.code == 0, run.err


def test_a_folded_file_folds_again_like_its_original(ssc, folds, tmp_path):
    folded = folds["swrn"][0]
    again = ssc("fold", str(folded), "-o", str(tmp_path / "again.safetensors"), "--threshold",
                "0.5", "--json")  # fmt: skip
    direct = ssc("fold", str(PLAIN), "-o", str(tmp_path / "direct.safetensors"), "--threshold",
                 "0.5", "--json")  # fmt: skip
    assert again.code == 0 and direct.code == 0, (again.err, direct.err)
    a, d = again.json(), direct.json()
    assert a["params"]["folded"] == d["params"]["folded"] < a["params"]["checkpoint_unique"]
    assert a["loops"] == d["loops"] and a["loops"]
    # and the re-folded file is what it says: it stores the reported count
    stored = ssc("info", str(tmp_path / "again.safetensors"), "--json").json()
    assert stored["unique_parameters"] == a["params"]["folded"]


def test_stored_distinct_weights_fold_again_by_their_weights(ssc, tmp_path):
    """A bank stored as its C distinct weights is seen with one-hot directions: only the weight
    metric can merge them, and then the re-fold is the fold of the original."""
    first = tmp_path / "aligned.safetensors"
    assert ssc("fold", str(ALIGNED), "-o", str(first)).code == 0
    banks = ssc("fold", str(first), "-o", str(tmp_path / "x.safetensors"), "--threshold", "0.3")
    assert banks.code == 2 and "--metric weight" in banks.err
    runs = [
        ssc("fold", str(source), "-o", str(tmp_path / f"{name}.safetensors"), "--threshold", "0.0",
            "--metric", "weight", "--json")
        for name, source in (("again", first), ("direct", ALIGNED))
    ]  # fmt: skip
    assert all(run.code == 0 for run in runs), [run.err for run in runs]
    again, direct = (run.json() for run in runs)
    assert again["params"]["folded"] == direct["params"]["folded"]
    assert again["params"]["folded"] < again["params"]["checkpoint_unique"]
    assert again["loops"] == direct["loops"]


def test_the_same_threshold_saves_nothing_and_writes_nothing(ssc, folds, tmp_path):
    out = tmp_path / "same.safetensors"
    run = ssc("fold", str(folds["swrn"][0]), "-o", str(out), "--threshold", "0.999")
    assert run.code == 2 and "nothing was written" in run.err and "already folded" in run.err
    assert not out.exists()


def test_a_user_fold_is_not_folded_again(ssc, folds, tmp_path):
    folded, _, spec = folds["user"]
    run = ssc("fold", str(folded), "-o", str(tmp_path / "x.safetensors"), "--model", spec)
    assert run.code == 2 and "fold the original" in run.err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_looped_fcn_folds_again(ssc, folds, tmp_path):
    """A looped FCN re-folds as the SFCN it came from: a lower threshold merges more, and the
    file is what the report says. (Its first fold approximated the directions, so its clusters
    at 0.5 need not be those of the original's.)"""
    folded = folds["fcn"][0]
    out = tmp_path / "again.safetensors"
    run = ssc("fold", str(folded), "-o", str(out), "--threshold", "0.5", "--json")
    assert run.code == 0, run.err
    again = run.json()
    assert again["architecture"].startswith("SFCN") and again["loops"]
    assert again["params"]["folded"] < again["params"]["checkpoint_unique"]
    assert again["params"]["checkpoint_unique"] == ssc("info", str(folded), "--json").json()[
        "unique_parameters"
    ]
    stored = ssc("info", str(out), "--json").json()
    assert stored["unique_parameters"] == again["params"]["folded"]
    assert stored["architecture_name"].startswith("folded SFCN")


@pytest.mark.parametrize("kind", ["swrn", "fcn"])
def test_model_is_refused_for_folds_ssc_rebuilds_itself(ssc, folds, kind, tmp_path):
    folded, _, _ = folds["user"]
    spec = folds["user"][2]
    target = folds[kind][0]
    data = "maze:size=3,count=4" if kind == "fcn" else "digits?limit=30"
    run = ssc("eval", str(target), "--data", data, "--model", spec)
    assert run.code == 2 and "--model applies" in run.err, run.err
    out = tmp_path / "again.safetensors"
    run = ssc("fold", str(target), "-o", str(out), "--model", spec)
    assert run.code == 2 and "--model applies" in run.err and not out.exists(), run.err
    assert folded.exists()


@pytest.mark.parametrize(
    ("source", "data", "message"),
    [
        (PLAIN, "maze:size=4,count=4", "input channels"),
        (MAZE, "digits?limit=30", "input channels"),
        (MAZE, "prefix-sums:length=8,count=4", "input channels"),
    ],
)
def test_fold_refuses_data_the_network_cannot_read(ssc, tmp_path, source, data, message):
    out = tmp_path / "f.safetensors"
    run = ssc("fold", str(source), "-o", str(out), "--data", data)
    assert run.code == 2 and message in run.err and not out.exists(), run.err
    assert run.err.count("\n") == 1
