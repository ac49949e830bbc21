"""Which layers share a bank (sharing.groups), on ssc's WRN and on networks others write.

The networks here are reused by test_sharing_convert.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from soft_share_cli.errors import InputError
from soft_share_cli.models.wrn import WRN
from soft_share_cli.sharing.groups import (
    ShareGroup,
    find_groups,
    groups_from_patterns,
    wrn_groups,
)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (names and layout), small."""

    def __init__(self, inp: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inp != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1 -> 3x3 -> 1x1 (x4), with biases on the 3x3 to keep."""

    def __init__(self, inp: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or inp != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, layer1..layer4, avgpool, fc), CIFAR stem."""

    def __init__(self, block: type[nn.Module], layers: list[int], widths: list[int]):
        super().__init__()
        grow = 4 if block is Bottleneck else 1
        self.conv1 = nn.Conv2d(3, widths[0] * grow, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0] * grow)
        self.relu = nn.ReLU()
        inp = widths[0] * grow
        for i, (blocks, planes) in enumerate(zip(layers, widths, strict=True), start=1):
            stride = 1 if i == 1 else 2
            stage = []
            for b in range(blocks):
                stage.append(block(inp, planes, stride if b == 0 else 1))
                inp = planes * grow
            self.add_module(f"layer{i}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inp, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}", nn.Identity())(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PlainBlock(nn.Module):
    def __init__(self, width: int, stride: int):
        super().__init__()
        self.conv_a = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.norm = nn.BatchNorm2d(width)
        self.conv_b = nn.Conv2d(width, width, 3, 1, 1, bias=True)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_b(torch.relu(self.norm(self.conv_a(x))))
        return out + (x if self.stride == 1 else x[:, :, ::2, ::2])


class DictStagesNet(nn.Module):
    """Stages in an nn.ModuleDict of nn.ModuleLists, all of one width (stride 2 between)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stages = nn.ModuleDict(
            {
                "early": nn.ModuleList([PlainBlock(8, 1), PlainBlock(8, 1)]),
                "late": nn.ModuleList([PlainBlock(8, 2), PlainBlock(8, 1), PlainBlock(8, 1)]),
            }
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages.values():
            for block in stage:
                x = block(x)
        return self.head(x.mean(dim=(2, 3)))


def vgg() -> nn.Sequential:
    """A flat VGG-style nn.Sequential (convs with biases)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


class SubConv(nn.Conv2d):
    """A conv subclass: its forward may do anything, so it is never replaced."""


class OddNet(nn.Module):
    """Layers find_groups must skip (and that must not break a run), plus a hard tie."""

    def __init__(self) -> None:
        super().__init__()
        tied = nn.Conv2d(8, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),  # 0: other shape, alone
            SubConv(8, 8, 3, padding=1),  # 1: subclass
            nn.Conv2d(8, 8, 3, padding=1),  # 2: grouped
            nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),  # 3: not zero padding
            nn.Conv2d(8, 8, 5, padding=2),  # 4: 5x5
            tied,  # 5: one module at two places
            nn.ReLU(),
            tied,  # 7
            nn.Conv2d(8, 8, 3, padding=1),  # 8: grouped
            nn.Conv2d(8, 8, 3, padding=1),  # 9: holds 10's weight
            nn.Conv2d(8, 8, 3, padding=1),  # 10
            nn.Conv2d(8, 8, 3, padding=1),  # 11: grouped
        )
        self.body[9].weight = self.body[10].weight
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


def geometry() -> nn.Sequential:
    """Same-shape convs that differ in stride, padding, dilation, groups and bias."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False),
        nn.Conv2d(8, 8, 3, padding="same", groups=2),
        nn.Conv2d(8, 8, (3, 3), padding=(0, 1), groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def seeded(build, seed: int = 0) -> nn.Module:  # type: ignore[no-untyped-def]
    """``build()`` under a seed, BatchNorms given non-trivial running stats, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
        for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
            if conv.bias is not None:
                conv.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def basic_resnet() -> nn.Module:
    return TorchvisionResNet(BasicBlock, [2, 2, 2, 2], [8, 16, 16, 32])


def bottleneck_resnet() -> nn.Module:
    return TorchvisionResNet(Bottleneck, [3, 3], [4, 8])


def pytorchcv_resnet20() -> nn.Module:
    resnet_cifar = pytest.importorskip("pytorchcv.models.resnet_cifar")
    return resnet_cifar.resnet20_cifar10()


def _layout(groups: list[ShareGroup]) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    return [(g.name, g.layers, g.shape) for g in groups]


def _blocks(stage: str, blocks: range, convs: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{stage}.{b}.{c}" for b in blocks for c in convs)


@pytest.mark.parametrize(("depth", "per_stage"), [(16, 2), (28, 6)])
def test_wrn_groups_and_find_groups_on_ssc_wrn(depth: int, per_stage: int) -> None:
    model = WRN(depth, 1, num_classes=10, in_channels=1)
    n = model.num_blocks
    shapes = [(16, 16, 3, 3), (32, 32, 3, 3), (64, 64, 3, 3)]
    groups = wrn_groups(n, shapes)
    assert _layout(groups) == [
        (f"stage_{s}", _blocks(f"stage_{s}", range(1, n), ("conv1", "conv2")), shapes[s - 1])
        for s in (1, 2, 3)
    ]
    assert all(len(g.layers) == per_stage for g in groups)
    assert groups[0].layer_parameters == 16 * 16 * 9
    # find_groups differs from the SWRN layout only in block 0 of each stage: it also takes the
    # same-shape convs there (both of stage 1's, conv2 of stages 2 and 3), while wrn_groups
    # leaves block 0 out so that the result is an ordinary SWRN. The stem (1 -> 16) stays alone.
    found = find_groups(model)
    expected = [("stage_1", _blocks("stage_1", range(n), ("conv1", "conv2")), shapes[0])]
    for s in (2, 3):
        layers = (f"stage_{s}.0.conv2", *_blocks(f"stage_{s}", range(1, n), ("conv1", "conv2")))
        expected.append((f"stage_{s}", layers, shapes[s - 1]))
    assert _layout(found) == expected
    assert wrn_groups(1, shapes) == []  # WRN-10: one block per stage, nothing to share


def test_pytorchcv_resnet20_gives_its_three_stages() -> None:
    model = pytorchcv_resnet20()
    found = find_groups(model)
    assert [(g.name, len(g.layers), g.shape) for g in found] == [
        ("features.stage1", 6, (16, 16, 3, 3)),
        ("features.stage2", 5, (32, 32, 3, 3)),
        ("features.stage3", 5, (64, 64, 3, 3)),
    ]
    assert found[1].layers[0] == "features.stage2.unit1.body.conv2.conv"
    assert "features.stage2.unit1.identity_conv.conv" not in found[1].layers


def test_torchvision_style_basic_resnet() -> None:
    found = find_groups(basic_resnet())
    assert _layout(found) == [
        ("layer1", _blocks("layer1", range(2), ("conv1", "conv2")), (8, 8, 3, 3)),
        ("layer2", ("layer2.0.conv2", "layer2.1.conv1", "layer2.1.conv2"), (16, 16, 3, 3)),
        # same shape as layer2's, but another stage: a run of its own (its 1x1 in between)
        ("layer3", _blocks("layer3", range(2), ("conv1", "conv2")), (16, 16, 3, 3)),
        ("layer4", ("layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"), (32, 32, 3, 3)),
    ]


def test_bottleneck_resnet_1x1_convs_do_not_break_runs() -> None:
    found = find_groups(bottleneck_resnet())
    assert _layout(found) == [
        ("layer1", _blocks("layer1", range(3), ("conv2",)), (4, 4, 3, 3)),
        ("layer2", _blocks("layer2", range(3), ("conv2",)), (8, 8, 3, 3)),
    ]


def test_flat_vgg_sequential() -> None:
    found = find_groups(vgg())
    assert _layout(found) == [
        ("2..4", ("2", "4"), (8, 8, 3, 3)),
        ("10..14", ("10", "12", "14"), (16, 16, 3, 3)),
    ]


def test_convs_of_one_weight_shape_but_other_geometry_form_a_run() -> None:
    found = find_groups(geometry())
    assert _layout(found) == [("1..4", ("1", "2", "3", "4"), (8, 4, 3, 3))]


def test_module_dict_and_module_list_stages_are_separate() -> None:
    found = find_groups(DictStagesNet())
    convs = ("conv_a", "conv_b")
    assert _layout(found) == [
        ("stages.early", _blocks("stages.early", range(2), convs), (8, 8, 3, 3)),
        ("stages.late", _blocks("stages.late", range(3), convs), (8, 8, 3, 3)),
    ]


def test_subclass_padding_mode_5x5_and_hard_ties_are_skipped() -> None:
    found = find_groups(OddNet())
    assert _layout(found) == [("body", ("body.2", "body.8", "body.11"), (8, 8, 3, 3))]


def test_a_network_without_groups() -> None:
    single = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Conv2d(4, 4, 1))
    assert find_groups(single) == []
    assert find_groups(nn.Linear(3, 3)) == []
    assert find_groups(nn.Conv2d(3, 3, 3)) == []  # the root itself is never replaced


def test_groups_from_patterns() -> None:
    model = basic_resnet()
    groups = groups_from_patterns(model, ["layer1.*.conv*", " layer2.1.* , layer2.0.conv2 "])
    assert _layout(groups) == [
        ("layer1", _blocks("layer1", range(2), ("conv1", "conv2")), (8, 8, 3, 3)),
        ("layer2", ("layer2.0.conv2", "layer2.1.conv1", "layer2.1.conv2"), (16, 16, 3, 3)),
    ]
    assert groups_from_patterns(model, []) == []


def test_groups_from_patterns_allows_other_kernels_of_one_shape() -> None:
    model = bottleneck_resnet()
    groups = groups_from_patterns(model, ["layer1.1.conv1,layer1.2.conv1"])
    assert _layout(groups) == [("layer1", ("layer1.1.conv1", "layer1.2.conv1"), (4, 16, 1, 1))]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["nothing.*"], "matches no Conv2d"),
        (["layer1.*.conv*", "fc"], "matches no Conv2d"),  # a Linear is no conv
        (["layer1.0.conv1"], "matches one conv"),
        (["layer2.*.conv*"], "different shapes"),
        (["layer1.0.*", "layer1.*"], "is in group 1 and group 2"),
        ([""], "no module-name pattern"),
        ([" , "], "no module-name pattern"),
    ],
)
def test_groups_from_patterns_errors(specs: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        groups_from_patterns(basic_resnet(), specs)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("body.1,body.2", "SubConv"),
        ("body.2,body.3", "padding_mode='reflect'"),
        ("body.2,body.5", "another layer holds"),  # the module used twice
        ("body.8,body.9", "another layer holds"),  # the conv holding another's weight
    ],
)
def test_groups_from_patterns_refuses_layers_a_bank_cannot_replace(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        groups_from_patterns(OddNet(), [spec])


def test_groups_from_patterns_refuses_non_square_kernels() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, (3, 1)), nn.Conv2d(4, 4, (3, 1)))
    with pytest.raises(InputError, match="3x1 kernel"):
        groups_from_patterns(model, ["*"])
