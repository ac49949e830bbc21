"""SWRN/WRN: exact parameter counts of the paper, the authors' state-dict layout, the layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from soft_share_cli.models.layers import SConv2d, TemplateBank
from soft_share_cli.models.params import count_parameters, count_state_dict_parameters
from soft_share_cli.models.registry import build_model
from soft_share_cli.models.wrn import SWRN, WRN

# From ../shared/PAPER.md: the authors' networks for 10 classes.
PAPER_COUNTS = [
    ("wrn", dict(depth=28, width=10), 36_479_194),
    ("swrn", dict(depth=28, width=10, num_templates=1), 12_287_212),
    ("swrn", dict(depth=28, width=10, num_templates=2), 17_125_630),
    ("swrn", dict(depth=28, width=10, num_templates=4), 26_802_466),
    ("swrn", dict(depth=28, width=14, num_templates=2), 33_537_790),
]


@pytest.mark.parametrize(("arch", "kwargs", "expected"), PAPER_COUNTS)
def test_parameter_counts_match_the_paper(arch: str, kwargs: dict, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no 36M-parameter allocation
        model = build_model(arch, num_classes=10, **kwargs)
    assert count_parameters(model) == expected


def test_state_dict_count_deduplicates_shared_templates() -> None:
    model = SWRN(16, 1, 3, num_classes=10, in_channels=1)
    state = model.state_dict()
    naive = sum(v.numel() for k, v in state.items() if "running" not in k and "num_b" not in k)
    assert count_state_dict_parameters(state) == count_parameters(model)
    assert naive > count_parameters(model)  # the overcount the field notes warn about


def _expected_keys(depth: int, shared: bool) -> set[str]:
    """The key set of the authors' layout, written out from its description."""
    n = (depth - 4) // 6
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv_3x3.weight", "classifier.weight", "classifier.bias"}
    keys |= {f"lastact.0.{p}" for p in bn}
    for s in (1, 2, 3):
        if shared:
            keys.add(f"bank_{s}.templates")
        for b in range(n):
            p = f"stage_{s}.{b}"
            keys |= {f"{p}.bn1.{x}" for x in bn} | {f"{p}.bn2.{x}" for x in bn}
            if b == 0 or not shared:
                keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight"}
            else:
                keys |= {f"{p}.bank.templates", f"{p}.conv1.coefficients"}
                keys |= {f"{p}.conv1.bank.templates", f"{p}.conv2.coefficients"}
                keys.add(f"{p}.conv2.bank.templates")
            if b == 0 and s > 1:
                keys.add(f"{p}.convShortcut.weight")
    return keys


def test_swrn_keys_follow_the_authors_layout() -> None:
    model = SWRN(16, 1, 2, num_classes=10)
    state = model.state_dict()
    assert set(state) == _expected_keys(16, shared=True)
    assert state["bank_2.templates"].shape == (2, 32, 32, 3, 3)
    assert state["stage_2.1.conv1.coefficients"].shape == (2, 1, 1, 1, 1)
    # one tensor under several names
    ptr = state["bank_3.templates"].data_ptr()
    assert state["stage_3.1.conv2.bank.templates"].data_ptr() == ptr


def test_wrn_keys_and_wide_shortcut() -> None:
    assert set(WRN(16, 1).state_dict()) == _expected_keys(16, shared=False)
    wide = WRN(10, 2).state_dict()
    assert "stage_1.0.convShortcut.weight" in wide  # 16 -> 32 channels needs a projection


def test_sconv_equals_conv_with_the_mixed_weight() -> None:
    torch.manual_seed(0)
    bank = TemplateBank(4, in_planes=5, out_planes=6, kernel_size=3)
    conv = SConv2d(bank, stride=2, padding=1)
    torch.nn.init.normal_(conv.coefficients)
    x = torch.randn(2, 5, 9, 9)
    weight = (bank.templates * conv.coefficients).sum(0)
    torch.testing.assert_close(conv(x), F.conv2d(x, weight, stride=2, padding=1))
    assert conv(x).shape == (2, 6, 5, 5)


def test_coefficients_start_orthogonal_per_bank() -> None:
    torch.manual_seed(0)
    model = SWRN(28, 1, 6, num_classes=10)  # 6 layers per bank, K = 6: a square orthogonal
    for s in (1, 2, 3):
        rows = torch.stack(
            [
                m.coefficients.flatten()
                for m in getattr(model, f"stage_{s}").modules()
                if isinstance(m, SConv2d)
            ]
        )
        assert rows.shape == (6, 6)
        torch.testing.assert_close(rows @ rows.T, torch.eye(6), atol=1e-5, rtol=0)


def test_models_run_on_small_and_cifar_sized_inputs() -> None:
    model = SWRN(10, 1, 2, num_classes=7, in_channels=1).eval()
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 7)
    assert WRN(10, 1).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("bad", [dict(depth=12), dict(depth=4), dict(num_templates=0)])
def test_bad_constructor_arguments_are_architecture_errors(bad: dict) -> None:
    from soft_share_cli.errors import ArchitectureError

    kwargs = dict(depth=16, width=1, num_templates=2) | bad
    with pytest.raises(ArchitectureError):
        build_model("swrn", **kwargs)
