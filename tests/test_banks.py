"""Tests of template bank discovery: aliases by storage and by value, fallback rules, issues."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_model
from torch import Tensor, nn

from soft_share_cli.analysis.banks import ISSUE_KINDS, BankDiscovery, find_banks
from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint
from soft_share_cli.errors import InputError
from soft_share_cli.models.layers import SConv2d, TemplateBank
from soft_share_cli.models.wrn import SWRN

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
SWRN_LAYERS = {i: [f"stage_{i}.{b}.conv{c}" for b in (1, 2, 3) for c in (1, 2)] for i in (1, 2, 3)}


@pytest.fixture(scope="module")
def swrn() -> SWRN:
    torch.manual_seed(0)
    return SWRN(28, 1, 4, in_channels=1)


@pytest.fixture()
def swrn_sd(swrn: SWRN) -> dict[str, Tensor]:
    return dict(swrn.state_dict())


class ReadmeNet(nn.Module):
    """The network of the authors' README: one bank shared by three convs, plus plain layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 3)
        self.bank = TemplateBank(3, 10, 10, 3)
        self.conv2 = SConv2d(self.bank)
        self.conv3 = SConv2d(self.bank)
        self.conv4 = SConv2d(self.bank)
        self.conv5 = nn.Conv2d(10, 10, 3)
        self.fc = nn.Linear(10, 10)
        with torch.no_grad():  # SConv2d starts at zero, which would be a zero-norm issue
            for conv in (self.conv2, self.conv3, self.conv4):
                conv.coefficients.normal_()


def assert_swrn(found: BankDiscovery, state_dict: dict[str, Tensor], prefix: str = "") -> None:
    assert found.issues == ()
    assert [bank.name for bank in found.banks] == [f"{prefix}bank_{i}" for i in (1, 2, 3)]
    for i, bank in enumerate(found.banks, start=1):
        assert [layer.name for layer in bank.layers] == [prefix + n for n in SWRN_LAYERS[i]]
        assert [layer.index for layer in bank.layers] == list(range(6))
        assert bank.num_templates == 4
        assert bank.template_shape == (16 * 2 ** (i - 1),) * 2 + (3, 3)
        assert bank.weight_numel == bank.templates[0].numel()
        for layer in bank.layers:
            assert layer.key == f"{layer.name}.coefficients"
            expected = state_dict[layer.key].reshape(-1).double().numpy()
            assert layer.coefficients.dtype == np.float64
            np.testing.assert_array_equal(layer.coefficients, expected)
        matrix = bank.coefficient_matrix()
        assert matrix.shape == (6, 4) and matrix.dtype == np.float64
        # The bank holds the state dict's own tensor, not a copy.
        assert bank.templates.data_ptr() == state_dict[bank.keys[0]].data_ptr()


def all_template_keys(state_dict: dict[str, Tensor], i: int) -> set[str]:
    stage = (f"bank_{i}.", f"stage_{i}.")
    return {k for k in state_dict if k.endswith(".templates") and k.startswith(stage)}


def test_swrn_state_dict(swrn: SWRN, swrn_sd: dict[str, Tensor]) -> None:
    found = find_banks(swrn_sd)
    assert_swrn(found, swrn_sd)
    for i, bank in enumerate(found.banks, start=1):
        # bank_i, three Block registrations and six SConv2d registrations: 10 keys, one tensor.
        assert len(bank.keys) == 10
        assert set(bank.keys) == all_template_keys(swrn_sd, i)
        assert bank.keys[0] == f"bank_{i}.templates"
    # The coefficients really generate the model's weights.
    bank = found.bank("bank_2")
    conv = swrn.stage_2[2].conv2
    assert isinstance(conv, SConv2d)
    generated = torch.tensordot(
        torch.from_numpy(bank.layers[3].coefficients).float(), bank.templates, dims=1
    )
    torch.testing.assert_close(generated, conv.weight().detach())


def test_coefficients_are_copies(swrn_sd: dict[str, Tensor]) -> None:
    found = find_banks(swrn_sd)
    before = found.banks[0].layers[0].coefficients.copy()
    with torch.no_grad():
        swrn_sd["stage_1.1.conv1.coefficients"].add_(1.0)
    np.testing.assert_array_equal(found.banks[0].layers[0].coefficients, before)
    with torch.no_grad():
        swrn_sd["stage_1.1.conv1.coefficients"].sub_(1.0)


def test_saved_and_loaded(tmp_path: Path, swrn_sd: dict[str, Tensor]) -> None:
    path = tmp_path / "model.pt"
    kwargs = {"depth": 28, "width": 1, "num_templates": 4, "in_channels": 1}
    save_checkpoint(path, arch="swrn", arch_kwargs=kwargs, state_dict=swrn_sd, metadata={})
    loaded = load_checkpoint(path).state_dict
    assert_swrn(find_banks(loaded), loaded)
    assert [len(b.keys) for b in find_banks(loaded).banks] == [10, 10, 10]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_authors_layout_with_module_prefix(
    tmp_path: Path, swrn_sd: dict[str, Tensor], legacy: bool
) -> None:
    prefixed = {f"module.{k}": v for k, v in swrn_sd.items()}
    payload = {"epoch": 3, "arch": "swrn", "state_dict": prefixed, "optimizer": {}}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    loaded = load_checkpoint(path)
    assert loaded.stripped_prefix == "module."
    assert_swrn(find_banks(loaded.state_dict), loaded.state_dict)
    # Without the loader's stripping, the same structure under the prefix.
    assert_swrn(find_banks(prefixed), prefixed, prefix="module.")


def test_sample_authors_legacy_checkpoint() -> None:
    loaded = load_checkpoint(SAMPLES / "authors_legacy_swrn28-1-4_digits.pth.tar")
    assert loaded.format == "legacy"
    found = find_banks(loaded.state_dict)
    assert_swrn(found, loaded.state_dict)
    assert [len(b.keys) for b in found.banks] == [10, 10, 10]


def test_safetensors_deduplicated(tmp_path: Path, swrn: SWRN) -> None:
    path = tmp_path / "model.safetensors"
    save_model(swrn, str(path))
    state_dict = load_checkpoint(path).state_dict
    assert sum(k.endswith("templates") for k in state_dict) == 3  # one key per bank remains
    found = find_banks(state_dict)
    assert_swrn(found, state_dict)
    assert sum(len(b.layers) for b in found.banks) == 18
    assert [b.keys for b in found.banks] == [(f"bank_{i}.templates",) for i in (1, 2, 3)]


def test_aliases_as_equal_copies(swrn_sd: dict[str, Tensor]) -> None:
    cloned = {k: v.clone() for k, v in swrn_sd.items()}
    found = find_banks(cloned)
    assert_swrn(found, cloned)
    for i, bank in enumerate(found.banks, start=1):
        assert set(bank.keys) == all_template_keys(cloned, i)


def test_equal_primary_banks_stay_apart() -> None:
    # Two real banks with equal values (e.g. freshly zeroed) are two banks, not one.
    state_dict = {
        "a.templates": torch.zeros(2, 3, 3, 1, 1),
        "b.templates": torch.zeros(2, 3, 3, 1, 1),
        "a_conv.a.templates": torch.zeros(2, 3, 3, 1, 1),  # a copied alias: ambiguous
        "a_conv.coefficients": torch.ones(2, 1, 1, 1, 1),
    }
    found = find_banks(state_dict)
    assert [b.name for b in found.banks] == ["a", "b"]
    assert found.banks[0].keys == ("a.templates", "a_conv.a.templates")
    assert [issue.kind for issue in found.issues] == ["ambiguous-bank", "bank-without-layers"]


def test_readme_network(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = ReadmeNet()
    for state_dict in (dict(net.state_dict()), _safetensors_round_trip(net, tmp_path)):
        found = find_banks(state_dict)
        assert found.issues == ()
        (bank,) = found.banks
        assert bank.name == "bank"
        assert [layer.name for layer in bank.layers] == ["conv2", "conv3", "conv4"]
        assert bank.template_shape == (10, 10, 3, 3) and bank.num_templates == 3


def _safetensors_round_trip(net: nn.Module, tmp_path: Path) -> dict[str, Tensor]:
    path = tmp_path / "readme.safetensors"
    save_model(net, str(path))
    return load_checkpoint(path).state_dict


def test_walk_up_to_a_parent_bank() -> None:
    # Rule 2: no alias below the layer, but its parent holds a bank; a same-K bank elsewhere.
    state_dict = {
        "left.bank.templates": torch.randn(3, 2, 2, 1, 1),
        "left.conv_a.coefficients": torch.randn(3),
        "right.shared.templates": torch.randn(3, 2, 2, 1, 1),
        "right.deep.conv_b.coefficients": torch.randn(3, 1, 1, 1, 1),
    }
    found = find_banks(state_dict)
    assert found.issues == ()
    assert [(b.name, [la.name for la in b.layers]) for b in found.banks] == [
        ("left.bank", ["left.conv_a"]),
        ("right.shared", ["right.deep.conv_b"]),
    ]


def test_banks_ordered_by_first_layer(swrn_sd: dict[str, Tensor]) -> None:
    reordered = dict(sorted(swrn_sd.items(), key=lambda kv: "stage_3" not in kv[0]))
    assert [b.name for b in find_banks(reordered).banks] == ["bank_3", "bank_1", "bank_2"]


def issue_kinds(found: BankDiscovery) -> list[tuple[str, str]]:
    return [(issue.kind, issue.key) for issue in found.issues]


def test_orphan_and_ambiguous(swrn_sd: dict[str, Tensor]) -> None:
    alone = find_banks({"head.coefficients": torch.ones(4)})
    assert alone.banks == ()
    assert issue_kinds(alone) == [("orphan-coefficients", "head.coefficients")]
    swrn_sd["head.coefficients"] = torch.ones(4)  # K = 4 fits all three banks
    swrn_sd["tail.coefficients"] = torch.ones(7, 1, 1, 1, 1)  # fits none
    found = find_banks(swrn_sd)
    assert issue_kinds(found) == [
        ("ambiguous-bank", "head.coefficients"),
        ("orphan-coefficients", "tail.coefficients"),
    ]
    assert [len(b.layers) for b in found.banks] == [6, 6, 6]
    assert all(issue.message.endswith("left out") for issue in found.issues)


def test_k_mismatch(swrn_sd: dict[str, Tensor]) -> None:
    swrn_sd["stage_1.2.conv1.coefficients"] = torch.ones(5, 1, 1, 1, 1)
    found = find_banks(swrn_sd)
    assert issue_kinds(found) == [("k-mismatch", "stage_1.2.conv1.coefficients")]
    names = [layer.name for layer in found.banks[0].layers]
    assert "stage_1.2.conv1" not in names and len(names) == 5
    assert [layer.index for layer in found.banks[0].layers] == list(range(5))


def test_bank_without_layers(swrn_sd: dict[str, Tensor]) -> None:
    swrn_sd = {"spare.templates": torch.randn(2, 3, 3, 1, 1), **swrn_sd}
    found = find_banks(swrn_sd)
    assert [b.name for b in found.banks] == ["bank_1", "bank_2", "bank_3", "spare"]
    assert found.bank("spare").layers == ()
    assert found.bank("spare").coefficient_matrix().shape == (0, 2)
    assert issue_kinds(found) == [("bank-without-layers", "spare.templates")]


def test_zero_norm_kept_non_finite_excluded(swrn_sd: dict[str, Tensor]) -> None:
    swrn_sd["stage_2.1.conv2.coefficients"] = torch.zeros(4, 1, 1, 1, 1)
    swrn_sd["stage_2.3.conv1.coefficients"] = torch.tensor([1.0, float("nan"), 0.0, 1.0])
    swrn_sd["stage_2.3.conv2.coefficients"] = torch.tensor([1.0, float("inf"), 0.0, 1.0])
    found = find_banks(swrn_sd)
    assert issue_kinds(found) == [
        ("zero-norm", "stage_2.1.conv2.coefficients"),
        ("non-finite", "stage_2.3.conv1.coefficients"),
        ("non-finite", "stage_2.3.conv2.coefficients"),
    ]
    names = [layer.name for layer in found.bank("bank_2").layers]
    assert names == SWRN_LAYERS[2][:4]


def test_non_finite_templates_reported(swrn_sd: dict[str, Tensor]) -> None:
    state_dict = copy.deepcopy(swrn_sd)  # keeps the aliases sharing one (new) storage
    with torch.no_grad():
        state_dict["bank_3.templates"][0, 0, 0, 0, 0] = float("nan")
    found = find_banks(state_dict)
    assert issue_kinds(found) == [("non-finite", "bank_3.templates")]
    assert len(found.bank("bank_3").layers) == 6  # reported, not dropped


def test_ignored_keys_and_lookup() -> None:
    state_dict = {
        "conv.templates": torch.randn(3, 3, 3),  # 3-d: not a bank (1-d banks are 4-d, 2-d 5-d)
        "x.coefficients": torch.randn(4, 2),  # not a coefficient vector
        "y.coefficients": torch.ones(3, dtype=torch.int64),  # not floating
        "mytemplates": torch.randn(1, 1, 1, 1, 1),  # last component is not "templates"
    }
    found = find_banks(state_dict)
    assert found.banks == () and found.issues == ()
    with pytest.raises(InputError, match="no template bank named 'bank_1'"):
        found.bank("bank_1")


def test_to_dict_is_json(swrn_sd: dict[str, Tensor]) -> None:
    swrn_sd["head.coefficients"] = torch.ones(4)
    summary = find_banks(swrn_sd).to_dict()
    text = json.dumps(summary)
    assert summary["banks"][0]["template_shape"] == [16, 16, 3, 3]
    assert summary["issues"][0]["kind"] in ISSUE_KINDS
    assert "stage_1.1.conv1" in text


def test_only_bank_with_matching_k() -> None:
    # Rule 4: the banks live in a side module, so only K can decide.
    state_dict = {
        "banks.a.templates": torch.randn(3, 2, 2, 1, 1),
        "banks.b.templates": torch.randn(4, 2, 2, 1, 1),
        "net.conv.coefficients": torch.randn(4),
    }
    found = find_banks(state_dict)
    assert [(b.name, len(b.layers)) for b in found.banks] == [("banks.b", 1), ("banks.a", 0)]
    assert issue_kinds(found) == [("bank-without-layers", "banks.a.templates")]
