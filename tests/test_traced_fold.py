"""Folds of networks found by the trace (``ssc fold --model``): one engine for every kind.

Each network below is plain torch (written to ``tmp_path/nets.py`` and named as a user would name
it) with exactly parallel layers planted, so the right fold is known: the folded network gives
the original's logits, stores no more than the checkpoint (exactly the count worked out by hand
here), the fold report's figure equals ``ssc info`` on the written file, ties stay one tensor,
and ``load_folded`` / ``ssc eval --model`` rebuild it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from soft_share_cli.analysis.analyze import AnalysisOptions
from soft_share_cli.errors import ArchitectureError, CheckpointError, InputError
from soft_share_cli.folding.kinds import load_folded
from soft_share_cli.models.user import load_factory
from soft_share_cli.pipeline.fold import FoldOptions, fold_checkpoint
from soft_share_cli.pipeline.info import inspect_checkpoint

NETS = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    W, K, D = 4, 3, 4 * 4 * 9


    def seeded(build, seed=0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build()
            for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
        return model.eval()


    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, W, 3, padding=1)
            self.fc = nn.Linear(W, 10)


    class Bank(nn.Module):
        def __init__(self):
            super().__init__()
            self.templates = nn.Parameter(torch.randn(K, W, W, 3, 3) / 6)


    class SConv(nn.Module):  # authors-style: the bank registered in every layer, alpha (K,)
        def __init__(self, bank):
            super().__init__()
            self.bank = bank
            self.alpha = nn.Parameter(torch.randn(K))

        def forward(self, x):
            return F.conv2d(x, torch.tensordot(self.alpha, self.bank.templates, 1), padding=1)


    class SoftNet(Head):
        def __init__(self, tied_block=False):
            super().__init__()
            self.bank = Bank()
            self.layers = nn.ModuleList(SConv(self.bank) for _ in range(4))
            self.bns = nn.ModuleList(nn.BatchNorm2d(W) for _ in range(4))
            with torch.no_grad():  # planted: 1 = -1.5 * 0, 3 = 2 * 2
                self.layers[1].alpha.copy_(-1.5 * self.layers[0].alpha)
                self.layers[3].alpha.copy_(2.0 * self.layers[2].alpha)
            if tied_block:  # one conv module reused by three blocks, each its own BN
                self.shared = nn.Conv2d(W, W, 3, padding=1)
                self.blocks = nn.ModuleList()
                for _ in range(3):
                    block = nn.Module()
                    block.conv, block.bn = self.shared, nn.BatchNorm2d(W)
                    self.blocks.append(block)
            self.tied_block = tied_block

        def forward(self, x):
            x = F.relu(self.stem(x))
            for layer, bn in zip(self.layers, self.bns):
                x = F.relu(bn(layer(x)))
            if self.tied_block:
                for block in self.blocks:
                    x = F.relu(block.bn(block.conv(x)))
            return self.fc(x.mean((2, 3)))


    class BasisHolder(nn.Module):
        def __init__(self, rank):
            super().__init__()
            self.b = nn.Parameter(torch.randn(rank, W * 9) / 6)


    class MBConv(nn.Module):  # W_i = M_i @ B inside the layer's own module
        def __init__(self, basis, rank):
            super().__init__()
            self.basis = basis
            self.m = nn.Parameter(torch.randn(W, rank))

        def forward(self, x):
            return F.conv2d(x, (self.m @ self.basis.b).reshape(W, W, 3, 3), padding=1)


    class BasisNet(Head):
        def __init__(self, layers=6, clusters=1, rank=3):
            super().__init__()
            self.basis = BasisHolder(rank)
            self.layers = nn.ModuleList(MBConv(self.basis, rank) for _ in range(layers))
            self.bns = nn.ModuleList(nn.BatchNorm2d(W) for _ in range(layers))
            with torch.no_grad():
                for i, layer in enumerate(self.layers):
                    if i >= clusters:
                        layer.m.copy_((0.5 + i) * self.layers[i % clusters].m)

        def forward(self, x):
            x = F.relu(self.stem(x))
            for layer, bn in zip(self.layers, self.bns):
                x = F.relu(bn(layer(x)))
            return self.fc(x.mean((2, 3)))


    class BasisConvNet(Head):  # basis conv -> BN -> per-layer 1x1 conv M_i -> BN
        def __init__(self, rank=3, layers=4):
            super().__init__()
            self.basis = nn.Conv2d(W, rank, 3, padding=1, bias=False)
            self.basis_bn = nn.BatchNorm2d(rank)
            self.proj = nn.ModuleList(nn.Conv2d(rank, W, 1) for _ in range(layers))
            self.bns = nn.ModuleList(nn.BatchNorm2d(W) for _ in range(layers))
            with torch.no_grad():
                for i, p in enumerate(self.proj[1:]):
                    p.weight.copy_((i - 1.5) * self.proj[0].weight)

        def forward(self, x):
            x = F.relu(self.stem(x))
            for proj, bn in zip(self.proj, self.bns):
                x = F.relu(bn(proj(self.basis_bn(self.basis(x)))))
            return self.fc(x.mean((2, 3)))


    class StoreConv(nn.Module):  # K_i overlapping windows of the store, given by the parent
        def __init__(self, k, step):
            super().__init__()
            self.coef = nn.Parameter(torch.randn(k))
            self.step = step

        def weight(self, store, size):
            n = len(self.coef)
            windows = torch.stack([store[j * self.step : j * self.step + size] for j in range(n)])
            return self.coef @ windows

        def forward(self, x, store):
            return F.conv2d(x, self.weight(store, D).reshape(W, W, 3, 3), padding=1)


    class StoreLinear(StoreConv):
        def __init__(self, k, step, offset):
            super().__init__(k, step)
            self.offset = offset
            self.bias = nn.Parameter(torch.randn(10))

        def forward(self, x, store):
            w = self.weight(store[self.offset :], 10 * W).reshape(10, W)
            return F.linear(x, w, self.bias)


    class StoreNet(nn.Module):
        def __init__(self, ks=(2, 3, 2, 3)):
            super().__init__()
            self.stem = nn.Conv2d(1, W, 3, padding=1)
            step = D // 2
            self.store = nn.Parameter(torch.randn((max(ks) - 1) * step + D) / 6)
            self.layers = nn.ModuleList(StoreConv(k, step) for k in ks)
            self.bns = nn.ModuleList(nn.BatchNorm2d(W) for _ in ks)
            self.fc = StoreLinear(2, 20, (max(ks) - 1) * step)  # overlaps the conv windows
            with torch.no_grad():  # all parallel to layer 0 (zero where K is larger)
                for i, layer in enumerate(self.layers[1:]):
                    layer.coef.zero_()
                    layer.coef[: ks[0]] = (i - 1.5) * self.layers[0].coef

        def forward(self, x):
            x = F.relu(self.stem(x))
            for layer, bn in zip(self.layers, self.bns):
                x = F.relu(bn(layer(x, self.store)))
            return self.fc(x.mean((2, 3)), self.store)


    class InlineNet(Head):  # the shared weights used by F.conv2d in the parent's forward
        def __init__(self):
            super().__init__()
            self.bank = Bank()
            self.alphas = nn.ParameterList(nn.Parameter(torch.randn(K)) for _ in range(3))

        def forward(self, x):
            x = F.relu(self.stem(x))
            for a in self.alphas:
                x = F.relu(F.conv2d(x, torch.tensordot(a, self.bank.templates, 1), padding=1))
            return self.fc(x.mean((2, 3)))


    def soft():
        return seeded(SoftNet)

    class SoftUsesBank(SoftNet):  # the bank also acts outside the layers: it cannot go
        def forward(self, x):
            return super().forward(x) + self.bank.templates.mean()

    def soft_uses_bank():
        return seeded(SoftUsesBank)

    def soft_tied():
        return seeded(lambda: SoftNet(tied_block=True))

    def basis():
        return seeded(BasisNet)

    def basis_grows():
        return seeded(lambda: BasisNet(layers=4, clusters=2))

    def basis_conv():
        return seeded(BasisConvNet)

    def store():
        return seeded(StoreNet)

    def inline():
        return seeded(InlineNet)


    class TanhConv(MBConv):  # W_i = tanh(M_i) @ B: not linear in M_i
        def forward(self, x):
            return F.conv2d(x, (torch.tanh(self.m) @ self.basis.b).reshape(W, W, 3, 3), padding=1)


    class TanhNet(BasisNet):
        def __init__(self, layers=6, clusters=1, rank=3):
            super().__init__(layers, 1, rank)
            self.layers = nn.ModuleList(TanhConv(self.basis, rank) for _ in range(layers))
            with torch.no_grad():  # planted: tanh(M_i) proportional within a cluster
                for i, layer in enumerate(self.layers):
                    layer.m.copy_(torch.tanh(layer.m) * 0.8)
                    if i >= clusters:
                        c = (-0.3, 0.5, 0.9, -0.7, 0.6)[(i - clusters) % 5]
                        layer.m.copy_(torch.atanh(c * torch.tanh(self.layers[i % clusters].m)))


    class ListConv(nn.Module):  # its alpha is an entry of the parent's ParameterList
        def __init__(self, i):
            super().__init__()
            self.i = i

        def forward(self, x, alphas, bank):
            return F.conv2d(x, torch.tensordot(alphas[self.i], bank, 1), padding=1)


    class ListNet(Head):
        def __init__(self, k=2, layers=4):
            super().__init__()
            self.bank = nn.Parameter(torch.randn(k, W, W, 3, 3) / 6)
            self.alphas = nn.ParameterList(nn.Parameter(torch.randn(k)) for _ in range(layers))
            self.layers = nn.ModuleList(ListConv(i) for i in range(layers))
            with torch.no_grad():
                for i in range(2, layers):
                    self.alphas[i].copy_((i - 3.5) * self.alphas[i % 2])

        def forward(self, x):
            x = F.relu(self.stem(x))
            for layer in self.layers:
                x = F.relu(layer(x, self.alphas, self.bank))
            return self.fc(x.mean((2, 3))) + self.bank.sum()  # the bank also acts outside


    class DeficientNet(BasisNet):  # B of rank 2: M_i + N with N @ B = 0 makes the same W_i
        def __init__(self):
            super().__init__()
            with torch.no_grad():
                self.basis.b[2] = self.basis.b[0] + self.basis.b[1]
                null = torch.tensor([1.0, 1.0, -1.0])
                for i, layer in enumerate(self.layers[1:]):
                    layer.m.add_(torch.randn(W, 1) * null)  # still proportional weights


    def tanh():
        return seeded(TanhNet)

    def basis_deficient():
        return seeded(DeficientNet)

    def tanh_grows():
        return seeded(lambda: TanhNet(layers=4, clusters=2))

    def plist():
        return seeded(lambda: ListNet(k=3, layers=6))
    """
)

W, K, D = 4, 3, 4 * 4 * 9
HEAD = (1 * W * 9 + W) + (W * 10 + 10)  # stem and fc
BN = 2 * W  # one BatchNorm's weight and bias


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def _checkpoint(nets: Path, factory: str) -> tuple[Path, str, torch.nn.Module]:
    spec = f"{nets}:{factory}"
    model = load_factory(spec)()
    path = nets.parent / f"{factory}.pt"
    torch.save(model.state_dict(), path)
    return path, spec, model


def _unique(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tie once


def _fold(nets: Path, factory: str, threshold: float = 0.99, **kw):
    path, spec, model = _checkpoint(nets, factory)
    out = nets.parent / f"{factory}.folded.safetensors"
    options = FoldOptions(analysis=AnalysisOptions(threshold=threshold), model=spec, **kw)
    report = fold_checkpoint(path, out, options)
    return report, out, spec, model


def _assert_equal_logits(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert float((ya - yb).norm() / ya.norm()) < 1e-5


# (factory, the numbers the fold stores for its groups, the numbers they free)
CASES = {
    # 2 clusters of 2 distinct alphas: 2 weights + 4 gains, for the bank and 4 alphas
    "soft": (2 * D + 4, K * D + 4 * K),
    # the same; the hard-tied conv is kept as it is
    "soft_tied": (2 * D + 4, K * D + 4 * K),
    # 6 proportional M_i (4 x 3): B kept, 1 direction + 6 gains for the 6 M_i (1 weight + 6
    # gains for B (3 x 36) and the M_i would save 30 numbers, the directions 54)
    "basis": (W * 3 + 6, 6 * W * 3),
    # 4 M_i in 2 clusters: 2 directions + 4 gains for 4 M_i (2 weights would grow)
    "basis_grows": (2 * W * 3 + 4, 4 * W * 3),
    # the bank also acts outside its layers, so it stays: 2 directions (K) + 4 gains, 4 alphas
    "soft_uses_bank": (2 * K + 4, 4 * K),
    # 6 layers of tanh(M_i) @ B: not linear in M_i, so weights: 1 weight + 6 gains for B and M_i
    "tanh": (D + 6, 3 * W * 9 + 6 * W * 3),
    # the M_i are not proportional (their weights are): weights, as for tanh
    "basis_deficient": (D + 6, 3 * W * 9 + 6 * W * 3),
    # 6 alphas (3 numbers each) of a ParameterList in 2 clusters, the bank used elsewhere:
    # 2 directions + 6 gains
    "plist": (2 * 3 + 6, 6 * 3),
    # 4 proportional 1x1 convs M_i (4 x 3): 1 weight + 4 gains for 4 weights
    "basis_conv": (W * 3 + 4, 4 * W * 3),
    # 4 parallel windows mixes: 1 weight + 4 gains, plus the linear layer's own weight (40);
    # for the store (3 windows of 72 past the first 144: 288), 10 conv and 2 linear coefficients
    "store": (D + 4 + 10 * W, 288 + 10 + 2),
}


@pytest.mark.parametrize("factory", sorted(CASES))
def test_every_kind_folds_exactly_and_never_grows(nets: Path, factory: str) -> None:
    report, out, spec, model = _fold(nets, factory)
    stored, freed = CASES[factory]
    before = _unique(model)
    assert report.params.checkpoint_unique == before
    assert report.params.folded == before - freed + stored < before
    assert inspect_checkpoint(out).unique_parameters == report.params.folded
    folded = load_folded(out, model=spec)
    assert sum(p.numel() for p in folded.parameters()) == report.params.folded
    _assert_equal_logits(model, folded)
    assert report.probe.max_abs_diff < 1e-4


def test_a_hard_tie_stays_one_tensor_with_its_aliases(nets: Path) -> None:
    report, out, spec, model = _fold(nets, "soft_tied")
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
        program = json.loads(f.metadata()["program"])
    held = [k for k in keys if k.endswith("conv.weight") or k == "shared.weight"]
    assert len(held) == 1  # the reused conv's weight is stored once
    aliases = program["aliases"]
    uses = {"shared.weight", *(f"blocks.{i}.conv.weight" for i in range(3))}
    assert {k for k, v in aliases.items() if v == held[0]} == uses - {held[0]}
    folded = load_folded(out, model=spec)
    convs = {id(b.conv) for b in folded.blocks} | {id(folded.shared)}
    assert len(convs) == 1  # still one module
    _assert_equal_logits(model, folded)
    assert [b["kind"] for b in program["banks"]] == ["soft"]
    assert any("hard tie" in k["why"] for k in program["kept"])


def test_the_cli_reports_what_the_file_stores_and_evaluates_it(ssc, nets: Path) -> None:
    path, spec, _ = _checkpoint(nets, "store")
    out = nets.parent / "cli.safetensors"
    run = ssc("fold", str(path), "--model", spec, "-o", str(out), "--threshold", "0.99", "--json")
    assert run.code == 0, run.err
    folded = run.json()["params"]["folded"]
    info = ssc("info", str(out), "--json")
    assert info.code == 0, info.err
    assert info.json()["unique_parameters"] == folded
    assert info.json()["architecture_name"].startswith("folded user network")
    ev = ssc("eval", str(out), "--model", spec, "--data", "digits?limit=30", "--json")
    assert ev.code == 0, ev.err


def test_threshold_auto_searches_the_traced_similarities(ssc, nets: Path) -> None:
    path, spec, _ = _checkpoint(nets, "soft")
    out = nets.parent / "auto.safetensors"
    run = ssc("fold", str(path), "--model", spec, "-o", str(out), "--threshold", "auto",
              "--data", "digits?limit=30", "--max-drop", "100", "--json")  # fmt: skip
    assert run.code == 0, run.err
    assert out.exists()


@pytest.mark.parametrize("factory", ["tanh_grows"])
def test_a_fold_that_would_grow_writes_nothing(ssc, nets: Path, factory: str) -> None:
    """4 layers in 2 clusters: 2 weights (288) and 4 gains cost more than B and the M_i (156),
    and tanh(M_i) @ B is not linear in M_i: no directions either."""
    path, spec, _ = _checkpoint(nets, factory)
    out = nets.parent / "grows.safetensors"
    run = ssc("fold", str(path), "--model", spec, "-o", str(out), "--threshold", "0.99")
    assert run.code == 2
    assert "nothing to fold" in run.err and "kept as it is" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("factory", "args", "message"),
    [
        ("inline", (), "called inline"),
        ("soft", ("--bank-key", "*.templates"), "no naming is used"),
    ],
)
def test_refusals_are_one_line(ssc, nets: Path, factory, args, message) -> None:
    path, spec, _ = _checkpoint(nets, factory)
    out = nets.parent / "refused.safetensors"
    run = ssc("fold", str(path), "--model", spec, "-o", str(out), *args)
    assert run.code == 2
    assert message in run.err and len(run.err.strip().splitlines()) == 1
    assert not out.exists()


def _forge(out: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    with safe_open(str(out), "pt") as f:
        meta = dict(f.metadata())
    program = json.loads(meta["program"])
    edit(program)
    meta["program"] = json.dumps(program)
    forged = out.with_name("forged.safetensors")
    save_file(load_file(str(out)), str(forged), metadata=meta)
    return forged


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p["banks"][0].update(clusters=10**9),
        lambda p: p["layers"][0].update(cluster=7),
        lambda p: p["layers"][0].update(op="conv3d"),
        lambda p: p["layers"][0]["geometry"].update(stride=[0, 0]),
        lambda p: p["banks"][0].update(module="__class__"),
        lambda p: p.update(dropped=["no.such.parameter"]),
        lambda p: p.update(layers="everything"),
    ],
)
def test_a_forged_program_is_refused(nets: Path, edit) -> None:
    _, out, spec, _ = _fold(nets, "soft")
    with pytest.raises(CheckpointError):
        load_folded(_forge(out, edit), model=spec)


def test_a_forged_program_is_one_line_on_the_cli(ssc, nets: Path) -> None:
    _, out, spec, _ = _fold(nets, "soft")
    forged = _forge(out, lambda p: p["layers"][0].update(cluster=-1))
    run = ssc("eval", str(forged), "--model", spec, "--data", "digits?limit=30")
    assert run.code == 2 and len(run.err.strip().splitlines()) == 1


def test_the_folded_file_is_seen_as_its_c_weights(ssc, nets: Path) -> None:
    _, out, _, _ = _fold(nets, "soft")
    run = ssc("analyze", str(out), "--json")
    assert run.code == 0, run.err
    banks = run.json()["banks"]
    assert [b["templates"] for b in banks if b["layers"]][:1] == [2]  # its 2 distinct weights


def test_load_folded_needs_the_factory(nets: Path) -> None:
    _, out, _, _ = _fold(nets, "soft")
    with pytest.raises(InputError, match="module:callable"):
        load_folded(out)


# --- directions mode: the shared basis/bank kept, each per-call parameter gain · direction -----


@pytest.mark.parametrize(
    ("factory", "mode"),
    [("basis", "directions"), ("basis_grows", "directions"), ("soft_uses_bank", "directions"),
     ("plist", "directions"), ("tanh", "weights"), ("basis_deficient", "weights"),
     ("soft", "weights"), ("store", "weights")],
)  # fmt: skip
def test_each_group_stores_the_cheaper_mode(nets: Path, factory: str, mode: str) -> None:
    _, out, _, _ = _fold(nets, factory)
    with safe_open(str(out), "pt") as f:
        program = json.loads(f.metadata()["program"])
    assert set(program["modes"].values()) == {mode}
    assert bool(program["computed"]) is (mode == "directions")


def test_a_per_call_parameter_becomes_its_gain_times_the_direction(nets: Path) -> None:
    """basis_grows: M_2 = 2.5 M_0 and M_3 = 3.5 M_1; each M_i is computed, B stays stored."""
    _, out, spec, model = _fold(nets, "basis_grows")
    folded = load_folded(out, model=spec)
    state = folded.state_dict()
    assert "basis.b" in state and not any(k.endswith(".m") for k in state)
    (attr,) = {k.split(".")[0] for k in state if k.startswith("ssc_folded_")}
    bank = getattr(folded, attr)
    assert tuple(bank.directions.shape) == (2, W, 3) and tuple(bank.gains.shape) == (4,)
    for i, layer in enumerate(folded.layers):
        assert not isinstance(layer.m, torch.nn.Parameter)
        assert torch.allclose(layer.m, model.layers[i].m, rtol=1e-5, atol=1e-6)
    m0, m2 = (bank.gains[i] * bank.directions[0] for i in range(2))  # the first cluster
    assert torch.allclose(m2, 2.5 * m0, rtol=1e-5)


def test_a_parameter_list_entry_is_computed_too(nets: Path) -> None:
    _, out, spec, model = _fold(nets, "plist")
    folded = load_folded(out, model=spec)
    assert not any(k.startswith("alphas.") for k in folded.state_dict())
    assert torch.allclose(folded.alphas[5], model.alphas[5], rtol=1e-5, atol=1e-6)
    assert torch.allclose(list(folded.alphas)[4], model.alphas[4], rtol=1e-5, atol=1e-6)


def test_the_basis_sample_folds_by_directions(ssc, tmp_path: Path) -> None:
    """sample_checkpoints/sharing/basis.pt: M_0 and M_2 are proportional (B: 4 x 8 x 3 x 3 =
    288 numbers; 1 weight of 576 would grow): one direction (8 x 4) and 2 gains replace them."""
    root = Path(__file__).resolve().parent.parent
    sample, spec = root / "sample_checkpoints/sharing/basis.pt", f"{root}/examples/sharing.py:basis"
    out = tmp_path / "basis.safetensors"
    run = ssc("fold", str(sample), "--model", spec, "-o", str(out), "--json")
    assert run.code == 0, run.err
    params = run.json()["params"]
    assert params["folded"] == params["checkpoint_unique"] - 2 * 8 * 4 + (8 * 4 + 2)
    info = ssc("info", str(out), "--json")
    assert info.code == 0 and info.json()["unique_parameters"] == params["folded"]
    model = load_factory(spec)()
    model.load_state_dict(torch.load(sample, weights_only=True))
    folded = load_folded(out, model=spec)
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ya, yb = model.eval()(x), folded(x)
    assert float((ya - yb).norm() / ya.norm()) < 1e-5
    ev = ssc("eval", str(out), "--model", spec, "--data", "digits?limit=30", "--json")
    assert ev.code == 0, ev.err


def test_a_weight_not_linear_in_its_parameter_is_never_a_direction(nets: Path) -> None:
    """tanh(M_i) @ B with tanh(M_i) planted proportional: M_i are not, so directions fitted in
    M-space would be wrong; the homogeneity check sends the group to weights."""
    from soft_share_cli.analysis.traced import analyze_traced
    from soft_share_cli.folding.traced_directions import plan_directions

    for factory, expected in (("tanh", False), ("basis", True)):
        model = load_factory(f"{nets}:{factory}")()
        probe = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        analysis = analyze_traced(model, probe, AnalysisOptions(threshold=0.99), with_graph=False)
        (plan,) = plan_directions(analysis, probe, model)
        assert (plan.saving > 0) is expected and (plan.fold is not None) is expected


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p["computed"][0].update(cluster=5),
        lambda p: p["computed"][0].update(gain=99),
        lambda p: p["computed"][0].update(gain=True),
        lambda p: p["computed"][0].update(attr="__class__"),
        lambda p: p["computed"][0].update(path="no.such"),
        lambda p: p["computed"][0].update(path="stem", attr="weight"),
        lambda p: p["computed"][0].update(bank="ssc_folded_other"),
        lambda p: p["computed"].append(dict(p["computed"][0])),
        lambda p: p["directions"][0].update(module="__class__"),
        lambda p: p["directions"][0].update(clusters=3),
        lambda p: p.update(computed="everything"),
        lambda p: p.pop("computed"),  # the M_i the file lacks: refused by the strict load
    ],
)
def test_a_forged_directions_program_is_refused(nets: Path, edit) -> None:
    _, out, spec, _ = _fold(nets, "basis_grows")
    with pytest.raises((CheckpointError, ArchitectureError)):
        load_folded(_forge(out, edit), model=spec)
