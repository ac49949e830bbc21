"""The bundled samples of every sharing kind (``sample_checkpoints/sharing/``) are what
``scripts/make_sharing_samples.py`` makes: rebuilt here, planted as it says (checked on the files,
exactly), and as accurate as its README table says when ``ssc eval --model`` measures them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
SHARING = ROOT / "sample_checkpoints" / "sharing"
EXAMPLES = ROOT / "examples" / "sharing.py"


def _module(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


script = _module("make_sharing_samples", ROOT / "scripts" / "make_sharing_samples.py")
SAMPLES = {s.name: s for s in script.SAMPLES}


def _loaded(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    state = torch.load(SHARING / f"{name}.pt", map_location="cpu", weights_only=True)
    model = script.sharing.FACTORIES[name]()
    model.load_state_dict(state)
    return model.eval(), state


def _row(name: str) -> list[str]:
    """The cells of ``sharing/<name>.pt``'s row in sample_checkpoints/README.md."""
    text = (ROOT / "sample_checkpoints" / "README.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith(f"| `sharing/{name}.pt` |")]
    assert len(rows) == 1, f"sample_checkpoints/README.md lists sharing/{name}.pt {len(rows)} times"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_every_factory_has_its_sample() -> None:
    assert set(SAMPLES) == set(script.sharing.FACTORIES) == {
        "soft", "tied", "basis", "basis_bn", "store"
    }  # fmt: skip
    for name in SAMPLES:
        assert (SHARING / f"{name}.pt").stat().st_size < 50_000  # a few tens of kB


def test_a_sample_is_what_the_script_makes() -> None:
    """The store network (two planted groups, K differing by layer) rebuilt from its seed: the
    same tensors as the committed file (bit for bit on one machine; a CPU with other kernels may
    round differently, hence the tolerance) and the test accuracy the README lists."""
    rebuilt, top1 = script.build(SAMPLES["store"])
    _, saved = _loaded("store")
    state = rebuilt.state_dict()
    assert state.keys() == saved.keys()
    for key, tensor in state.items():
        torch.testing.assert_close(tensor, saved[key], rtol=1e-4, atol=1e-5, msg=key)
    assert _row("store")[4] == f"{top1:.2f} %"


def _weights(name: str, model: nn.Module) -> list[torch.Tensor]:
    """Every shared layer's weight, recomputed here from the stored tensors (forward order)."""
    sharing = script.sharing
    with torch.no_grad():
        if name == "soft":
            return [
                torch.einsum("k,koihw->oihw", b.conv.alpha.reshape(-1), model.w_bank)
                for b in model.blocks
            ]
        if name == "basis":
            return [torch.einsum("or,rihw->oihw", la.conv.m, model.basis) for la in model.layers]
        if name == "basis_bn":
            return [la.proj.weight.clone() for la in model.layers]
        d = sharing.WIDTH * sharing.WIDTH * 9
        return [
            sharing.windows(model.store, la.conv.coef, la.conv.start, la.conv.step, d)
            for la in model.layers
        ]


@pytest.mark.parametrize("name", ["soft", "basis", "basis_bn", "store"])
def test_planted_layers_are_exactly_parallel_and_no_others(name: str) -> None:
    """On the committed file: each planted coefficient is exactly its scale (a power of two) times
    its group's first, zero-padded; so are the layers' weights; no other layer is near-parallel
    to any (so the planted groups are the one right answer of an analysis)."""
    model, _ = _loaded(name)
    mixing = [p.detach().reshape(-1) for p in model.mixing()]
    weights = [w.reshape(-1) for w in _weights(name, model)]
    groups = SAMPLES[name].planted
    assert groups
    for group in groups:
        first = mixing[group[0]]
        for n, member in enumerate(group[1:]):
            expected = torch.zeros_like(mixing[member])
            expected[: first.numel()] = script.SCALES[n] * first
            assert torch.equal(mixing[member], expected), (name, member)
            torch.testing.assert_close(weights[member], script.SCALES[n] * weights[group[0]])
    same = {(i, j) for g in groups for i in g for j in g}
    for i in range(len(weights)):
        for j in range(len(weights)):
            cos = abs(float(torch.nn.functional.cosine_similarity(weights[i], weights[j], dim=0)))
            if (i, j) in same or i == j:
                assert cos > 1 - 1e-6, (name, i, j)
            else:
                assert cos < 0.99, (name, i, j, cos)


def test_the_tied_sample_keeps_its_ties() -> None:
    """torch.save kept the storage sharing: blocks 0-2 use one tensor, blocks 3-4 another."""
    _, state = _loaded("tied")
    ptr = {i: state[f"blocks.{i}.conv.weight"].untyped_storage().data_ptr() for i in range(5)}
    assert ptr[0] == ptr[1] == ptr[2] != ptr[3] == ptr[4]
    model, _ = _loaded("tied")
    assert model.blocks[0].conv is model.blocks[2].conv is not model.blocks[3].conv


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_ssc_measures_what_the_readme_lists(ssc, name: str) -> None:
    """``ssc eval --model --data digits`` (ssc's own preprocessing) gives the accuracy the script
    measured with its own; ``ssc info`` counts the parameters listed (unique, by storage)."""
    path = str(SHARING / f"{name}.pt")
    run = ssc("eval", path, "--model", f"{EXAMPLES}:{name}", "--data", "digits", "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert report["samples"] == 360
    row = _row(name)
    assert row[4] == f"{report['top1']:.2f} %"
    assert report["top1"] > 95.0  # trained, not a random network
    info = ssc("info", path, "--json")
    assert info.code == 0, info.err
    model, _ = _loaded(name)
    unique = sum(p.numel() for p in model.parameters())  # a shared Parameter once
    assert info.json()["unique_parameters"] == unique
    assert row[5] == f"{unique:,}"
