"""``ssc analyze`` / ``ssc plot-similarity`` on the samples: known answers, schema, goldens."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from soft_share_cli.checkpoints.load import load_checkpoint
from soft_share_cli.models.builder import rebuild_model
from soft_share_cli.models.params import count_parameters
from soft_share_cli.models.wrn import WRN
from soft_share_cli.render.graph_files import load_graph

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
GOLDEN = Path(__file__).resolve().parent / "golden"
# The soft-shared samples (wrn28-1_digits.pt is the plain network `ssc share` starts from: it
# has no bank to analyse, and test_share_cli.py covers it).
ALL = sorted(
    p.name
    for p in SAMPLES.iterdir()
    if p.suffix in (".pt", ".tar") and p.name != "wrn28-1_digits.pt"
)


def _independent_lsm(state: dict, stage: int) -> np.ndarray:
    """The paper's formula, written out with plain loops over the stage's coefficient keys."""
    keys = [k for k in state if k.startswith(f"stage_{stage}.") and k.endswith("coefficients")]
    vectors = [state[k].double().flatten().numpy() for k in keys]
    n = len(vectors)
    lsm = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            a, b = vectors[i], vectors[j]
            lsm[i, j] = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return lsm


@pytest.mark.parametrize("name", ALL)
def test_analyze_matches_an_independent_computation(ssc, name: str) -> None:
    run = ssc("analyze", str(SAMPLES / name), "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert report["schema_version"] == 1
    assert report["threshold"] == 0.99 and report["metric"] == "coefficients"
    state = load_checkpoint(SAMPLES / name).state_dict
    assert [b["name"] for b in report["banks"]] == ["bank_1", "bank_2", "bank_3"]
    for stage, bank in enumerate(report["banks"], start=1):
        assert bank["templates"] == 4
        assert bank["template_shape"] == [16 * 2 ** (stage - 1)] * 2 + [3, 3]
        names = [layer["name"] for layer in bank["layers"]]
        assert names == [f"stage_{stage}.{b}.conv{c}" for b in (1, 2, 3) for c in (1, 2)]
        np.testing.assert_allclose(bank["lsm"], _independent_lsm(state, stage), atol=1e-9, rtol=0)
        # clusters partition the layers, and complete linkage keeps every pair >= threshold
        members = sorted(i for c in bank["clusters"] for i in c)
        assert members == list(range(6))
        for cluster in bank["clusters"]:
            for i in cluster:
                for j in cluster:
                    assert bank["lsm"][i][j] >= report["threshold"] - 1e-12
    model, _ = rebuild_model(load_checkpoint(SAMPLES / name))
    params = report["params"]
    assert params["checkpoint_unique"] == count_parameters(model)
    assert params["unshared_equivalent"] == count_parameters(WRN(28, 1, 10, in_channels=1))


def test_aligned_sample_has_one_loop_per_stage_that_the_matrix_shows(ssc) -> None:
    report = ssc("analyze", str(SAMPLES / "swrn28-1-4_digits_align.pt"), "--json").json()
    assert report["loops"] == [
        f"bank_{s}: stage_{s}: blocks 1-3 repeat one block (conv1 A, conv2 B) 3 times"
        for s in (1, 2, 3)
    ]
    for bank in report["banks"]:
        assert bank["clusters"] == [[0, 2, 4], [1, 3, 5]]
        lsm = np.array(bank["lsm"])
        # what the loop claims, read off the matrix: conv1s alike, conv2s alike, A unlike B
        assert lsm[np.ix_([0, 2, 4], [0, 2, 4])].min() > 0.99
        assert lsm[np.ix_([1, 3, 5], [1, 3, 5])].min() > 0.99
        assert lsm[np.ix_([0, 2, 4], [1, 3, 5])].max() < 0.5
        assert bank["distinct_weights"] == {"before": 6, "after": 2}
    p = report["params"]
    assert p["folded"] < p["checkpoint_unique"] < p["unshared_equivalent"]
    assert p["savings_vs_checkpoint_pct"] == pytest.approx(
        100 * (1 - p["folded"] / p["checkpoint_unique"]), abs=1e-3
    )


def test_unregularised_sample_has_no_loops_at_the_default_threshold(ssc) -> None:
    report = ssc("analyze", str(SAMPLES / "swrn28-1-4_digits.pt"), "--json").json()
    assert report["loops"] == []
    assert all(len(b["clusters"]) == 6 for b in report["banks"])
    # nothing to fold: the folded network stores what the checkpoint does
    assert report["params"]["folded"] == report["params"]["checkpoint_unique"]
    # a permissive threshold does merge layers
    loose = ssc("analyze", str(SAMPLES / "swrn28-1-4_digits.pt"), "--threshold", "0", "--json")
    assert all(len(b["clusters"]) == 1 for b in loose.json()["banks"])


def test_weight_metric_and_signed_option(ssc) -> None:
    path = str(SAMPLES / "swrn28-1-4_digits_align.pt")
    weight = ssc("analyze", path, "--metric", "weight", "--json").json()
    assert weight["metric"] == "weight"
    state = load_checkpoint(SAMPLES / "swrn28-1-4_digits_align.pt").state_dict
    t = state["bank_2.templates"].double().flatten(1)
    a = [
        state[f"stage_2.{b}.conv{c}.coefficients"].double().flatten()
        for b in (1, 2, 3)
        for c in (1, 2)
    ]
    w = torch.stack([(ai[:, None] * t).sum(0) for ai in a])
    w = w / w.norm(dim=1, keepdim=True)
    expected = (w @ w.T).abs().numpy()
    np.testing.assert_allclose(weight["banks"][1]["lsm"], expected, atol=1e-9, rtol=0)
    signed = ssc("analyze", path, "--signed", "--json").json()
    lsm = np.array(signed["banks"][1]["lsm"])
    assert lsm.min() < 0  # the sample's loops contain negative scales
    np.testing.assert_allclose(
        np.abs(lsm), np.array(ssc("analyze", path, "--json").json()["banks"][1]["lsm"]), atol=1e-12
    )


@pytest.mark.parametrize("suffix", [".graphml", ".gexf", ".json", ".dot"])
def test_graph_export_round_trips(ssc, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"graph{suffix}"
    run = ssc("analyze", str(SAMPLES / "swrn28-1-4_digits_align.pt"), "--graph", str(out))
    assert run.code == 0, run.err
    graph = load_graph(out)
    assert sorted(graph.nodes) == [f"bank_{s}:{x}" for s in (1, 2, 3) for x in "AB"]
    assert graph.edges["bank_1:A", "bank_1:B"]["count"] == 3
    assert graph.edges["bank_1:B", "bank_1:A"]["count"] == 2
    assert graph.edges["bank_1:B", "bank_2:A"]["count"] == 1


def test_bad_graph_extension_is_refused_before_any_work(ssc, tmp_path: Path) -> None:
    run = ssc("analyze", str(SAMPLES / "swrn28-1-4_digits.pt"), "--graph", str(tmp_path / "g.xyz"))
    assert run.code == 2 and "graph format" in run.err and not (tmp_path / "g.xyz").exists()


def test_json_is_deterministic(ssc) -> None:
    path = str(SAMPLES / "authors_legacy_swrn28-1-4_digits.pth.tar")
    assert ssc("analyze", path, "--json").out == ssc("analyze", path, "--json").out


def test_a_state_dict_without_banks_is_a_clear_error(ssc, tmp_path: Path) -> None:
    torch.save(WRN(10, 1).state_dict(), tmp_path / "plain.pt")
    run = ssc("analyze", str(tmp_path / "plain.pt"))
    assert run.code == 2 and "no template banks" in run.err


def test_readme_network_is_analysed_without_an_architecture(ssc, tmp_path: Path) -> None:
    from soft_share_cli.models.layers import SConv2d, TemplateBank

    torch.manual_seed(0)
    bank = TemplateBank(3, 10, 10, 3)
    net = torch.nn.Module()
    net.conv1 = torch.nn.Conv2d(1, 10, 3)
    net.bank = bank
    net.conv2, net.conv3, net.conv4 = SConv2d(bank), SConv2d(bank), SConv2d(bank)
    with torch.no_grad():
        net.conv2.coefficients.copy_(torch.tensor([1.0, 2, 3]).view(3, 1, 1, 1, 1))
        net.conv3.coefficients.copy_(torch.tensor([-2.0, -4, -6]).view(3, 1, 1, 1, 1))
        net.conv4.coefficients.copy_(torch.tensor([0.5, 1, 1.5]).view(3, 1, 1, 1, 1))
    net.head = torch.nn.Linear(10, 2)
    torch.save(net.state_dict(), tmp_path / "readme.pt")
    report = ssc("analyze", str(tmp_path / "readme.pt"), "--json").json()
    assert report["checkpoint"]["architecture"] is None
    (bank_report,) = report["banks"]
    assert [layer["name"] for layer in bank_report["layers"]] == ["conv2", "conv3", "conv4"]
    assert bank_report["clusters"] == [[0, 1, 2]]
    assert report["loops"] == ["bank: conv2-conv4 repeat one layer (A) 3 times"]
    d = 10 * 10 * 9
    p = report["params"]
    # unknown network: every layer keeps an explicit gain (3) next to its one weight (d)
    assert p["folded"] == p["checkpoint_unique"] - (3 * d + 3 * 3) + (d + 3)


def test_plot_similarity_writes_figures(ssc, tmp_path: Path) -> None:
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")):
        out = tmp_path / f"lsm{suffix}"
        graph = tmp_path / f"graph{suffix}"
        run = ssc(
            "plot-similarity",
            str(SAMPLES / "authors_swrn28-1-4_digits_align.pth.tar"),
            "-o",
            str(out),
            "--graph-plot",
            str(graph),
        )
        assert run.code == 0, run.err
        assert out.read_bytes().startswith(magic) and graph.read_bytes().startswith(magic)
    bad = ssc(
        "plot-similarity", str(SAMPLES / "swrn28-1-4_digits.pt"), "-o", str(tmp_path / "x.gif")
    )
    assert bad.code == 2 and not (tmp_path / "x.gif").exists()


def _close(a: Any, b: Any) -> bool:
    """Equal JSON values, floats within 1e-9 relative: the last digit of a float64 reduction
    depends on the CPU's SIMD kernel (seen across AMD EPYC machines), the figures do not."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
    return a == b


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SSC_UPDATE_GOLDEN"):
        path.write_text(text)
    message = f"rerun with SSC_UPDATE_GOLDEN=1 to accept changes to {name}"
    if name.endswith(".json"):
        assert _close(json.loads(text), json.loads(path.read_text())), message
    else:
        assert text == path.read_text(), message


def test_rendered_report_is_pinned(ssc, monkeypatch: pytest.MonkeyPatch) -> None:
    from soft_share_cli.render import tables as render

    monkeypatch.setattr(render.out, "width", 110)
    monkeypatch.chdir(SAMPLES.parent)  # relative paths: the goldens hold no machine's folders
    sample = "sample_checkpoints/authors_swrn28-1-4_digits_align.pth.tar"
    run = ssc("analyze", sample)
    assert run.code == 0
    _golden("analyze_authors_align.txt", run.out)
    _golden("analyze_authors_align.json", ssc("analyze", sample, "--json").out)
