"""``ssc analyze`` on a traced fold (a user network folded through ``--model``): the file seen as
soft-shared, with a layer given a fixed weight of its own shown as a plain layer."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "sample_checkpoints" / "sharing" / "store.pt"
FACTORY = str(ROOT / "examples" / "sharing.py") + ":store"


def test_a_folded_store_is_analysed_without_warnings(ssc, tmp_path: Path) -> None:
    out = tmp_path / "store_folded.safetensors"
    fold = ssc("fold", str(STORE), "--model", FACTORY, "-o", str(out), "--json")
    assert fold.code == 0, fold.err
    analysis = ssc("analyze", str(out), "--json")
    assert analysis.code == 0, analysis.err
    report = analysis.json()
    assert not report["issues"]  # the head's own weight is not a layer of the store's bank
    (bank,) = report["banks"]
    assert bank["distinct_weights"] == {"before": 4, "after": 2}  # 4 layers, 2 stored weights
    stored = ssc("info", str(out), "--json").json()["unique_parameters"]
    assert report["params"]["checkpoint_unique"] == stored == fold.json()["params"]["folded"]


NETS = '''
import torch
import torch.nn.functional as F
from torch import nn


class Mix(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.alpha = nn.Parameter(torch.randn(k))

    def forward(self, x, bank):
        return F.conv2d(x, torch.tensordot(self.alpha, bank, 1), padding=1)


class Flat(nn.Module):
    """Takes 8x8 inputs only (a flatten head); layers 0 and 2 planted parallel; a conv cut
    from a slice of the bank has a shape of its own."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.bank = nn.Parameter(torch.randn(3, 4, 4, 3, 3) * 0.3)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layers = nn.ModuleList(Mix(3) for _ in range(3))
        with torch.no_grad():
            self.layers[2].alpha.copy_(-2 * self.layers[0].alpha)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.relu(layer(x, self.bank))
        x = x + 0.1 * F.conv2d(x[:, :2], self.bank[0, :, :2], padding=1)
        return self.head(x.flatten(1))


class Broken(Flat):
    def forward(self, x):
        raise IndexError("this network's own bug")


def flat():
    return Flat()


def broken():
    return Broken()
'''


def test_an_8x8_only_network_folds_and_the_odd_shaped_call_is_named(ssc, tmp_path: Path) -> None:
    import torch

    (tmp_path / "nets.py").write_text(NETS)
    spec = f"{tmp_path / 'nets.py'}:flat"
    ckpt = tmp_path / "flat.pt"
    namespace: dict = {}
    exec(compile(NETS, "nets", "exec"), namespace)
    torch.save(namespace["Flat"]().state_dict(), ckpt)
    analysis = ssc("analyze", str(ckpt), "--model", spec, "--json")
    assert analysis.code == 0, analysis.err
    kinds = [issue["kind"] for issue in analysis.json()["issues"]]
    assert "alone-in-its-shape" in kinds  # the conv cut from a slice of the bank
    out = tmp_path / "flat_folded.safetensors"
    fold = ssc("fold", str(ckpt), "--model", spec, "-o", str(out), "--json")
    assert fold.code == 0, fold.err  # probed at 8x8 when 32x32 does not fit
    assert fold.json()["probe"]["shape"][-2:] == [8, 8]
    stored = ssc("info", str(out), "--json").json()["unique_parameters"]
    assert stored == fold.json()["params"]["folded"] < fold.json()["params"]["checkpoint_unique"]


def test_a_failure_in_the_users_forward_is_theirs(ssc, tmp_path: Path) -> None:
    import torch

    (tmp_path / "nets.py").write_text(NETS)
    namespace: dict = {}
    exec(compile(NETS, "nets", "exec"), namespace)
    ckpt = tmp_path / "flat.pt"
    torch.save(namespace["Flat"]().state_dict(), ckpt)
    run = ssc("eval", str(ckpt), "--model", f"{tmp_path / 'nets.py'}:broken", "--data", "digits")
    assert run.code == 2 and "failed on the data: IndexError: this network's own bug" in run.err
    unknown = ssc("fold", str(ckpt), "-o", str(tmp_path / "x.safetensors"))
    assert unknown.code == 2 and "pass --model MODULE:CALLABLE" in unknown.err
