"""``--bank-key`` and ``--coefficient-key``: banks under names no rule knows, found and folded.

The network below keeps its bank as ``w_store`` (K, O, I, 3, 3) and each layer's mixing vector
as ``blend`` (K,): neither is a name ssc's rules know, so without the patterns ``ssc analyze``
finds no bank and ``ssc fold`` refuses; with them the bank is found (and the report says by
which rule), and the fold is exact and stores no more than the checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.folding.surgery import (
    fold_user_model,
    load_folded_user_model,
    save_folded_user_model,
    user_fold_program,
)
from soft_share_cli.models.params import count_state_dict_parameters
from soft_share_cli.models.user import load_factory

NET_CODE = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Store(nn.Module):
        def __init__(self, k, width):
            super().__init__()
            self.w_store = nn.Parameter(0.3 * torch.randn(k, width, width, 3, 3))

        @property
        def templates(self):  # what ssc's surgery reads; the state dict says w_store
            return self.w_store

        def forward(self, coefficients):
            return torch.tensordot(coefficients.reshape(-1), self.w_store, dims=1)


    class Mixed(nn.Module):
        def __init__(self, store, k):
            super().__init__()
            self.bank = store
            self.blend = nn.Parameter(torch.randn(k))
            self.stride, self.padding = 1, 1

        @property
        def coefficients(self):
            return self.blend

        def forward(self, x):
            return F.conv2d(x, self.bank(self.blend), padding=1)


    class StoreNet(nn.Module):
        def __init__(self, k=3, width=4, layers=4):
            super().__init__()
            self.stem = nn.Conv2d(1, width, 3, padding=1)
            self.store = Store(k, width)
            self.layers = nn.ModuleList(Mixed(self.store, k) for _ in range(layers))
            self.head = nn.Linear(width, 5)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            for layer in self.layers:
                h = h + torch.relu(layer(h))
            return self.head(h.mean(dim=(2, 3)))


    class TiedNet(nn.Module):
        # one conv module reused by three blocks, each with its own BatchNorm: a hard tie
        def __init__(self, width=4, uses=3):
            super().__init__()
            self.stem = nn.Conv2d(1, width, 3, padding=1)
            conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
            blocks = [nn.Sequential(conv, nn.BatchNorm2d(width)) for _ in range(uses)]
            self.blocks = nn.ModuleList(blocks)
            self.head = nn.Linear(width, 5)

        def forward(self, x):
            h = self.stem(x)
            for block in self.blocks:
                h = h + torch.relu(block(h))
            return self.head(h.mean(dim=(2, 3)))


    def wide():
        return StoreNet(k=2, width=6, layers=5)
    """
)
PATTERNS = ("--bank-key", "*w_store", "--coefficient-key", "*.blend")
MAZE = Path(__file__).resolve().parent.parent / "sample_checkpoints" / "tasks" / "maze_shared.pt"


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    path = tmp_path / "store_net.py"
    path.write_text(NET_CODE)
    return path


def _planted(net_file: Path, factory: str = "StoreNet") -> nn.Module:
    """Layers 0 and 2 exactly parallel (2 = -1.7 * 0), the others in general position."""
    torch.manual_seed(0)
    model = load_factory(f"{net_file}:{factory}")()
    if factory == "StoreNet":
        with torch.no_grad():
            model.layers[2].blend.copy_(-1.7 * model.layers[0].blend)
    return model.eval()


def _save(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def test_names_no_rule_knows_are_not_a_bank_without_the_patterns(ssc, net_file, tmp_path):
    ckpt = _save(_planted(net_file), tmp_path / "net.pt")
    run = ssc("analyze", str(ckpt))
    assert run.code == 2 and "no template banks found" in run.err
    assert len(run.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "patterns, rule",
    [
        (("--coefficient-key", "*.blend"), "bank 'store.w_store' by shape, coefficients 'blend'"),
        (PATTERNS, "bank 'store.w_store' by pattern '*w_store', coefficients 'blend'"),
    ],
)
def test_the_patterns_find_the_bank_and_the_report_names_the_rule(
    ssc, net_file, tmp_path, patterns, rule
):
    model = _planted(net_file)
    ckpt = _save(model, tmp_path / "net.pt")
    run = ssc("analyze", str(ckpt), "--threshold", "0.999", *patterns, "--json")
    assert run.code == 0, run.err
    report = run.json()
    (bank,) = report["banks"]
    assert bank["rule"].startswith(rule) and bank["kind"] == "soft"
    assert bank["templates"] == 3 and bank["weight_shape"] == [4, 4, 3, 3]
    assert [layer["name"] for layer in bank["layers"]] == [f"layers.{i}" for i in range(4)]
    assert bank["clusters"] == [[0, 2], [1], [3]]  # the planted pair, the rest alone
    assert report["bank_key" if "--bank-key" in patterns else "coefficient_key"]
    # the figures, recomputed: K templates + 4 vectors stored, 3 clusters stored as weights
    d, k = 4 * 4 * 9, 3
    unique = sum(p.numel() for p in model.parameters())
    rest = unique - k * d - 4 * k
    assert report["params"]["checkpoint_unique"] == unique
    assert report["params"]["unshared_equivalent"] == rest + 4 * d
    # 3 weights (or templates + directions), a gain for each of the parallel pair only
    assert report["params"]["folded"] == rest + min(3 * d, k * d + 3 * k) + 2
    text = ssc("analyze", str(ckpt), "--threshold", "0.999", *patterns)
    assert text.code == 0 and "found by " + rule in " ".join(text.out.split())


def test_the_bank_the_patterns_find_folds_exactly_and_smaller(ssc, net_file, tmp_path):
    """The library fold of the bank found by the patterns (``ssc fold --model`` traces the
    network instead, with no naming): the file stores what the analysis said, fewer than the
    checkpoint, and computes the same logits."""
    model = _planted(net_file)
    state = model.state_dict()
    options = AnalysisOptions(threshold=0.999, bank_key="*w_store", coefficient_key="*.blend")
    (r,), _, counts, _ = analyze_state_dict(state, options)
    assert r.clusters == ((0, 2), (1,), (3,))
    spec = f"{net_file}:StoreNet"
    folded = fold_user_model(model, {r.bank.name: r.fold}, [r.bank])
    out = tmp_path / "folded.safetensors"
    save_folded_user_model(folded, out, spec, user_fold_program({r.bank.name: r.fold}, [r.bank]))
    info = ssc("info", str(out), "--json").json()
    assert info["unique_parameters"] == counts.folded < count_state_dict_parameters(state)
    x = torch.randn(4, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(x), load_folded_user_model(out, spec)(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_fold_takes_the_patterns(ssc, tmp_path):
    """On an SFCN the patterns naming its own bank and coefficients fold it as without them."""
    out = tmp_path / "a.safetensors"
    plain = ssc("fold", str(MAZE), "-o", str(out), "--json")
    named = ssc(
        "fold", str(MAZE), "-o", str(tmp_path / "b.safetensors"), "--json",
        "--bank-key", "bank.templates", "--coefficient-key", "body.*.coefficients",
    )  # fmt: skip
    assert plain.code == named.code == 0, named.err
    assert named.json()["params"] == plain.json()["params"]
    assert named.json()["bank_key"] == "bank.templates" and "bank_key" not in plain.json()


@pytest.mark.parametrize("command", ["analyze", "plot-similarity", "fold"])
@pytest.mark.parametrize(
    "patterns, says",
    [
        (("--bank-key", "nothing*"), "--bank-key 'nothing*' matches no key"),
        (("--coefficient-key", "w_store"), "--coefficient-key 'w_store' matches no key"),
        (("--coefficient-key", "stem.weight"), "none of them a vector of K numbers"),
        (("--bank-key", "stem.weight"), "none of them a (K, O, I, k, k) or (K, O, I) bank"),
    ],
)
def test_a_pattern_that_matches_nothing_is_an_error(
    ssc, net_file, tmp_path, command, patterns, says
):
    ckpt = _save(_planted(net_file), tmp_path / "net.pt")
    out = tmp_path / ("out.png" if command == "plot-similarity" else "out.safetensors")
    args = {"analyze": [], "plot-similarity": ["-o", str(out)], "fold": ["-o", str(out)]}
    if command == "fold":  # an SFCN, which ssc folds by its state dict's tensors
        ckpt = MAZE
    run = ssc(command, str(ckpt), *args[command], *patterns)
    assert run.code == 2, run.err
    assert says in run.err and len(run.err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_empty_pattern_is_a_usage_error(ssc, net_file, tmp_path):
    ckpt = _save(_planted(net_file), tmp_path / "net.pt")
    run = ssc("analyze", str(ckpt), "--bank-key", "")
    assert run.code == 2 and "empty pattern" in run.err


def test_a_hard_tie_reads_as_one_weight_used_n_times(ssc, net_file, tmp_path):
    ckpt = _save(_planted(net_file, "TiedNet"), tmp_path / "tied.pt")
    run = ssc("analyze", str(ckpt))
    assert run.code == 0, run.err
    text = " ".join(run.out.split())
    assert "hard tie: one 4×4×3×3 weight, 3 uses" in text
    assert (
        "1 templates" not in text and "found by hard tie: one weight storage under 3 keys" in text
    )
    report = ssc("analyze", str(ckpt), "--json").json()
    (bank,) = report["banks"]
    assert bank["kind"] == "hard-tie" and bank["weight_shape"] == [4, 4, 3, 3]
    assert [layer["key"] for layer in bank["layers"]] == [f"blocks.{i}.0.weight" for i in range(3)]


def test_help_names_the_patterns_and_imports_no_torch():
    code = (
        "import sys\n"
        "from soft_share_cli.cli import main\n"
        "for cmd in ('analyze', 'plot-similarity', 'fold'):\n"
        "    try:\n"
        "        main([cmd, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.count("--bank-key PATTERN") == 3
    assert run.stdout.count("--coefficient-key PATTERN") == 3
    assert "the rule that" in run.stdout  # the report names the rule that matched
    assert run.stdout.strip().endswith("NO-TORCH")
