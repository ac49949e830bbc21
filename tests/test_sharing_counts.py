"""Honest counts: every figure counts by storage, and a fold's report is what its file stores.

Small networks of our own, built in ``tmp_path`` with planted structure: a plain CNN with a
hard-tied conv (nothing to fold), an authors-style network whose layers share one coefficient
storage, one reusing a whole SConv2d module, and one with a bank beside a hard-tied plain conv.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.analysis.banks import find_banks
from soft_share_cli.errors import CheckpointError
from soft_share_cli.folding.kinds import load_folded
from soft_share_cli.folding.traced_program import TracedLayer
from soft_share_cli.folding.user_program import untied_keys, with_aliases
from soft_share_cli.models.params import count_state_dict_parameters, repeated_layer_parameters
from soft_share_cli.models.user import load_factory

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"

NETS = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from soft_share_cli.models.layers import SConv2d, TemplateBank


    class TiedCNN(nn.Module):
        # no bank: one conv module reused by four blocks that keep their own BatchNorms
        def __init__(self, width=8):
            super().__init__()
            self.stem = nn.Conv2d(1, width, 3, padding=1)
            self.shared = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.blocks = nn.ModuleList()
            for _ in range(4):
                block = nn.Module()
                block.conv = self.shared
                block.bn = nn.BatchNorm2d(width)
                self.blocks.append(block)
            self.alpha = nn.Parameter(torch.ones(3))  # coefficient-like, but no bank
            self.fc = nn.Linear(width, 10)

        def forward(self, x):
            x = F.relu(self.stem(x))
            for block in self.blocks:
                x = F.relu(block.bn(block.conv(x)))
            return self.fc(x.mean(dim=(2, 3)) * self.alpha.sum())


    class Aliased(nn.Module):
        # authors-style; convs[2] uses convs[0]'s coefficient storage, convs[5] reuses convs[4]
        def __init__(self, k=3, width=8, tie_plain=False):
            super().__init__()
            self.conv1 = nn.Conv2d(1, width, 3, padding=1)
            self.bank = TemplateBank(k, width, width, 3)
            self.convs = nn.ModuleList(SConv2d(self.bank) for _ in range(5))
            self.convs[2].coefficients = self.convs[0].coefficients
            self.convs.append(self.convs[4])  # one module, used twice
            self.plain = nn.Conv2d(width, width, 1)
            self.again = self.plain if tie_plain else nn.Conv2d(width, width, 1)
            self.fc = nn.Linear(width, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            for conv in self.convs:
                x = F.relu(conv(x))
            x = F.relu(self.again(F.relu(self.plain(x))))
            return self.fc(x.mean(dim=(2, 3)))


    def tied_cnn():
        return TiedCNN()


    def aliased():
        return Aliased()


    def aliased_small():
        return Aliased(k=2, width=4)


    def aliased_wide():
        return Aliased(k=5, width=12)


    def aliased_tie_plain():
        return Aliased(tie_plain=True)
    """
)


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def _planted(nets: Path, factory: str) -> nn.Module:
    """The network with coefficients planted: convs 0 (= 2) and 3 parallel, the rest not."""
    torch.manual_seed(0)
    model = load_factory(f"{nets}:{factory}")()
    k = model.bank.templates.shape[0]
    base = torch.linspace(1.0, 2.0, k)
    with torch.no_grad():
        for i, conv in enumerate(model.convs[:5]):
            a = base * (0.5 if i == 3 else 1.0) if i in (0, 2, 3) else torch.randn(k)
            if i != 2:  # convs[2] is convs[0]'s storage
                conv.coefficients.copy_(a.reshape(-1, 1, 1, 1, 1))
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _save(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _fold(ssc, ckpt: Path, model: str | None, out: Path, *extra: str) -> dict:
    args = ["fold", str(ckpt), "-o", str(out), "--json", *extra]
    run = ssc(*args, *(["--model", model] if model else []))
    assert run.code == 0, run.err
    return run.json()


def _info(ssc, path: Path) -> dict:
    run = ssc("info", str(path), "--json")
    assert run.code == 0, run.err
    return run.json()


def _assert_report_is_the_file(ssc, report: dict, ckpt: Path, out: Path) -> None:
    params = report["params"]
    assert params["folded"] == _info(ssc, out)["unique_parameters"]
    assert params["checkpoint_unique"] == _info(ssc, ckpt)["unique_parameters"]


# --- nothing to fold -------------------------------------------------------------------------


def test_fold_refuses_a_hard_tied_cnn_without_a_bank(ssc, nets: Path, tmp_path: Path) -> None:
    model = load_factory(f"{nets}:tied_cnn")().eval()
    ckpt = _save(model, tmp_path / "tied.pt")
    out = tmp_path / "tied_folded.safetensors"
    run = ssc("fold", str(ckpt), "--model", f"{nets}:tied_cnn", "-o", str(out))
    assert run.code == 2
    assert "nothing to fold" in run.err and len(run.err.strip().splitlines()) == 1
    assert "hard-tied: one tensor under 5 keys" in run.err  # `shared` and four blocks
    assert "coefficient-like tensors: alpha" in run.err
    assert "no 5-d '...templates' bank" in run.err
    assert not out.exists()


def test_fold_refuses_a_buildable_network_without_a_bank(ssc, tmp_path: Path) -> None:
    out = tmp_path / "plain_folded.safetensors"
    run = ssc("fold", str(SAMPLES / "tasks" / "maze_plain.pt"), "-o", str(out))
    assert run.code == 2 and "nothing to fold" in run.err and "--model" in run.err
    assert len(run.err.strip().splitlines()) == 1 and "conv/linear weights" in run.err
    assert not out.exists()


def test_analyze_says_what_it_saw(ssc, nets: Path, tmp_path: Path) -> None:
    """Untied copies of the tied CNN have no bank and no tie: analyze says what it saw."""
    import torch

    state = {k: v.clone() for k, v in load_factory(f"{nets}:tied_cnn")().state_dict().items()}
    ckpt = tmp_path / "untied.pt"
    torch.save(state, ckpt)
    run = ssc("analyze", str(ckpt))
    assert run.code == 2 and len(run.err.strip().splitlines()) == 1
    assert "no template banks found" in run.err
    for seen in ("30 tensors", "coefficient-like tensors: alpha"):
        assert seen in run.err


def test_a_hard_tie_is_analysed_as_a_loop(ssc, nets: Path, tmp_path: Path) -> None:
    ckpt = _save(load_factory(f"{nets}:tied_cnn")(), tmp_path / "tied.pt")
    run = ssc("analyze", str(ckpt))
    assert run.code == 0, run.err
    assert "repeat one block" in run.out


# --- counting by storage ---------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["aliased", "aliased_small", "aliased_wide"])
def test_tied_coefficients_count_by_storage(nets: Path, factory: str) -> None:
    model = _planted(nets, factory)
    state = model.state_dict()
    k, o, i, kh, kw = model.bank.templates.shape
    d = o * i * kh * kw
    unique = sum(p.numel() for p in model.parameters())  # parameters() dedups every tie
    assert count_state_dict_parameters(state) == unique
    (bank,) = find_banks(state).banks
    assert [layer.tied_to for layer in bank.layers] == [None, None, 0, None, None, 4]

    results, _, counts, _ = analyze_state_dict(state, AnalysisOptions(threshold=1.0))
    (r,) = results
    assert r.similarity.matrix[0, 2] == 1.0 and r.similarity.matrix[4, 5] == 1.0
    assert r.clusters == ((0, 2, 3), (1,), (4, 5))  # 0 = 2 and 3 parallel; 4 = 5 one module
    rest = unique - k * d - 4 * k  # four coefficient storages for six uses
    assert counts.checkpoint_unique == unique
    assert counts.unshared_equivalent == rest + 6 * d  # every use a weight of its own
    # three clusters stored as weights (or templates), and one gain per coefficient storage of
    # a cluster of several: (1,) and (4, 5) are one storage each, their own direction, no gain
    stored = min(3 * d, k * d + 3 * k)
    assert r.fold.gains == 2
    assert counts.folded == rest + stored + 2


def test_a_hard_tied_plain_conv_counts_once_per_use_unshared(nets: Path) -> None:
    model = _planted(nets, "aliased_tie_plain")
    state = model.state_dict()
    plain = model.plain.weight.numel() + model.plain.bias.numel()
    assert repeated_layer_parameters(state) == plain
    _, _, tied_counts, _ = analyze_state_dict(state)
    _, _, untied_counts, _ = analyze_state_dict(_planted(nets, "aliased").state_dict())
    assert tied_counts.checkpoint_unique == untied_counts.checkpoint_unique - plain
    assert tied_counts.unshared_equivalent == untied_counts.unshared_equivalent


# --- the report is the file, for every folded kind --------------------------------------------


def test_swrn_fold_report_is_the_file(ssc, tmp_path: Path) -> None:
    ckpt = SAMPLES / "swrn28-1-4_digits_align.pt"
    out = tmp_path / "swrn.safetensors"
    report = _fold(ssc, ckpt, None, out)
    _assert_report_is_the_file(ssc, report, ckpt, out)
    assert report["params"]["folded"] < report["params"]["checkpoint_unique"]


def test_looped_fcn_fold_report_is_the_file(ssc, tmp_path: Path) -> None:
    ckpt = SAMPLES / "tasks" / "maze_shared.pt"
    out = tmp_path / "maze.safetensors"
    report = _fold(ssc, ckpt, None, out)
    assert report["params"]["folded"] == _info(ssc, out)["unique_parameters"]
    assert report["params"]["checkpoint_unique"] == _info(ssc, ckpt)["unique_parameters"]


def test_a_user_fold_that_saves_nothing_is_refused(ssc, nets: Path, tmp_path: Path) -> None:
    """K = 2, width 4: 3 weights cost more than the bank; 2 templates, 3 directions and 2 gains
    (296) cost what the bank and its 4 coefficient storages do (296): nothing is saved."""
    ckpt = _save(_planted(nets, "aliased_small"), tmp_path / "net.pt")
    out = tmp_path / "net_folded.safetensors"
    run = ssc("fold", str(ckpt), "-o", str(out), "--threshold", "1",
              "--model", f"{nets}:aliased_small")  # fmt: skip
    assert run.code == 2 and "nothing to fold" in run.err and "296" in run.err
    assert not out.exists()


@pytest.mark.parametrize("factory", ["aliased", "aliased_wide", "aliased_tie_plain"])
def test_user_fold_keeps_ties_and_its_report_is_the_file(
    ssc, nets: Path, tmp_path: Path, factory: str
) -> None:
    model = _planted(nets, factory)
    ckpt = _save(model, tmp_path / "net.pt")
    out = tmp_path / "net_folded.safetensors"
    spec = f"{nets}:{factory}"
    analysis = ssc("analyze", str(ckpt), "--threshold", "1", "--json").json()
    report = _fold(ssc, ckpt, spec, out, "--threshold", "1")
    _assert_report_is_the_file(ssc, report, ckpt, out)
    assert report["params"] == analysis["params"]  # the analysis predicted the file exactly
    assert report["banks"][0]["after"] == 3 and report["banks"][0]["gains"] == 2
    assert report["probe"]["max_abs_diff"] < 1e-4

    folded = load_folded(out, model=spec)
    convs = folded.convs
    assert all(isinstance(c, TracedLayer) for c in convs)
    assert convs[2].gain is convs[0].gain  # one coefficient storage: one gain
    assert convs[1].gain is None and convs[4].gain is None  # alone in a cluster: no gain
    assert convs[5] is convs[4]  # one module: still one module
    assert (folded.again is folded.plain) == (factory == "aliased_tie_plain")
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert sum(p.numel() for p in folded.parameters()) == report["params"]["folded"]
    # the folded file analyses to the same figures
    again = ssc("analyze", str(out), "--json").json()["params"]
    assert again["checkpoint_unique"] == again["folded"] == report["params"]["folded"]
    assert again["unshared_equivalent"] == report["params"]["unshared_equivalent"]


def test_stored_ties_are_one_tensor_and_forged_maps_are_refused() -> None:
    shared = torch.ones(3)
    tensors, aliases = untied_keys({"a": shared, "b": shared, "c": torch.zeros(2)})
    assert list(tensors) == ["a", "c"] and aliases == {"b": "a"}
    program = {"aliases": aliases}
    full = with_aliases(program, tensors)
    assert full["b"] is full["a"]
    for forged in ({"b": "zzz"}, {"c": "a"}, {"b": 3}, ["b"]):
        with pytest.raises(CheckpointError, match="aliases|alias"):
            with_aliases({"aliases": forged}, tensors)
