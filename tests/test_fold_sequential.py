"""Folds of networks whose top module is an ``nn.Sequential`` (``ssc fold --model``).

An ``nn.Sequential`` calls every module it holds, so a fold that gave it one more child (a bank)
would run that bank on its activations; the fold keeps its banks on a module that uses them
instead (:mod:`soft_share_cli.folding.traced_holders`). Each network below is written to
``tmp_path/nets.py`` with planted parallel weights, so the right fold is known: the folded file
gives the original's logits, stores exactly the count worked out here, and ``load_folded`` and
``ssc eval --model`` read it (the same top-1 as the checkpoint's). A plain-module root still
writes its banks on the top module, as every earlier version did.
"""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from soft_share_cli.checkpoints.load import save_checkpoint
from soft_share_cli.errors import CheckpointError
from soft_share_cli.folding.kinds import load_folded
from soft_share_cli.models.user import load_factory
from soft_share_cli.sharing.convert import share_network, sharing_record
from soft_share_cli.sharing.groups import find_groups

NETS = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    W = 4


    def seeded(build):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build()
            for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
        return model.eval()


    def cbr(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


    def head():
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(W, 10)]


    def vgg():  # the top module is the nn.Sequential; 4 convs W -> W share a bank
        return seeded(lambda: nn.Sequential(*cbr(1, W), *[m for _ in range(4) for m in cbr(W, W)],
                                            *head()))


    def staged():  # an nn.Sequential of nn.Sequential stages
        return seeded(lambda: nn.Sequential(
            nn.Sequential(*cbr(1, W)),
            nn.Sequential(*cbr(W, W), *cbr(W, W), *cbr(W, W)),
            nn.Sequential(*cbr(W, W), *cbr(W, W), *cbr(W, W)),
            nn.Sequential(*head()),
        ))


    class Wrapped(nn.Module):  # the same layers under a plain module
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(*cbr(1, W), *[m for _ in range(4) for m in cbr(W, W)],
                                     *head())

        def forward(self, x):
            return self.net(x)


    def wrapped():
        return seeded(Wrapped)


    class Basis(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.randn(3, W * 9) / 6)


    class MB(nn.Module):  # W_i = M_i @ B, B held by every layer
        def __init__(self, basis):
            super().__init__()
            self.basis = basis
            self.m = nn.Parameter(torch.randn(W, 3))

        def forward(self, x):
            return F.conv2d(x, (self.m @ self.basis.b).reshape(W, W, 3, 3), padding=1)


    def basis():  # unshared: 6 proportional M_i (directions) and one conv used twice (a tie)
        def build():
            shared, tie = Basis(), nn.Conv2d(W, W, 3, padding=1, bias=False)
            mbs = [MB(shared) for _ in range(6)]
            with torch.no_grad():
                for i, mb in enumerate(mbs[1:]):
                    mb.m.copy_((0.5 + 0.25 * i) * mbs[0].m)
            body = [m for mb in mbs for m in (mb, nn.BatchNorm2d(W), nn.ReLU())]
            ties = [tie, nn.BatchNorm2d(W), nn.ReLU(), tie, nn.BatchNorm2d(W), nn.ReLU()]
            return nn.Sequential(*cbr(1, W), *body, *ties, *head())

        return seeded(build)
    """
)
W = 4
LAYER = W * W * 9  # one W -> W 3x3 conv weight
ROWS = torch.Generator().manual_seed(3)
PROBE = torch.randn(6, 1, 8, 8, generator=ROWS)


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    data = torch.Generator().manual_seed(4)
    x = torch.randn(40, 1, 8, 8, generator=data)
    y = torch.randint(0, 10, (40,), generator=data)
    import numpy as np

    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    return path


def _plant(model: nn.Module) -> int:
    """Every grouped conv a multiple of one of two tensors (alternating): the exact fold keeps
    2 weights and a gain per layer of a cluster of two or more (a layer alone in its cluster
    keeps its scale in its weight); returns how many numbers that frees from the original."""
    freed = 0
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for group in find_groups(model):
            base = [torch.randn(group.shape, generator=g) / 6 for _ in range(2)]
            for i, name in enumerate(group.layers):
                conv = model.get_submodule(name)
                assert isinstance(conv, nn.Conv2d)
                conv.weight.copy_(base[i % 2] * (0.5 + 0.25 * i))
            n = len(group.layers)
            gains = sum(size for size in ((n + 1) // 2, n // 2) if size > 1)
            freed += (n - 2) * group.layer_parameters - gains
    return freed


def _shared(nets: Path, factory: str) -> tuple[Path, str, nn.Module, int]:
    """The planted original, shared with K=2 as ``ssc share`` writes it; the checkpoint, the
    spec, the original and the numbers the fold frees from the original."""
    spec = f"{nets}:{factory}"
    original = load_factory(spec)()
    freed = _plant(original)
    shared = copy.deepcopy(original)
    groups = find_groups(shared)
    ks = [2] * len(groups)
    record = sharing_record(groups, ks, share_network(shared, groups, ks))
    path = nets.parent / f"{factory}.pt"
    save_checkpoint(path, arch="user", arch_kwargs={"model": spec},
                    state_dict=shared.state_dict(), metadata={"sharing": record})  # fmt: skip
    return path, spec, original, freed


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _fold_cli(ssc, path: Path, spec: str) -> tuple[Path, dict, dict]:
    out = path.with_suffix(".safetensors")
    run = ssc("fold", str(path), "--model", spec, "-o", str(out), "--json")
    assert run.code == 0, run.err
    with safe_open(str(out), "pt") as f:
        program = json.loads(f.metadata()["program"])
    return out, run.json(), program


def _reads_back(ssc, nets: Path, out: Path, path: Path, spec: str, original: nn.Module) -> None:
    """load_folded gives the original's logits; ssc eval gives the checkpoint's top-1."""
    folded = load_folded(out, model=spec)
    with torch.no_grad():
        assert _relative(folded(PROBE), original(PROBE)) < 1e-4
    data = f"npz:{nets.parent / 'data.npz'}"
    runs = [ssc("eval", str(p), "--model", spec, "--data", data, "--json") for p in (out, path)]
    assert all(r.code == 0 for r in runs), [r.err for r in runs]
    assert runs[0].json()["top1"] == runs[1].json()["top1"]


@pytest.mark.parametrize("factory", ["vgg", "staged"])
def test_a_shared_sequential_folds_and_reads_back(ssc, nets: Path, factory: str) -> None:
    path, spec, original, freed = _shared(nets, factory)
    out, report, program = _fold_cli(ssc, path, spec)
    assert report["params"]["folded"] == sum(p.numel() for p in original.parameters()) - freed
    assert set(program["modes"].values()) == {"weights"}
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
    for bank in program["banks"]:  # on a layer of its own group, not on the top Sequential
        holder = bank["holder"]
        assert holder in {layer["path"] for layer in program["layers"]}
        assert f"{holder}.{bank['module']}.weights" in keys
    assert not any(k.startswith("ssc_folded_") for k in keys)
    assert len(program["layers"]) == {"vgg": 4, "staged": 6}[factory]
    _reads_back(ssc, nets, out, path, spec, original)
    analysis = ssc("analyze", str(out), "--json")  # the file seen as its 2 weights per bank
    assert analysis.code == 0, analysis.err
    seen = [(b["templates"], b["clusters"]) for b in analysis.json()["banks"] if b["layers"]]
    clusters = {"vgg": [[[0, 2], [1, 3]]], "staged": [[[0, 2], [1]]] * 2}[factory]
    assert seen == [(2, c) for c in clusters]


def test_a_plain_module_root_keeps_its_banks_on_top(ssc, nets: Path) -> None:
    """The same network under a plain module: the file earlier versions wrote (no holder)."""
    path, spec, original, freed = _shared(nets, "wrapped")
    out, report, program = _fold_cli(ssc, path, spec)
    assert report["params"]["folded"] == sum(p.numel() for p in original.parameters()) - freed
    assert all("holder" not in bank for bank in program["banks"])
    with safe_open(str(out), "pt") as f:
        assert f"{program['banks'][0]['module']}.weights" in set(f.keys())
    _reads_back(ssc, nets, out, path, spec, original)


def test_an_unshared_sequential_folds_by_directions(ssc, nets: Path) -> None:
    """6 proportional M_i (W x 3): 1 direction + 6 gains in place of them, B kept; the tie
    stays one tensor."""
    spec = f"{nets}:basis"
    original = load_factory(spec)()
    path = nets.parent / "basis.pt"
    torch.save(original.state_dict(), path)
    out, report, program = _fold_cli(ssc, path, spec)
    before = sum(p.numel() for p in original.parameters())
    assert report["params"]["folded"] == before - 6 * W * 3 + (W * 3 + 6)
    assert set(program["modes"].values()) == {"directions"}
    (bank,) = program["directions"]
    assert bank["holder"] in {c["path"] for c in program["computed"]}
    assert any("hard tie" in k["why"] for k in program["kept"])
    folded = load_folded(out, model=spec)
    assert isinstance(folded, nn.Sequential)
    assert folded[-9] is folded[-6] and isinstance(folded[-9], nn.Conv2d)  # still one module
    _reads_back(ssc, nets, out, path, spec, original)


def _forge(out: Path, edit) -> Path:
    with safe_open(str(out), "pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(str(out))
    program = json.loads(metadata["program"])
    edit(program, tensors)
    metadata["program"] = json.dumps(program)
    forged = out.with_name("forged.safetensors")
    save_file(tensors, str(forged), metadata)
    return forged


def _to_top(program: dict, tensors: dict) -> None:
    """The bank moved onto the top Sequential, as a file of an earlier layout would hold it."""
    bank = program["banks"][0]
    holder = bank.pop("holder")
    for key in [k for k in tensors if k.startswith(f"{holder}.{bank['module']}.")]:
        tensors[key.removeprefix(f"{holder}.")] = tensors.pop(key)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_to_top, "whose forward would call it"),
        (lambda p, t: p["banks"][0].update(holder=["0"]), "holder is not a path"),
        (lambda p, t: p["banks"][0].update(holder="99"), "lacks the tensors of bank"),
    ],
)
def test_a_forged_holder_is_refused(ssc, nets: Path, edit, message: str) -> None:
    path, spec, _, _ = _shared(nets, "vgg")
    out, _, _ = _fold_cli(ssc, path, spec)
    forged = _forge(out, edit)
    with pytest.raises(CheckpointError, match=message):
        load_folded(forged, model=spec)
    run = ssc("eval", str(forged), "--model", spec, "--data", "digits?limit=10")
    assert run.code == 2 and run.err.startswith("Error: ") and run.err.strip().count("\n") == 0
