"""The hostile and broken corpus (tests/corpus/make_corpus.py) through the real ``ssc`` CLI.

Every file is generated into a temporary directory at test time. Library-level checks of the
same behaviours live in test_checkpoint.py (scan, refusal messages, truncation, atomic writes),
test_banks.py (issues) and test_data.py (loaders); the cases here are what a user meets.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from corpus.make_corpus import SEMANTIC, Case, bad_data, broken, hostile, inert, semantic

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
ALIGNED = SAMPLES / "swrn28-1-4_digits_align.pt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("corpus")
    marker = root / "MARKER"
    return {
        "root": root,
        "marker": marker,
        "hostile": hostile(root / "hostile", marker),
        "broken": broken(root / "broken"),
        "semantic": semantic(root / "semantic"),
        "data": bad_data(root / "data"),
    }


def one_line_error(run: Any, code: int, says: str = "") -> str | None:
    """Why ``run`` is not exactly one ``Error:`` line with ``code`` and ``says``, or None."""
    if run.code != code:
        return f"exit {run.code}, wanted {code}: {run.err.strip()[:300]}"
    if not run.err.startswith("Error: ") or run.err.count("\n") != 1 or "Traceback" in run.err:
        return f"not one error line: {run.err[:300]!r}"
    if says.lower() not in run.err.lower():
        return f"{says!r} not in {run.err.strip()[:300]!r}"
    return None


def check_all(ssc: Any, cases: list[Case], code: int, *command: str) -> list[str]:
    failures = []
    for case in cases:
        problem = one_line_error(ssc(*command, str(case.path)), code, case.says)
        if problem:
            failures.append(f"{case.name}: {problem}")
    return failures


# --- hostile --------------------------------------------------------------------------------------


def test_every_hostile_file_is_refused_with_exit_3_and_nothing_runs(ssc, corpus) -> None:
    cases = corpus["hostile"]
    assert len(cases) >= 90
    failures = check_all(ssc, cases, 3, "info")
    assert not failures, "\n".join(failures)
    assert not corpus["marker"].exists()
    for case in cases:  # the message names what was refused and why
        assert "refusing to load" in ssc("info", str(case.path)).err


def test_the_payloads_are_live(corpus) -> None:
    """Loaded the unsafe way, the payloads marked live do run: the marker checks mean it."""
    marker: Path = corpus["marker"]
    ran = {}
    for case in corpus["hostile"]:
        marker.unlink(missing_ok=True)
        # What ssc never does. Whatever goes wrong afterwards, the payload ran (or not) first.
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            torch.load(case.path, weights_only=False)
        deadline = time.monotonic() + 5.0  # subprocess.Popen touches the marker in a child
        while case.live and not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        ran[case.name] = marker.exists()
    marker.unlink(missing_ok=True)
    wrong = {case.name for case in corpus["hostile"] if ran[case.name] != case.live}
    assert not wrong, wrong
    assert sum(ran.values()) >= 60


@pytest.mark.parametrize("name", ["route-getattr-chain-zip", "protocol-4-legacy"])
def test_every_command_refuses_and_writes_nothing(ssc, corpus, tmp_path: Path, name: str) -> None:
    path = str(next(c.path for c in corpus["hostile"] if c.name == name))
    out = tmp_path / "out"
    commands = [
        ("info", path),
        ("analyze", path, "--graph", f"{out}.json"),
        ("eval", path, "--data", "digits"),
        ("fold", path, "-o", f"{out}.safetensors", "--materialize", f"{out}.pt"),
        ("plot-similarity", path, "-o", f"{out}.png"),
    ]
    for command in commands:
        assert one_line_error(ssc(*command), 3, "refusing to load") is None, command
    assert list(tmp_path.iterdir()) == []
    assert not corpus["marker"].exists()


def test_classes_from_the_file_are_never_imported(ssc, corpus, monkeypatch) -> None:
    """A class from an importable module whose import, __setstate__ and __reduce__ all touch
    the marker: the checkpoint loads with an inert placeholder, and the module is never run."""
    path, directory = inert(corpus["root"] / "inert", corpus["marker"])
    monkeypatch.syspath_prepend(str(directory))
    run = ssc("info", str(path), "--json")
    assert run.code == 0, run.err
    assert run.json()["placeholders"] == ["ssc_corpus_evil.Recorder"]
    assert "ssc_corpus_evil" not in sys.modules
    assert not corpus["marker"].exists()


# --- broken ---------------------------------------------------------------------------------------


def test_every_broken_file_is_one_line_and_exit_2(ssc, corpus) -> None:
    cases = corpus["broken"]
    start = time.monotonic()
    failures = check_all(ssc, cases, 2, "info") + check_all(ssc, cases, 2, "analyze")
    assert not failures, "\n".join(failures)
    # Forged sizes are refused, not allocated: the memo bomb alone takes 20 s and 16 GiB when
    # it reaches CPython's C unpickler.
    assert time.monotonic() - start < 30


def test_unreadable_file_through_the_cli(ssc, tmp_path: Path, monkeypatch) -> None:
    # chmod 000 does not stop root (CI containers): simulate what the OS says to everyone else.
    path = tmp_path / "locked.pt"
    path.write_bytes(ALIGNED.read_bytes())
    real_open = Path.open

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    for command in ("info", "analyze"):
        assert one_line_error(ssc(command, str(path)), 2, "permission denied") is None


# --- semantically wrong checkpoints ---------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_analysis(corpus) -> dict[str, Any]:
    import json

    from soft_share_cli.pipeline.analyze import analyze_checkpoint

    clean = corpus["root"] / "clean.pt"
    torch.save(torch.load(ALIGNED, weights_only=True)["state_dict"], clean)
    return json.loads(json.dumps(analyze_checkpoint(clean).to_dict()))


@pytest.mark.parametrize("name", [n for n, spec in SEMANTIC.items() if spec[1] is not None])
def test_damaged_banks_are_reported_and_the_others_analysed(
    ssc, corpus, clean_analysis, name: str
) -> None:
    _, kind, key, damaged = SEMANTIC[name]
    path = str(corpus["semantic"][name])
    run = ssc("analyze", path, "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert [(i["kind"], i["key"]) for i in report["issues"]] == [(kind, key)]
    # Every other bank reads exactly as in the undamaged network.
    clean = {bank["name"]: bank for bank in clean_analysis["banks"]}
    others = {b["name"]: b for b in report["banks"] if b["name"] != damaged}
    assert len(others) == 2 and all(others[n] == clean[n] for n in others)
    bank = next(b for b in report["banks"] if b["name"] == damaged)
    left_out = kind in ("k-mismatch", "non-finite") and key.endswith("coefficients")
    layers = {"bank-without-layers": 0}.get(kind, 5 if left_out else 6)
    assert len(bank["layers"]) == layers
    # The human report says the same, one warning per issue, on stdout with the tables.
    human = ssc("analyze", path)
    assert human.code == 0 and human.err == ""
    assert human.out.count("warning") == 1 and key.rsplit(".", 1)[0].split(".")[0] in human.out


def test_damaged_banks_still_plot_and_graph(ssc, corpus, tmp_path: Path) -> None:
    path = str(corpus["semantic"]["bank-without-layers"])  # an empty panel, a graph without it
    heatmap, graph = tmp_path / "lsm.png", tmp_path / "graph.dot"
    assert ssc("plot-similarity", path, "-o", str(heatmap)).code == 0
    assert ssc("analyze", path, "--graph", str(graph)).code == 0
    assert heatmap.stat().st_size > 0 and "bank_3" not in graph.read_text()


NOT_FINITE = "nan or infinite values (stage_2.2.conv1.coefficients)"


@pytest.mark.parametrize(
    ("name", "eval_says", "fold_says"),
    [
        ("k-mismatch", "conv1.coefficients (3, 1, 1, 1, 1) vs (4, 1, 1, 1, 1)", None),
        ("nan-coefficient", NOT_FINITE, None),
        ("inf-coefficient", NOT_FINITE, None),
        ("nan-template", "nan or infinite values (bank_1.templates", None),
        ("bank-without-layers", "6 missing: stage_3.1.conv1.coefficients", None),
        ("shape-mismatch", "stage_2.1.bn1.weight (7,) vs (32,)", None),
        ("huge-coefficients", NOT_FINITE, None),  # 1.7e308 is infinite in float32
        ("tiny-coefficients", "", "non-finite outputs on the probe"),  # 1e-320 is 0 in float32
        ("zero-coefficients", "", ""),  # a zero weight is a valid (if odd) network
    ],
)
def test_eval_and_fold_refuse_what_cannot_run(
    ssc, corpus, tmp_path: Path, name: str, eval_says: str, fold_says: str | None
) -> None:
    """Exit 2 and one line where the network cannot run; "" means it runs (exit 0)."""
    path = str(corpus["semantic"][name])
    run = ssc("eval", path, "--data", "digits?limit=40", "--json")
    if eval_says:
        assert one_line_error(run, 2, eval_says) is None, run.err
    else:
        assert run.code == 0 and run.err == "", run.err
        run.json()
    fold_says = eval_says if fold_says is None else fold_says
    out = tmp_path / "f.safetensors"
    run = ssc("fold", path, "-o", str(out), "--json")
    if fold_says:
        assert one_line_error(run, 2, fold_says) is None, run.err
        assert not out.exists()
    else:
        assert run.code == 0 and out.exists(), run.err


@pytest.mark.parametrize("name", ["huge-coefficients", "tiny-coefficients"])
def test_extreme_coefficients_are_still_analysed(ssc, corpus, name: str) -> None:
    for metric in ("coefficients", "weight"):
        run = ssc("analyze", str(corpus["semantic"][name]), "--metric", metric, "--json")
        assert run.code == 0 and run.err == "", run.err  # no numpy warnings either
        bank = next(b for b in run.json()["banks"] if b["name"] == "bank_2")
        layer = next(x for x in bank["layers"] if x["name"] == "stage_2.2.conv1")
        # A norm beyond float64 cannot be written in JSON: null, not a crash.
        assert layer["norm"] is None if name == "huge-coefficients" else layer["norm"] > 0


def test_non_finite_metadata_is_null_in_json(ssc, tmp_path: Path) -> None:
    from soft_share_cli.checkpoints.load import save_checkpoint

    state = torch.load(ALIGNED, weights_only=True)
    path = tmp_path / "odd.pt"
    metadata = {**state["metadata"], "test_top1": float("nan"), "history": [float("inf")]}
    save_checkpoint(path, arch=state["arch"], arch_kwargs=state["arch_kwargs"],
                    state_dict=state["state_dict"], metadata=metadata)  # fmt: skip
    run = ssc("info", str(path), "--json")
    assert run.code == 0, run.err
    assert run.json()["metadata"]["test_top1"] is None
    assert run.json()["metadata"]["history"] == [None]
    assert ssc("info", str(path)).code == 0


def test_weight_metric_on_non_finite_templates_says_what_to_do(ssc, corpus) -> None:
    path = str(corpus["semantic"]["nan-template"])
    assert (
        one_line_error(ssc("analyze", path, "--metric", "weight"), 2, "coefficients metric") is None
    )


def test_user_network_with_non_finite_coefficients_is_not_folded(
    ssc, tmp_path: Path, monkeypatch
) -> None:
    """--model networks skip the architecture check: the fold itself must refuse."""
    from soft_share_cli.models.layers import SConv2d, TemplateBank

    (tmp_path / "tiny_user_net.py").write_text(
        "from torch import nn\n"
        "from soft_share_cli.models.layers import SConv2d, TemplateBank\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.bank = TemplateBank(2, 1, 1, 3)\n"
        "        self.a, self.b = SConv2d(self.bank), SConv2d(self.bank)\n"
        "    def forward(self, x):\n"
        "        return self.b(self.a(x)).mean((2, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    bank = TemplateBank(2, 1, 1, 3)
    net = torch.nn.ModuleDict({"bank": bank, "a": SConv2d(bank), "b": SConv2d(bank)})
    with torch.no_grad():
        net["a"].coefficients.fill_(1.0)
        net["b"].coefficients.fill_(float("nan"))
    torch.save(net.state_dict(), tmp_path / "user.pt")
    out = tmp_path / "f.safetensors"
    run = ssc("fold", str(tmp_path / "user.pt"), "-o", str(out), "--model", "tiny_user_net:Net")
    assert one_line_error(run, 2, "cannot fold: b has nan or infinite coefficients") is None
    assert not out.exists()


# --- bad data -------------------------------------------------------------------------------------


def test_every_bad_data_set_is_one_line_and_exit_2(ssc, corpus) -> None:
    failures = []
    for name, spec, says in corpus["data"]:
        problem = one_line_error(ssc("eval", str(ALIGNED), "--data", spec), 2, says)
        if problem:
            failures.append(f"{name}: {problem}")
    assert not failures, "\n".join(failures)
    assert len(corpus["data"]) >= 25


@pytest.mark.parametrize("name", ["npz-negative-labels", "folder-text-file", "npz-nan-images"])
def test_train_and_fold_refuse_bad_data_before_writing(
    ssc, corpus, tmp_path: Path, name: str
) -> None:
    spec, says = next((s, m) for n, s, m in corpus["data"] if n == name)
    out = tmp_path / "out.pt"
    run = ssc("train", "--data", spec, "--depth", "16", "--epochs", "1", "-o", str(out))
    assert one_line_error(run, 2, says) is None and run.out == ""
    run = ssc("fold", str(ALIGNED), "-o", str(tmp_path / "f.safetensors"), "--data", spec)
    assert one_line_error(run, 2, says) is None
    assert list(tmp_path.iterdir()) == []
