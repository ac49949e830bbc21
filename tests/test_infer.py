"""Architecture inference from tensor shapes, and strict loading with clear mismatch reports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from soft_share_cli.errors import ArchitectureError
from soft_share_cli.models.builder import ArchSpec, infer_architecture, load_state_dict_checked
from soft_share_cli.models.layers import SConv2d, TemplateBank
from soft_share_cli.models.registry import build_model


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("swrn", dict(depth=16, width=1, num_templates=3, num_classes=10, in_channels=1)),
        ("swrn", dict(depth=10, width=2, num_templates=1, num_classes=4, in_channels=3)),
        ("swrn", dict(depth=28, width=1, num_templates=6, num_classes=100, in_channels=3)),
        ("wrn", dict(depth=22, width=1, num_classes=10, in_channels=1)),
        ("wrn", dict(depth=10, width=3, num_classes=2, in_channels=3)),
    ],
)
def test_inference_recovers_every_constructor_argument(arch: str, kwargs: dict) -> None:
    state = build_model(arch, **kwargs).state_dict()
    assert infer_architecture(state) == ArchSpec(arch, kwargs, "inferred")


def test_inference_on_a_large_network_needs_shapes_only() -> None:
    with torch.device("meta"):
        state = build_model("swrn", depth=28, width=10, num_templates=4).state_dict()
    spec = infer_architecture(state)
    assert spec.describe() == "SWRN 28-10-4 (10 classes, 3 input channels)"


class ReadmeNet(nn.Module):
    """The authors' README example: one bank of 3 templates shared by three 3x3 convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 3)
        self.bank = TemplateBank(3, 10, 10, 3)
        self.conv2 = SConv2d(self.bank)
        self.conv3 = SConv2d(self.bank)
        self.conv4 = SConv2d(self.bank)


def test_unknown_architecture_is_reported_with_its_banks() -> None:
    with pytest.raises(ArchitectureError, match="does not describe a known architecture") as exc:
        infer_architecture(ReadmeNet().state_dict())
    assert "template-bank" in str(exc.value)


def test_inconsistent_swrn_shapes_are_reported() -> None:
    state = build_model("wrn", depth=16, width=1).state_dict()
    del state["stage_3.1.conv1.weight"], state["stage_3.1.bn1.weight"]
    for key in [k for k in state if k.startswith("stage_3.1.")]:
        del state[key]
    with pytest.raises(ArchitectureError, match="blocks per stage"):
        infer_architecture(state)


def test_checked_loading_names_missing_unexpected_and_mismatched_keys() -> None:
    model = build_model("swrn", depth=16, width=1, num_templates=2, num_classes=10)
    state = dict(model.state_dict())
    del state["classifier.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["bank_1.templates"] = torch.zeros(3, 16, 16, 3, 3)
    with pytest.raises(ArchitectureError) as exc:
        load_state_dict_checked(model, state, "SWRN 16-1-2")
    message = str(exc.value)
    assert "1 missing: classifier.bias" in message
    assert "1 unexpected: extra.weight" in message
    assert "bank_1.templates (3, 16, 16, 3, 3) vs (2, 16, 16, 3, 3)" in message
    assert "\n" not in message


def test_pytorch_040_files_without_num_batches_tracked_load() -> None:
    torch.manual_seed(0)
    source = build_model("swrn", depth=10, width=1, num_templates=2, in_channels=1).eval()
    state = {k: v for k, v in source.state_dict().items() if "num_batches" not in k}
    target = build_model("swrn", depth=10, width=1, num_templates=2, in_channels=1).eval()
    load_state_dict_checked(target, state, "SWRN 10-1-2")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(target(x), source(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rebuild_assigns_the_checkpoints_tensors_and_casts_other_dtypes(
    tmp_path, dtype: torch.dtype
) -> None:
    # Rebuilding builds a storage-less skeleton and takes the file's tensors as its weights (no
    # initial weights drawn and overwritten); a float16 file still gives a float32 network.
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.models.builder import rebuild_model

    torch.manual_seed(0)
    reference = build_model("swrn", depth=16, width=1, num_templates=2, in_channels=1).eval()
    path = tmp_path / "model.pt"
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v)
        for k, v in reference.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    torch.save(state, path)
    ckpt = load_checkpoint(path)
    model, spec = rebuild_model(ckpt)
    assert spec.arch == "swrn" and not any(p.is_meta for p in model.state_dict().values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.bank_1.templates is model.stage_1[1].conv2.bank.templates
    shared = model.bank_1.templates.data_ptr() == ckpt.state_dict["bank_1.templates"].data_ptr()
    assert shared == (dtype == torch.float32)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = reference.to(dtype).float()(x)
        torch.testing.assert_close(model(x), expected)
