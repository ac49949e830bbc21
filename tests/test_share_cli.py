"""``ssc share`` end to end: exact round trips, counts as ``ssc info`` sees them, outputs the other
commands read, the fine-tune (measured, resumable) and every refusal as one line with exit 2."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
WRN = SAMPLES / "wrn28-1_digits.pt"  # ssc train --arch wrn --depth 28 --width 1 --data digits
DATA = "digits?limit=300"  # 300 train and 300 test images: a fine-tune epoch in about a second

USER_MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    """Three same-shape 3x3 convs in one stage (with biases), a 1x1 and a head around them."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def build():
    return Net()


def lonely():
    """No two same-shape 3x3 convs in one stage."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


def pooled():
    """A flat Sequential that pools: it takes 8x8 and 32x32 inputs alike."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )


class Listed(Net):
    """A conv kept in a plain list: not registered, so every build draws it anew."""

    def __init__(self):
        super().__init__()
        self.hidden = [nn.Conv2d(8, 8, 3, padding=1)]

    def forward(self, x):
        return self.head(self.hidden[0](self.body(self.stem(x))))


class Noisy(Net):
    """An offset kept as a plain tensor (not a buffer): every build draws it anew."""

    def __init__(self):
        super().__init__()
        self.offset = torch.randn(10)

    def forward(self, x):
        return super().forward(x) + self.offset


def listed():
    return Listed()


def noisy():
    return Noisy()
'''


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: on 2 shared cores a thread pool's waiting costs more than it gains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("share")


@pytest.fixture(scope="module")
def small_wrn(work: Path) -> Path:
    """A WRN 16-1 trained for 2 epochs on the digits (banks of 2 layers per stage)."""
    from soft_share_cli.pipeline.train import run_train
    from soft_share_cli.training.classification import TrainConfig

    path = work / "wrn16.pt"
    run_train(TrainConfig(arch="wrn", depth=16, num_templates=None, epochs=2), DATA, path)
    return path


def _user_checkpoint(spec: str, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The state dict of the network ``spec`` builds (seeded), its floats in ``dtype``."""
    from soft_share_cli.models.user import load_factory

    torch.manual_seed(0)
    state = load_factory(spec)().state_dict()
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def user(work: Path) -> tuple[Path, str]:
    """The checkpoint of a user network (random weights, seeded) and its --model spec."""
    source = work / "usernet.py"
    source.write_text(USER_MODEL)
    spec = f"{source}:build"
    return _user_checkpoint(spec, work / "usernet.pt"), spec


def _logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.models.builder import rebuild_model

    model, _ = rebuild_model(load_checkpoint(path))
    with torch.no_grad():
        return model.eval()(x)


def _stage_weights(path: Path) -> list[np.ndarray]:
    """conv1/conv2 of blocks 1.. of each stage, stacked and flattened (numpy, from the file)."""
    state = torch.load(path, weights_only=True)["state_dict"]
    out = []
    for stage in (1, 2, 3):
        keys = [k for k in state if k.startswith(f"stage_{stage}.") and ".conv" in k]
        keys = [k for k in keys if not k.startswith(f"stage_{stage}.0.") and "Shortcut" not in k]
        out.append(np.stack([state[k].double().numpy().ravel() for k in sorted(keys)]))
    return out


# --- data-free ------------------------------------------------------------------------------


def test_round_trip_at_group_size_is_exact(ssc, tmp_path: Path) -> None:
    out = tmp_path / "six.pt"
    run = ssc("share", str(WRN), "-o", str(out), "--templates", "6", "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert [g["name"] for g in report["groups"]] == ["stage_1", "stage_2", "stage_3"]
    assert all(len(g["layers"]) == 6 and g["relative_error"] < 1e-6 for g in report["groups"])
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_logits(out, x), _logits(WRN, x), atol=1e-5, rtol=0)
    assert report["probe"]["max_abs_diff"] < 1e-5
    # K = 6 templates replace 6 weights: only the 6 x 6 coefficients per stage are added
    shared = 369_210 + 3 * 36
    assert report["params"] == {
        "original": 369_210,
        "shared": shared,
        "saved_pct": pytest.approx(100 * (1 - shared / 369_210)),
    }
    info = ssc("info", str(out), "--json").json()
    assert info["unique_parameters"] == report["params"]["shared"]
    assert info["architecture_name"] == "SWRN 28-1-6 (10 classes, 1 input channel)"
    meta = info["metadata"]
    assert meta["shared_from"]["architecture"] == "WRN 28-1 (10 classes, 1 input channel)"
    assert meta["shared_from"]["sha256"] == hashlib.sha256(WRN.read_bytes()).hexdigest()


def test_k1_reads_in_analyze_and_folds_with_the_command_it_prints(ssc, tmp_path: Path) -> None:
    out = tmp_path / "one.pt"
    run = ssc("share", str(WRN), "-o", str(out), "--templates", "1", "--json")
    assert run.code == 0, run.err
    report = run.json()
    # each stage's 6 weights (c x c x 3 x 3) become one template and 6 coefficients
    removed = sum(5 * c * c * 9 - 6 for c in (16, 32, 64))
    assert report["params"]["shared"] == 369_210 - removed
    assert ssc("info", str(out), "--json").json()["unique_parameters"] == 369_210 - removed
    analysis = ssc("analyze", str(out), "--json")
    assert analysis.code == 0, analysis.err
    assert len(analysis.json()["banks"]) == 3
    words = shlex.split(report["fold_command"])
    assert words == ["ssc", "fold", str(out), "-o", str(tmp_path / "one.safetensors")]
    folded = ssc(*words[1:], "--json")
    assert folded.code == 0, folded.err
    # one template per bank: every layer is parallel to every other, and the fold is exact
    assert folded.json()["probe"]["max_abs_diff"] < 1e-4


def test_keep_takes_the_largest_k_the_stages_need(ssc, tmp_path: Path) -> None:
    keep = 0.5
    needed = []
    for w in _stage_weights(WRN):
        energy = np.linalg.svd(w, compute_uv=False) ** 2
        needed.append(int(np.searchsorted(np.cumsum(energy) / energy.sum(), keep) + 1))
    run = ssc("share", str(WRN), "-o", str(tmp_path / "k.pt"), "--keep", str(keep), "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert [g["needed_templates"] for g in report["groups"]] == needed
    assert {g["templates"] for g in report["groups"]} == {max(needed)}
    assert f"K = {max(needed)}" in report["note"]
    # the kept energy of every stage is at least the fraction asked for
    assert all(1 - g["relative_error"] ** 2 >= keep for g in report["groups"])


def test_json_schema(ssc, tmp_path: Path) -> None:
    run = ssc("share", str(WRN), "-o", str(tmp_path / "s.pt"), "--templates", "2", "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)  # stdout holds the JSON and nothing else
    assert set(report) == {
        "schema_version", "checkpoint", "architecture", "shared_architecture", "output",
        "templates", "keep", "note", "params", "groups", "probe", "data", "finetune",
        "resumed_epochs", "fold_command", "file_bytes", "timing",
    }  # fmt: skip
    assert report["schema_version"] == 1 and report["data"] is None
    assert set(report["groups"][0]) == {
        "name", "layers", "shape", "templates", "relative_error", "needed_templates"
    }  # fmt: skip
    assert report["groups"][0]["shape"] == [16, 16, 3, 3]
    assert set(report["probe"]) == {"shape", "max_abs_diff", "max_abs_logit", "relative", "basis"}
    assert report["probe"]["shape"] == [16, 1, 8, 8]
    assert report["probe"]["basis"] == "ssc fold's probe"
    assert report["finetune"] == {"epochs": 0, "history": []}


def test_user_network_round_trip_and_record(ssc, user, tmp_path: Path) -> None:
    path, spec = user
    out = tmp_path / "user_shared.pt"
    run = ssc("share", str(path), "-o", str(out), "--model", spec, "--templates", "3", "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert [(g["name"], g["layers"]) for g in report["groups"]] == [
        ("body", ["body.0", "body.2", "body.6"])
    ]
    assert report["probe"]["max_abs_diff"] < 1e-5
    assert report["fold_command"].endswith(f"--model {shlex.quote(spec)}")
    # one bank of 3 templates stands in for the 3 weights; the biases stay the layers' own
    assert report["params"]["shared"] == report["params"]["original"] + 3 * 3
    info = ssc("info", str(out), "--json").json()
    assert info["unique_parameters"] == report["params"]["shared"]
    # every layer outside the group is stored as it was, and each grouped conv keeps its bias
    before = torch.load(path, weights_only=True)
    after = torch.load(out, weights_only=True)["state_dict"]
    for key in ("stem.weight", "stem.bias", "body.4.weight", "head.1.weight", "body.2.bias"):
        assert torch.equal(after[key], before[key]), key
    assert "body.2.weight" not in after and after["body.2.coefficients"].shape == (3, 1, 1, 1, 1)
    record = info["metadata"]["sharing"]
    assert [g["layers"] for g in record["groups"]] == [["body.0", "body.2", "body.6"]]
    again = ssc("share", str(out), "-o", str(tmp_path / "again.pt"), "--model", spec,
                "--templates", "1")  # fmt: skip
    assert again.code == 2 and "already shares" in again.err


def test_user_groups_option_chooses_the_layers(ssc, user, tmp_path: Path) -> None:
    path, spec = user
    out = tmp_path / "two.pt"
    run = ssc("share", str(path), "-o", str(out), "--model", spec, "--templates", "1",
              "--groups", "body.0,body.6", "--json")  # fmt: skip
    assert run.code == 0, run.err
    assert [g["layers"] for g in run.json()["groups"]] == [["body.0", "body.6"]]


def test_user_keep_chooses_k_per_group(ssc, user, tmp_path: Path) -> None:
    path, spec = user
    state = torch.load(path, weights_only=True)
    w = np.stack([state[f"body.{i}.weight"].double().numpy().ravel() for i in (0, 2, 6)])
    energy = np.linalg.svd(w, compute_uv=False) ** 2
    needed = int(np.searchsorted(np.cumsum(energy) / energy.sum(), 0.6) + 1)
    run = ssc("share", str(path), "-o", str(tmp_path / "k.pt"), "--model", spec, "--keep", "0.6",
              "--json")  # fmt: skip
    assert run.code == 0, run.err
    (group,) = run.json()["groups"]
    assert group["templates"] == group["needed_templates"] == needed
    assert run.json()["note"] is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=["fp16", "fp64"])
def test_the_file_keeps_the_source_dtype(ssc, user, tmp_path: Path, dtype) -> None:
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.models.user import build_user_model

    _, spec = user
    path = _user_checkpoint(spec, tmp_path / "source.pt", dtype)
    out = tmp_path / "shared.pt"
    run = ssc("share", str(path), "-o", str(out), "--model", spec, "--templates", "3", "--json")
    assert run.code == 0, run.err
    report = run.json()
    before = torch.load(path, weights_only=True)
    after = torch.load(out, weights_only=True)["state_dict"]
    assert {v.dtype for v in after.values() if v.is_floating_point()} == {dtype}
    for key in ("stem.weight", "stem.bias", "body.4.weight", "head.1.weight", "body.2.bias"):
        assert after[key].dtype == dtype and torch.equal(after[key], before[key]), key
    # the bank is still one tensor for its 3 layers, so the count is the float32 one
    assert report["params"]["shared"] == report["params"]["original"] + 3 * 3
    # the group's error, recomputed from the stored bank and coefficients (float16 rounds them)
    names = ("body.0", "body.2", "body.6")
    w = torch.stack([before[f"{n}.weight"].double() for n in names])
    fit = torch.stack([
        torch.tensordot(after[f"{n}.coefficients"].double().reshape(-1),
                        after[f"{n}.bank.templates"].double(), dims=1)
        for n in names
    ])  # fmt: skip
    error = float((w - fit).norm() / w.norm())
    (group,) = report["groups"]
    assert group["relative_error"] == pytest.approx(error, rel=1e-3, abs=1e-7)
    assert (error > 1e-5) == (dtype == torch.float16)
    # the probe measured the network the file holds: rebuilt from it, the same difference
    ckpt = load_checkpoint(out)
    rebuilt = build_user_model(spec, ckpt.state_dict, ckpt.metadata, str(out)).eval()
    original = build_user_model(spec, before, {}, str(path)).eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((rebuilt(x) - original(x)).abs().max())
    assert report["probe"]["shape"] == [16, 1, 8, 8]
    assert report["probe"]["max_abs_diff"] == pytest.approx(diff, rel=1e-4, abs=1e-6)


def test_probe_takes_the_data_images_and_flat_groups_are_named(ssc, user, tmp_path) -> None:
    _, spec = user
    spec = spec.replace(":build", ":pooled")
    path = _user_checkpoint(spec, tmp_path / "pooled.pt")
    args = ("share", str(path), "--model", spec, "--templates", "1", "--json")
    plain = ssc(*args, "-o", str(tmp_path / "a.pt"))
    assert plain.code == 0, plain.err
    # no data: ssc fold's rule (the file says nothing of its data: 32x32 first, taken)
    assert plain.json()["probe"]["shape"] == [16, 1, 32, 32]
    assert plain.json()["probe"]["basis"] == "ssc fold's probe"
    # a flat nn.Sequential has no common module path: the group is named by its ends
    assert [(g["name"], g["layers"]) for g in plain.json()["groups"]] == [("2..4", ["2", "4"])]
    measured = ssc(*args, "-o", str(tmp_path / "b.pt"), "--data", DATA, "--finetune-epochs", "0")
    assert measured.code == 0, measured.err
    assert measured.json()["probe"]["shape"] == [16, 1, 8, 8]  # the digits' 1x8x8
    assert measured.json()["probe"]["basis"] == "the --data images' shape"


def test_ctrl_c_while_writing_leaves_nothing(ssc, tmp_path: Path, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    run = ssc("share", str(WRN), "-o", str(tmp_path / "out.pt"), "--templates", "2")
    assert run.code == 130 and run.err.strip() == "Error: interrupted; nothing was written"
    assert list(tmp_path.iterdir()) == []


# --- with data ------------------------------------------------------------------------------


def test_finetune_at_k1_recovers_accuracy(ssc, small_wrn: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned.pt"
    run = ssc("share", str(small_wrn), "-o", str(out), "--templates", "1", "--data", DATA,
              "--finetune-epochs", "2", "--json")  # fmt: skip
    assert run.code == 0, run.err
    report = run.json()
    data = report["data"]
    assert len(report["finetune"]["history"]) == 2
    # K = 1 loses a third of the points (measured: 71.3 -> 47.0 %), two epochs win most back (69.7)
    assert data["shared"] >= data["converted"] + 10
    assert data["delta_top1"] == pytest.approx(data["shared"] - data["original"])
    # measured again, independently, by ssc eval on the files
    original = ssc("eval", str(small_wrn), "--data", DATA, "--json").json()
    shared = ssc("eval", str(out), "--data", DATA, "--json").json()
    assert original["top1"] == data["original"]
    assert shared["top1"] == data["shared"] == shared["recorded_top1"]
    assert not Path(f"{out}.partial").exists()


def test_resume_after_an_interrupt_gives_the_same_weights(ssc, small_wrn: Path, tmp_path):
    from soft_share_cli.errors import Interrupted
    from soft_share_cli.pipeline.share import share_checkpoint
    from soft_share_cli.pipeline.share_options import FinetuneOptions, ShareOptions

    options = ShareOptions(templates=1, data=DATA, finetune=FinetuneOptions(epochs=2))
    whole = tmp_path / "whole.pt"
    share_checkpoint(small_wrn, whole, options)
    cut = tmp_path / "cut.pt"

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="1 finished epoch"):
        share_checkpoint(small_wrn, cut, options, on_epoch=stop)
    assert not cut.exists() and Path(f"{cut}.partial").exists()
    other = ssc("share", str(small_wrn), "-o", str(cut), "--templates", "2", "--data", DATA,
                "--finetune-epochs", "2", "--resume")  # fmt: skip
    assert other.code == 2 and "belongs to another run" in other.err
    fresh = ssc("share", str(small_wrn), "-o", str(cut), "--templates", "1", "--data", DATA,
                "--finetune-epochs", "2")  # fmt: skip
    assert fresh.code == 2 and "--resume" in fresh.err
    run = ssc("share", str(small_wrn), "-o", str(cut), "--templates", "1", "--data", DATA,
              "--finetune-epochs", "2", "--resume", "--json")  # fmt: skip
    assert run.code == 0, run.err
    assert run.json()["resumed_epochs"] == 1
    a = torch.load(whole, weights_only=True)["state_dict"]
    b = torch.load(cut, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not Path(f"{cut}.partial").exists()


# --- refusals -------------------------------------------------------------------------------


def _npz(path: Path, channels: int, classes: int, size: int = 8) -> str:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, channels, size, size)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(20) % classes)
    return f"npz:{path}"


REFUSALS = [
    (["SWRN", "--templates", "1"], "already shares its weights in template banks"),
    (["WRN"], "--templates K"),
    (["WRN", "--templates", "1", "--keep", "0.5"], "one of them"),
    (["WRN", "--templates", "0"], "group stage_1 has 6 layers"),
    (["WRN", "--templates", "7"], "group stage_1 has 6 layers, so K must lie in 1..6"),
    (["WRN", "--keep", "0"], "must lie in (0, 1]"),
    (["WRN", "--keep", "1.5"], "must lie in (0, 1]"),
    (["WRN", "--templates", "1", "--groups", "stage_1.*"], "--groups names the layers"),
    (["WRN", "--templates", "1", "--lr", "0.1"], "--lr applies to the fine-tune on --data"),
    (["WRN", "--templates", "1", "--finetune-epochs", "2"], "give --data SPEC"),
    (["WRN", "--templates", "1", "--resume"], "--resume applies"),
    (
        ["WRN", "--templates", "1", "--data", "digits", "--finetune-epochs", "0", "--seed", "1"],
        "--finetune-epochs 0 runs none",
    ),  # fmt: skip
    (["WRN", "--templates", "1", "--data", "digits", "--align-mode", "nearest"], "needs --align"),
    (["WRN", "--templates", "1", "-o", "WRN"], "never overwrites its input"),
    (["WRN", "--templates", "1", "-o", "OUT.safetensors"], "name it *.pt"),
    (["MAZE", "--templates", "1"], "not supported"),
    (["BARE", "--templates", "1"], "pass --model MODULE:CALLABLE"),
    (["LONELY", "--model", "lonely", "--templates", "1"], "no two same-shape 3x3 convs"),
    (["USER", "--model", "build", "--templates", "4"], "group body has 3 layers"),
    (["WRN", "--templates", "1", "--data", "RGB"], "3 input channels"),
    (["WRN", "--templates", "1", "--data", "CLASSES"], "12 classes"),
    (["USER", "--model", "build", "--templates", "1", "--data", "LARGE"], "cannot take"),
    (["LISTED", "--model", "listed", "--templates", "1"], "uses a weight it does not register"),
    (["NOISY", "--model", "noisy", "--templates", "1"], "does not compute from its registered"),
]


@pytest.mark.parametrize(("args", "message"), REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_refusals_are_one_line_and_exit_2(ssc, user, work, tmp_path, args, message) -> None:
    user_path, spec = user
    bare = tmp_path / "bare.pt"
    torch.save({"conv.weight": torch.zeros(4, 1, 3, 3)}, bare)
    places = {
        "WRN": str(WRN),
        "SWRN": str(SAMPLES / "swrn28-1-4_digits.pt"),
        "MAZE": str(SAMPLES / "tasks" / "maze_plain.pt"),
        "BARE": str(bare),
        "USER": str(user_path),
        "OUT.safetensors": str(tmp_path / "out.safetensors"),
        "build": spec,
    }
    for name in ("lonely", "listed", "noisy"):
        places[name] = spec.replace(":build", f":{name}")
        if name.upper() in args:
            path = _user_checkpoint(places[name], tmp_path / f"{name}.pt")
            places[name.upper()] = str(path)
    if "RGB" in args:
        places["RGB"] = _npz(tmp_path / "rgb.npz", 3, 10)
    if "CLASSES" in args:
        places["CLASSES"] = _npz(tmp_path / "classes.npz", 1, 12)
    if "LARGE" in args:
        places["LARGE"] = _npz(tmp_path / "large.npz", 1, 10, size=16)
    words = [places.get(a, a) for a in args]
    if "-o" not in words:
        words += ["-o", str(tmp_path / "out.pt")]
    run = ssc("share", *words)
    assert run.code == 2, (run.code, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.err
    assert message in lines[0]
    assert run.out == ""
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out.pt.partial").exists()


def test_already_folded_input_is_refused(ssc, tmp_path: Path) -> None:
    shared = tmp_path / "one.pt"
    assert ssc("share", str(WRN), "-o", str(shared), "--templates", "1").code == 0
    folded = tmp_path / "one.safetensors"
    assert ssc("fold", str(shared), "-o", str(folded)).code == 0
    run = ssc("share", str(folded), "-o", str(tmp_path / "x.pt"), "--templates", "1")
    assert run.code == 2 and "is a folded network" in run.err
    assert len(run.err.strip().splitlines()) == 1


def test_sample_matches_its_manifest(ssc, manifest) -> None:
    listed = manifest["wrn28-1_digits.pt"]
    run = ssc("eval", str(WRN), "--data", "digits", "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert report["top1"] == listed["test_top1"]
    assert report["architecture"] == listed["architecture"]
    assert WRN.stat().st_size == listed["bytes"]
    assert f"| {listed['test_top1']:.2f} % |" in (SAMPLES / "README.md").read_text()
