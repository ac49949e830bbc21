"""Folding a user's own network by module surgery: factories, exactness, counts, round trip."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.analysis.plan import Absorb, parameter_counts, plan_bank
from soft_share_cli.errors import ArchitectureError, CheckpointError, InputError
from soft_share_cli.folding.bank import FoldedBank
from soft_share_cli.folding.surgery import (
    fold_user_model,
    load_folded_user_model,
    rebuild_folded_user_model,
    save_folded_user_model,
    user_fold_program,
)
from soft_share_cli.folding.tied import TiedConv2d
from soft_share_cli.models.layers import SConv2d, TemplateBank
from soft_share_cli.models.params import count_state_dict_parameters
from soft_share_cli.models.user import build_user_model, load_factory

# The authors' README network (conv1, one bank, three shared convs), with a small head.
USER_CODE = textwrap.dedent(
    """
    import torch.nn.functional as F
    from torch import nn
    from soft_share_cli.models.layers import SConv2d, TemplateBank


    class ReadmeNet(nn.Module):
        def __init__(self, num_templates=3):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 10, 3)
            self.bank = TemplateBank(num_templates, 10, 10, 3)
            self.conv2 = SConv2d(self.bank, stride=1, padding=1)
            self.conv3 = SConv2d(self.bank, stride=1, padding=1)
            self.conv4 = SConv2d(self.bank, stride=1, padding=1)
            self.fc = nn.Linear(10, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = F.relu(self.conv3(x))
            x = F.relu(self.conv4(x))
            return self.fc(x.mean(dim=(2, 3)))


    def two_templates():
        return ReadmeNet(num_templates=2)


    def broken():
        raise RuntimeError("no GPU here")


    def not_a_module():
        return 42


    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "readme_net.py"
    path.write_text(USER_CODE)
    return path


def _readme_net(user_file: Path, coefficients: list[list[float]], factory: str = "ReadmeNet"):
    torch.manual_seed(0)
    model = load_factory(f"{user_file}:{factory}")()
    with torch.no_grad():
        for name, a in zip(("conv2", "conv3", "conv4"), coefficients, strict=True):
            model.get_submodule(name).coefficients.copy_(torch.tensor(a).reshape(-1, 1, 1, 1, 1))
    return model.eval()


def _fold(model: nn.Module, threshold: float = 0.999):
    results, _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=threshold))
    # User networks: no BatchNorm absorption, so plans are made without the state dict.
    plans = {r.bank.name: plan_bank(r.bank, r.clusters, state_dict=None) for r in results}
    banks = tuple(r.bank for r in results)
    return fold_user_model(model, plans, banks), plans, banks


def _assert_same_outputs(a: nn.Module, b: nn.Module, shape=(4, 1, 8, 8)) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(b.eval()(x), a.eval()(x))


def _assert_planned_count(model: nn.Module, folded: nn.Module, plans) -> None:
    counts = parameter_counts(
        count_state_dict_parameters(model.state_dict()), tuple(plans.values())
    )
    assert sum(p.numel() for p in folded.parameters()) == counts.folded


def test_load_factory_by_path_and_by_module(user_file: Path, monkeypatch) -> None:
    path_before = list(sys.path)
    model = load_factory(f"{user_file}:ReadmeNet")()
    assert type(model).__name__ == "ReadmeNet"
    assert sys.path == path_before  # the import does not leave the user's directory behind
    monkeypatch.chdir(user_file.parent)
    monkeypatch.delitem(sys.modules, "readme_net", raising=False)
    model = load_factory("readme_net:two_templates")()
    assert model.bank.templates.shape[0] == 2
    assert sys.path == path_before


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("readme_net", "must look like"),
        ("{dir}/missing.py:ReadmeNet", "does not exist"),
        ("no_such_module_ssc_test:ReadmeNet", "ModuleNotFoundError"),
        ("{file}:Missing", "no attribute 'Missing'"),
        ("{file}:NOT_CALLABLE", "not a callable"),
        ("{file}:broken", "raised RuntimeError: no GPU here"),
        ("{file}:not_a_module", "returned a int"),
    ],
)
def test_bad_factory_specs_are_input_errors(user_file: Path, spec: str, message: str) -> None:
    spec = spec.format(dir=user_file.parent, file=user_file)
    with pytest.raises(InputError, match=message):
        load_factory(spec)()


def test_build_user_model_loads_strictly(user_file: Path) -> None:
    model = _readme_net(user_file, [[1, 2, 3], [3, 1, 2], [2, 3, 1]])
    rebuilt = build_user_model(f"{user_file}:ReadmeNet", model.state_dict())
    assert not rebuilt.training
    _assert_same_outputs(model, rebuilt)
    with pytest.raises(ArchitectureError, match="shape"):
        build_user_model(f"{user_file}:two_templates", model.state_dict())


def test_user_plans_keep_every_scale_as_a_gain(user_file: Path) -> None:
    model = _readme_net(user_file, [[1, 2, 3], [-2.5, -5, -7.5], [0.3, 0.6, 0.9]])
    (result,), _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=0.999))
    plan = plan_bank(result.bank, result.clusters, state_dict=None)
    assert [layer.absorb for layer in plan.layers] == [Absorb.GAIN] * 3


def test_parallel_layers_fold_exactly_into_one_weight(user_file: Path) -> None:
    model = _readme_net(user_file, [[1, 2, 3], [-2.5, -5, -7.5], [0.3, 0.6, 0.9]])
    folded, plans, _ = _fold(model)
    _assert_same_outputs(model, folded)
    shared = [m for m in folded.modules() if isinstance(m, FoldedBank)]
    assert len(shared) == 1 and shared[0].storage == "weights"
    assert shared[0].weights.shape == (1, 10, 10, 3, 3)
    tied = [m for m in folded.modules() if isinstance(m, TiedConv2d)]
    assert len(tied) == 3 and all(t.shared is shared[0] for t in tied)
    gains = [t.gain.item() for t in tied]
    assert gains[1] / gains[0] == pytest.approx(-2.5) and gains[2] / gains[0] == pytest.approx(0.3)
    _assert_planned_count(model, folded, plans)
    keys = folded.state_dict().keys()
    assert not any(k.endswith("templates") or k.endswith("coefficients") for k in keys)
    assert "ssc_folded_bank.weights" in keys and folded.bank is None
    assert not any(isinstance(m, (SConv2d, TemplateBank)) for m in folded.modules())
    assert any(isinstance(m, SConv2d) for m in model.modules())  # the original is untouched


def test_two_clusters_give_two_weights(user_file: Path) -> None:
    model = _readme_net(user_file, [[1, 2, 3], [3, -1, 0.5], [2, 4, 6]])
    folded, plans, _ = _fold(model)
    assert plans["bank"].clusters == ((0, 2), (1,))
    _assert_same_outputs(model, folded)
    (shared,) = [m for m in folded.modules() if isinstance(m, FoldedBank)]
    assert shared.weights.shape[0] == 2
    assert not torch.allclose(shared.weight(0), shared.weight(1))
    assert [t.cluster for t in folded.modules() if isinstance(t, TiedConv2d)] == [0, 1, 0]
    _assert_planned_count(model, folded, plans)


def test_templates_storage_when_it_is_smaller(user_file: Path) -> None:
    # K = 2, three pairwise non-parallel layers: C = 3 weights cost more than 2 templates.
    model = _readme_net(user_file, [[1, 0], [1, 1], [0.5, -2]], factory="two_templates")
    folded, plans, _ = _fold(model)
    assert len(plans["bank"].clusters) == 3 and not plans["bank"].stores_weights
    (shared,) = [m for m in folded.modules() if isinstance(m, FoldedBank)]
    assert set(dict(shared.named_parameters())) == {"templates", "directions"}
    assert shared.directions.shape == (3, 2)
    _assert_same_outputs(model, folded)
    _assert_planned_count(model, folded, plans)
    # without gradients the weights are cached; a parameter update must invalidate them
    with torch.no_grad():
        first = shared.weight(0)
        assert shared.weight(0) is first
        shared.directions.mul_(2.0)
        torch.testing.assert_close(shared.weight(0), 2.0 * first)


TWO_BANKS = textwrap.dedent(
    """
    from torch import nn
    from soft_share_cli.models.layers import SConv2d, TemplateBank


    class TwoBanks(nn.Module):
        def __init__(self):
            super().__init__()
            self.bank_a = TemplateBank(3, 8, 8, 3)
            bank_b = TemplateBank(2, 12, 12, 3)  # registered only inside its layers
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                SConv2d(self.bank_a), nn.ReLU(),
                SConv2d(self.bank_a), nn.ReLU(),
                nn.Conv2d(8, 12, 1), nn.ReLU(),
                SConv2d(bank_b, stride=2), nn.ReLU(),
                SConv2d(bank_b), nn.ReLU(),
                SConv2d(bank_b), nn.ReLU(),
            )
            self.head = nn.Linear(12, 10)

        def forward(self, x):
            return self.head(self.features(x).mean(dim=(2, 3)))
    """
)


def test_two_banks_in_a_sequential_and_round_trip(tmp_path: Path) -> None:
    (tmp_path / "two_banks.py").write_text(TWO_BANKS)
    spec = f"{tmp_path / 'two_banks.py'}:TwoBanks"
    torch.manual_seed(0)
    model = load_factory(spec)()
    coefficients = {
        "2": [1, -2, 0.5],
        "4": [-0.5, 1, -0.25],
        "8": [1, 2],
        "10": [-1, 3],
        "12": [2, -1],
    }
    with torch.no_grad():
        for index, a in coefficients.items():
            model.features[int(index)].coefficients.copy_(torch.tensor(a).reshape(-1, 1, 1, 1, 1))
    model.eval()
    folded, plans, banks = _fold(model)
    assert set(plans) == {"bank_a", "features.8.bank"}
    assert [layer.name for layer in banks[0].layers] == ["features.2", "features.4"]
    _assert_same_outputs(model, folded)
    _assert_planned_count(model, folded, plans)
    assert isinstance(folded.features[8], TiedConv2d) and folded.features[8].stride == 2
    keys = set(folded.state_dict())
    assert {"ssc_folded_bank_a.weights", "ssc_folded_features_8_bank.templates"} <= keys
    assert "ssc_folded_features_8_bank.directions" in keys  # K=2 < C=3: templates are smaller

    program = json.loads(json.dumps(user_fold_program(plans, banks)))
    rebuilt = rebuild_folded_user_model(spec, program, folded.state_dict())
    assert not rebuilt.training
    _assert_same_outputs(model, rebuilt)
    assert set(rebuilt.state_dict()) == keys


def test_round_trip_and_refusals(user_file: Path) -> None:
    spec = f"{user_file}:ReadmeNet"
    model = _readme_net(user_file, [[1, 2, 3], [3, -1, 0.5], [2, 4, 6]])
    folded, plans, banks = _fold(model)
    program = user_fold_program(plans, banks)
    rebuilt = rebuild_folded_user_model(spec, program, folded.state_dict())
    _assert_same_outputs(model, rebuilt)
    path = user_file.parent / "folded.safetensors"
    save_folded_user_model(folded, path, spec, program, {"threshold": 0.999})
    loaded = load_folded_user_model(path, spec)
    _assert_same_outputs(model, loaded)
    bare = path.with_name("bare.safetensors")
    save_file({k: v.contiguous() for k, v in folded.state_dict().items()}, str(bare))
    with pytest.raises(CheckpointError, match="not a folded user network"):
        load_folded_user_model(bare, spec)
    with pytest.raises(ArchitectureError, match="missing"):
        rebuild_folded_user_model(spec, program, model.state_dict())
    with pytest.raises(InputError, match="not an ssc user-fold program"):
        rebuild_folded_user_model(spec, {"banks": []}, folded.state_dict())
    # SWRN-style plans (scales absorbed into BatchNorm) would silently change a user network.
    (result,), _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=0.999))
    plan = plan_bank(result.bank, result.clusters, state_dict=None)
    first = dataclasses.replace(plan.layers[0], absorb=Absorb.BN_STATS)
    absorbing = dataclasses.replace(plan, layers=(first, *plan.layers[1:]))
    with pytest.raises(InputError, match="state_dict=None"):
        fold_user_model(model, {"bank": absorbing}, banks)


def _forge_program(folded_path: Path, out: Path, edit) -> Path:
    """A copy of a folded user file with its stored program edited by ``edit(program)``."""
    from safetensors import safe_open

    with safe_open(str(folded_path), framework="pt") as reader:
        metadata = dict(reader.metadata())
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
    program = json.loads(metadata["program"])
    edit(program)
    save_file(tensors, str(out), {**metadata, "program": json.dumps(program)})
    return out


def _set(path: tuple, value):
    def edit(program):
        target = program
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return edit


FORGED_PROGRAMS = {
    # cluster counts that would allocate gigabytes, or do not match what the file stores
    "clusters_huge": (_set(("banks", 0, "clusters"), [[0]] * 100_000), "MAX_CLUSTERS"),
    "clusters_more_than_stored": (_set(("banks", 0, "clusters"), [[0]] * 50), "declares 50"),
    "cluster_negative": (_set(("banks", 0, "layers", 0, "cluster"), -1), "is not one of"),
    "cluster_out_of_range": (_set(("banks", 0, "layers", 0, "cluster"), 7), "is not one of"),
    "cluster_float": (_set(("banks", 0, "layers", 0, "cluster"), 0.0), "is not one of"),
    "scale_nan": (_set(("banks", 0, "layers", 0, "scale"), float("nan")), "finite"),
    "scale_string": (_set(("banks", 0, "layers", 0, "scale"), "1e308"), "finite"),
    "layers_huge": (_set(("banks", 0, "layers"), [{}] * 3000), "MAX_LAYERS_PER_BANK"),
    "banks_huge": (_set(("banks",), [{}] * 1001), "MAX_BANKS"),
    "banks_not_list": (_set(("banks",), {"a": 1}), "malformed user-fold program"),
    "module_elsewhere": (_set(("banks", 0, "module"), "conv1"), "is not"),
    "name_not_text": (_set(("banks", 0, "layers", 0, "name"), ["conv2"]), "not a string"),
    "storage_unknown": (_set(("banks", 0, "storage"), ["weights"]), "malformed"),
}


@pytest.mark.parametrize("case", sorted(FORGED_PROGRAMS))
def test_forged_user_fold_programs_are_refused(ssc, user_file: Path, case: str) -> None:
    """Every count, index and scale of a stored program is checked before anything is built."""
    model = _readme_net(user_file, [[1, 2, 3], [2, 4, 6], [3, -1, 0.5]])
    ckpt = user_file.parent / "net.pt"
    torch.save(model.state_dict(), ckpt)
    spec = f"{user_file}:ReadmeNet"
    folded = user_file.parent / "folded.safetensors"
    # the older ssc-user-fold (v1) format, which `ssc fold --model` no longer writes but ssc
    # still loads (tests/test_traced_fold.py forges the traced format)
    network, plans, banks = _fold(model)
    save_folded_user_model(network, folded, spec, user_fold_program(plans, banks))
    edit, expected = FORGED_PROGRAMS[case]
    forged = _forge_program(folded, user_file.parent / "forged.safetensors", edit)
    for args in (("analyze", str(forged)), ("eval", str(forged), "--model", spec,
                                              "--data", "digits?limit=10")):  # fmt: skip
        run = ssc(*args)
        assert run.code == 2, (args, run.code, run.err)
        assert run.err.startswith("Error: ") and run.err.strip().count("\n") == 0, run.err
        assert expected in run.err, (args, run.err)
    with pytest.raises(CheckpointError, match=expected.split()[0]):
        load_folded_user_model(forged, spec)
