"""A user network converted by ``ssc share --model`` rebuilds everywhere ``--model`` is accepted.

``ssc share`` saves the user's network with its convs turned into template banks, and a *sharing
record* (layer names and K per group) in the metadata; the user's factory still builds the
original network. Here such checkpoints are made with the library (the same calls ``ssc share``
makes) from a small ResNet written below and from pytorchcv's ``resnet20_cifar10``, their convs
planted so that each stage alternates two weights (conv1 of every block a multiple of one tensor,
conv2 of another), so the right answers are known: K=3 fits them exactly, the analysis finds two
clusters per bank, the fold stores two weights and one gain per layer (the count is worked out
here from the original network alone), and every network gives the original's logits.
"""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint
from soft_share_cli.errors import CheckpointError
from soft_share_cli.folding.kinds import load_folded
from soft_share_cli.models.user import build_user_model, load_factory
from soft_share_cli.sharing.convert import share_network, sharing_record
from soft_share_cli.sharing.groups import ShareGroup, find_groups

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


    class ResNet(nn.Module):
        def __init__(self, blocks=3):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.stage1 = nn.Sequential(*[Block(8, 8, 1) for _ in range(blocks)])
            self.stage2 = nn.Sequential(Block(8, 16, 2), Block(16, 16, 1), Block(16, 16, 1))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.stem(x)))
            return self.fc(self.stage2(self.stage1(x)).mean((2, 3)))


    def resnet(blocks=3):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return ResNet(blocks)


    def deep():
        return resnet(blocks=6)


    def exploding():
        raise RuntimeError("the factory ran")
    """
)
K = 3
PYTORCHCV = "pytorchcv.models.resnet_cifar:resnet20_cifar10"
ESC = "\x1b"


def _one_line(run, code: int = 2) -> str:
    assert run.code == code, (run.code, run.out, run.err)
    assert run.err.startswith("Error: ") and run.err.strip().count("\n") == 0, run.err
    return str(run.err)


def _plant(model: nn.Module, groups: list[ShareGroup], mixes: int = 2) -> nn.Module:
    """Each group cycles through ``mixes`` weights (two tensors, then their sum), each layer its
    own scale; BN statistics not trivial."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for group in groups:
            fan_in = group.shape[1] * group.shape[2] * group.shape[3]
            base = [torch.randn(group.shape, generator=g) / fan_in**0.5 for _ in range(2)]
            base.append(base[0] + base[1])
            for i, name in enumerate(group.layers):
                model.get_submodule(name).weight.copy_(base[i % mixes] * (0.5 + 0.25 * i))
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2, generator=g)
            bn.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


def _share(
    spec: str, out: Path, k: int = K, mixes: int = 2
) -> tuple[nn.Module, list[ShareGroup], dict]:
    """The planted original network, its groups and record; ``out``: its shared checkpoint."""
    original = load_factory(spec)()
    groups = find_groups(original)
    _plant(original, groups, mixes)
    shared = copy.deepcopy(original)
    ks = [k] * len(groups)
    record = sharing_record(groups, ks, share_network(shared, groups, ks))
    save_checkpoint(out, arch="user", arch_kwargs={"model": spec},
                    state_dict=shared.state_dict(), metadata={"sharing": record})  # fmt: skip
    return original, groups, record


def _expected_folded(original: nn.Module, groups: list[ShareGroup]) -> int:
    """Two weights and one gain per layer in place of each group's weights."""
    plain = sum(p.numel() for p in original.parameters())
    per_group = [(2 - len(g.layers)) * g.layer_parameters + len(g.layers) for g in groups]
    return plain + sum(per_group)


def _probe(shape: tuple[int, ...] = (4, 3, 32, 32)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(3))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("share_user")
    (root / "nets.py").write_text(NETS)
    spec = f"{root / 'nets.py'}:resnet"
    original, groups, record = _share(spec, root / "shared.pt")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 32, 32)).astype("float32")
    np.savez(root / "data.npz", x=x, y=rng.integers(0, 10, 40))
    return {"root": root, "spec": spec, "original": original, "groups": groups,
            "record": record, "shared": root / "shared.pt", "data": f"npz:{root / 'data.npz'}",
            "x": torch.from_numpy(x)}  # fmt: skip


@pytest.fixture(scope="module")
def folded(made: dict) -> Path:
    """``ssc fold SHARED --model SPEC`` (through the library)."""
    from soft_share_cli.pipeline.fold import FoldOptions, fold_checkpoint

    out = made["root"] / "folded.safetensors"
    fold_checkpoint(made["shared"], out, FoldOptions(model=made["spec"]))
    return out


def test_the_shared_checkpoint_rebuilds_with_its_record(made: dict) -> None:
    ckpt = load_checkpoint(made["shared"])
    shared = build_user_model(made["spec"], ckpt.state_dict, ckpt.metadata)
    assert {n for n, m in shared.named_modules() if type(m).__name__ == "SharedConv2d"} == {
        name for g in made["groups"] for name in g.layers
    }
    with torch.no_grad():
        assert _relative(shared(_probe()), made["original"](_probe())) < 1e-5  # K=3 >= rank 2


def test_analyze_plot_fold_eval_info_with_model(ssc, made: dict, tmp_path: Path) -> None:
    spec, shared, groups = made["spec"], str(made["shared"]), made["groups"]
    expected = _expected_folded(made["original"], groups)
    run = ssc("analyze", shared, "--model", spec, "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert [[layer["name"] for layer in b["layers"]] for b in report["banks"]] == [
        list(g.layers) for g in groups
    ]
    assert [b["clusters"] for b in report["banks"]] == [[[0, 2, 4], [1, 3, 5]], [[0, 2, 4], [1, 3]]]
    assert report["params"]["folded"] == expected
    png = tmp_path / "lsm.png"
    run = ssc("plot-similarity", shared, "--model", spec, "-o", str(png))
    assert run.code == 0, run.err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out = tmp_path / "folded.safetensors"
    run = ssc("fold", shared, "--model", spec, "-o", str(out), "--json")
    assert run.code == 0, run.err
    assert run.json()["params"]["folded"] == expected
    run = ssc("info", str(out), "--json")
    assert run.code == 0, run.err
    assert run.json()["unique_parameters"] == expected
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["program"])["sharing"] == made["record"]
    folded = load_folded(out, model=spec)
    assert sum(p.numel() for p in folded.parameters()) == expected
    assert not any(type(m).__name__ == "SharedConv2d" for m in folded.modules())
    with torch.no_grad():
        assert _relative(folded(_probe()), made["original"](_probe())) < 1e-4
        truth = made["original"](made["x"]).argmax(1).numpy()
    labels = np.load(made["root"] / "data.npz")["y"]
    for path in (shared, str(out)):
        run = ssc("eval", path, "--model", spec, "--data", made["data"], "--json")
        assert run.code == 0, run.err
        assert run.json()["top1"] == pytest.approx(100 * float(np.mean(truth == labels)))


def test_a_third_party_resnet(ssc, tmp_path: Path) -> None:
    pytest.importorskip("pytorchcv")
    original, groups, _ = _share(PYTORCHCV, tmp_path / "shared.pt")
    assert [len(g.layers) for g in groups] == [6, 5, 5]  # unit1 of stages 2-3 is strided
    expected = _expected_folded(original, groups)
    out = tmp_path / "folded.safetensors"
    run = ssc("fold", str(tmp_path / "shared.pt"), "--model", PYTORCHCV, "-o", str(out), "--json")
    assert run.code == 0, run.err
    assert run.json()["params"]["folded"] == expected
    assert ssc("info", str(out), "--json").json()["unique_parameters"] == expected
    folded = load_folded(out, model=PYTORCHCV)
    with torch.no_grad():
        assert _relative(folded(_probe()), original(_probe())) < 1e-4


def test_without_model_one_line_names_the_factory(ssc, made, folded, tmp_path) -> None:
    spec, shared = made["spec"], str(made["shared"])
    out = tmp_path / "out.safetensors"
    for args in (("eval", shared, "--data", made["data"]), ("fold", shared, "-o", str(out))):
        assert f"--model {spec}" in _one_line(ssc(*args))
    assert not out.exists()
    run = ssc("info", shared, "--json")  # described without building it
    assert run.code == 0, run.err
    assert run.json()["architecture"] == {"arch": "user", "kwargs": {"model": spec},
                                          "source": "stored"}  # fmt: skip
    assert f"--model {spec}" in _one_line(ssc("eval", str(folded), "--data", made["data"]))
    assert "--model" in ssc("info", str(folded), "--json").json()["architecture_name"]


def test_analyze_without_model_finds_the_banks_by_name(ssc, made: dict) -> None:
    run = ssc("analyze", str(made["shared"]), "--json")
    assert run.code == 0, run.err
    banks = run.json()["banks"]
    assert [[layer["name"] for layer in b["layers"]] for b in banks] == [
        list(g.layers) for g in made["groups"]
    ]
    assert [b["templates"] for b in banks] == [K, K]


def test_analyze_without_model_and_without_banks_names_the_factory(ssc, made, tmp_path) -> None:
    path = tmp_path / "plain.pt"
    plain = made["original"].state_dict()
    save_checkpoint(path, arch="user", arch_kwargs={"model": made["spec"]}, state_dict=plain,
                    metadata={})  # fmt: skip
    assert f"--model {made['spec']}" in _one_line(ssc("analyze", str(path)))


# --- a record that does not fit: one line, before anything big is built -------------------------

MALFORMED = {  # refused before the factory runs (the exploding factory proves it)
    "not_a_map": lambda r: "stage1",
    "wrong_format": lambda r: {**r, "format": "pickle"},
    "version": lambda r: {**r, "version": 99},
    "groups_not_list": lambda r: {**r, "groups": {"a": 1}},
    "huge_groups": lambda r: {**r, "groups": [0] * 100_000},
    "huge_layers": lambda r: _group(r, layers=[f"l{i}" for i in range(100_000)]),
    "layers_not_names": lambda r: _group(r, layers=[1, 2]),
    "k_above_layers": lambda r: _group(r, templates=7),
    "k_zero": lambda r: _group(r, templates=0),
    "k_bool": lambda r: _group(r, templates=True),
    "shape_negative": lambda r: _group(r, shape=[8, 8, 3, -3]),
    "shape_three": lambda r: _group(r, shape=[8, 8, 3]),
    "layer_twice": lambda r: _group(r, layers=["stage1.0.conv1", "stage1.0.conv1"]),
}
MISFIT = {  # refused by the built network, before any bank is made
    "not_a_module": lambda r: _group(r, layers=["stage1.0.conv9", "stage1.1.conv1"]),
    "a_parameter": lambda r: _group(r, layers=["stage1.0.conv1.weight", "stage1.1.conv1"]),
    "a_batchnorm": lambda r: _group(r, layers=["stage1.0.bn1", "stage1.1.conv1"]),
    "wrong_shape": lambda r: _group(r, shape=[16, 16, 3, 3]),
    "huge_shape": lambda r: _group(r, shape=[2**40, 2**40, 3, 3]),
    "the_shortcut": lambda r: _group(r, layers=["stage2.0.shortcut.0", "stage1.0.conv1"]),
}


def _group(record: dict, **changes) -> dict:
    """``record`` with its first group changed (two layers: K=2)."""
    out = copy.deepcopy(record)
    if len(changes.get("layers", ())) == 2:
        changes.setdefault("templates", 2)
    out["groups"][0].update(changes)
    return out


def _forged_checkpoint(made: dict, tmp_path: Path, edit) -> Path:
    ckpt = load_checkpoint(made["shared"])
    path = tmp_path / "forged.pt"
    meta = {"sharing": edit(made["record"])}
    save_checkpoint(path, arch="user", arch_kwargs={"model": made["spec"]},
                    state_dict=ckpt.state_dict, metadata=meta)  # fmt: skip
    return path


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_record_is_refused_before_the_factory_runs(ssc, made, tmp_path, case):
    path = _forged_checkpoint(made, tmp_path, MALFORMED[case])
    exploding = made["spec"].replace(":resnet", ":exploding")
    out = tmp_path / "out.safetensors"
    err = _one_line(ssc("fold", str(path), "--model", exploding, "-o", str(out)))
    assert "malformed sharing record" in err and str(path) in err, err
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(MISFIT))
@pytest.mark.parametrize("command", ["analyze", "fold", "eval"])
def test_a_record_that_does_not_fit_is_one_line(ssc, made, tmp_path, case, command):
    path = _forged_checkpoint(made, tmp_path, MISFIT[case])
    out = tmp_path / "out.safetensors"
    extra = {"fold": ["-o", str(out)], "eval": ["--data", made["data"]]}.get(command, [])
    err = _one_line(ssc(command, str(path), "--model", made["spec"], *extra))
    assert "shared layer" in err and str(path) in err, err
    assert not out.exists()


def _forge_program(folded: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    with safe_open(str(folded), "pt") as f:
        meta = dict(f.metadata())
    program = json.loads(meta["program"])
    edit(program)
    meta["program"] = json.dumps(program)
    forged = folded.with_name("forged.safetensors")
    save_file(load_file(str(folded)), str(forged), metadata=meta)
    return forged


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.update(sharing="garbage"),
        lambda p: p.update(sharing=MALFORMED["k_above_layers"](p["sharing"])),
        lambda p: p.update(sharing=MISFIT["not_a_module"](p["sharing"])),
        lambda p: p.update(sharing=MISFIT["huge_shape"](p["sharing"])),
    ],
)
def test_a_forged_record_in_the_fold_is_refused(ssc, made, folded, edit) -> None:
    forged = _forge_program(folded, edit)
    with pytest.raises(CheckpointError):
        load_folded(forged, model=made["spec"])
    err = _one_line(ssc("eval", str(forged), "--model", made["spec"], "--data", made["data"]))
    assert ESC not in err


def test_a_fold_that_keeps_the_banks_needs_the_record(made: dict, tmp_path: Path) -> None:
    """K=2 spanning three weights (two tensors and their sum) over 12 layers: folding to weights
    would store more, so the fold keeps each bank and replaces each layer's coefficients by a
    gain times its cluster's direction. The shared convs stay: loading needs the record."""
    from soft_share_cli.pipeline.fold import FoldOptions, fold_checkpoint

    spec = made["spec"].replace(":resnet", ":deep")
    original, groups, record = _share(spec, tmp_path / "deep.pt", k=2, mixes=3)
    assert [len(g.layers) for g in groups] == [12, 5]
    out = tmp_path / "folded.safetensors"
    fold_checkpoint(tmp_path / "deep.pt", out, FoldOptions(model=spec))
    with safe_open(str(out), "pt") as f:
        program = json.loads(f.metadata()["program"])
    assert program["modes"] == {"stage1.0.conv1.bank": "directions"}
    assert program["sharing"] == record
    rebuilt = load_folded(out, model=spec)
    assert [k["group"] for k in program["kept"]] == ["stage2.0.conv2.bank"]  # 5 layers: no gain
    assert sum(type(m).__name__ == "SharedConv2d" for m in rebuilt.modules()) == 12 + 5
    with torch.no_grad():
        assert _relative(rebuilt(_probe()), original(_probe())) < 1e-4
    with pytest.raises(CheckpointError):  # the same program without the record does not fit
        load_folded(_forge_program(out, lambda p: p.pop("sharing")), model=spec)
