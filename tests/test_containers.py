"""Checkpoints wrapped the way training scripts write them, and ``--key`` to choose (issue 13).

Every file is made here: the digits sample's weights under each wrapper key next to optimizer
state and an epoch, nested wrappers, a trained copy next to an EMA copy, state dicts under keys
ssc does not guess, and keys that are hostile text (they are file data: shown escaped, exact in
``--json``).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from soft_share_cli.checkpoints.containers import MAX_WRAPPER_DEPTH, WRAPPER_KEYS
from soft_share_cli.checkpoints.load import load_checkpoint
from soft_share_cli.errors import CheckpointError
from soft_share_cli.render import tables as render
from soft_share_cli.render.text import inert

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_checkpoints" / "swrn28-1-4_digits.pt"
AUTHORS = ROOT / "sample_checkpoints" / "authors_legacy_swrn28-1-4_digits.pth.tar"
FORMATS = [{}, {"_use_new_zipfile_serialization": False}]  # zip, legacy
# Escapes, an OSC 8 link, rich markup, bidi controls, a C1 CSI, a line break; no "." (--key
# splits on it).
EVIL = (
    "k\x1b]0;pwned\x07\x1b]8;;http:evil\x1b\\L\x1b]8;;\x1b\\[link=http:x]c[/link]\u202eA\x9b1m\n[/]"
)
SHOWN = inert(EVIL)


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """The digits sample's state dict (an architecture ssc infers from its tensors)."""
    return torch.load(SAMPLE, weights_only=True)["state_dict"]


def optimizer_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What ``optimizer.state_dict()`` holds: int-keyed state, param groups."""
    return {
        "state": {0: {"momentum_buffer": torch.zeros(3)}},
        "param_groups": [{"lr": 0.1, "params": list(range(len(state)))}],
    }


def zeroed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its classifier zeroed (the rest shared): the same architecture."""
    return {k: torch.zeros_like(v) if k.startswith("classifier.") else v for k, v in state.items()}


def unsafe(text: str) -> list[str]:
    """Characters of ``text`` a terminal acts on (newlines aside), checked independently."""
    return [
        f"U+{ord(c):04X}"
        for c in text
        if c != "\n"
        and (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or unicodedata.category(c) in "CfCs")
    ]


def one_error_line(run: Any, code: int = 2) -> str:
    assert run.code == code, (run.code, run.err[:500])
    assert run.err.startswith("Error: ") and run.err.count("\n") == 1, run.err[:500]
    assert not unsafe(run.out + run.err), run.err
    return run.err


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consoles wide enough that no escaped name is wrapped, so it can be found whole."""
    monkeypatch.setattr(render, "out", render.InertConsole(width=5000))
    monkeypatch.setattr(render, "err", render.InertConsole(stderr=True, width=5000))


def save(tmp_path: Path, obj: Any, name: str = "c.pt", **save_kwargs: Any) -> Path:
    path = tmp_path / name
    torch.save(obj, path, **save_kwargs)
    return path


def both_readers(path: Path, **kwargs: Any) -> list[Any]:
    """The checkpoint as torch's loader and as the torch-free reader give it."""
    return [load_checkpoint(path, **kwargs), load_checkpoint(path, arrays=True, **kwargs)]


# --- the library ----------------------------------------------------------------------------------


@pytest.mark.parametrize("save_kwargs", FORMATS)
@pytest.mark.parametrize("key", WRAPPER_KEYS)
def test_each_wrapper_next_to_training_state(
    tmp_path: Path, weights: dict[str, torch.Tensor], key: str, save_kwargs: dict[str, Any]
) -> None:
    obj = {
        key: weights,
        "optimizer_state_dict": optimizer_state(weights),
        "epoch": 12,
        "best_acc": 0.9,
    }
    for loaded in both_readers(save(tmp_path, obj, **save_kwargs)):
        assert loaded.container == f"wrapped:{key}" and loaded.other_state_dicts == ()
        assert sorted(loaded.extras) == ["best_acc", "epoch", "optimizer_state_dict"]
        assert list(loaded.state_dict) == list(weights)


def test_the_issue_s_container_and_a_prefix(tmp_path: Path, weights: dict[str, Any]) -> None:
    """``{'net_state_dict': ..., 'optimizer_state_dict': ...}``, saved from DataParallel."""
    wrapped = {"module." + k: v for k, v in weights.items()}
    path = save(tmp_path, {"net_state_dict": wrapped, "optimizer_state_dict": {}})
    for loaded in both_readers(path):
        assert (loaded.container, loaded.stripped_prefix) == ("wrapped:net_state_dict", "module.")
        assert list(loaded.state_dict) == list(weights)


@pytest.mark.parametrize("save_kwargs", FORMATS)
def test_nested_wrappers(tmp_path: Path, save_kwargs: dict[str, Any]) -> None:
    state = {"w": torch.ones(2), "b": torch.zeros(1)}
    cases = [
        ({"model": {"state_dict": state}, "epoch": 1}, "model.state_dict"),
        ({"checkpoint": 1, "net": {"model": {"params": state}}}, "net.model.params"),
        ({"model": {"optimizer": {}, "weights": state}}, "model.weights"),
    ]
    for obj, key in cases:
        for loaded in both_readers(save(tmp_path, obj, **save_kwargs)):
            assert loaded.container == f"wrapped:{key}"
            assert list(loaded.extras) == [k for k in obj if k != key.partition(".")[0]]
            assert list(loaded.state_dict) == ["w", "b"]
    too_deep: Any = state
    for _ in range(MAX_WRAPPER_DEPTH + 1):
        too_deep = {"model": too_deep}
    path = save(tmp_path, too_deep, **save_kwargs)
    with pytest.raises(CheckpointError, match="no tensor state dict found.*nested up to 3 deep"):
        load_checkpoint(path)
    key = ".".join(["model"] * (MAX_WRAPPER_DEPTH + 1))
    assert load_checkpoint(path, key=key).container == f"wrapped:{key}"  # named: any depth


def test_several_candidates_follow_the_documented_order(tmp_path: Path) -> None:
    a, b, c = ({"w": torch.full((1,), float(i))} for i in range(3))
    cases = [
        ({"ema": a, "model": b}, "model", ("ema",)),  # the trained weights before the EMA
        ({"model_ema": a, "state_dict_ema": b, "net": c}, "net", ("model_ema", "state_dict_ema")),
        (
            {"ema": {"state_dict": a}, "model": {"state_dict": b}},
            "model.state_dict",
            ("ema.state_dict",),
        ),
        ({"net": a, "model": {"state_dict": b}}, "model.state_dict", ("net",)),
        ({"teacher": a, "params": b}, "params", ("teacher",)),
        ({"model": a, "state_dict": a}, "state_dict", ()),  # one object under two keys
    ]
    for obj, used, others in cases:
        for loaded in both_readers(save(tmp_path, obj)):
            assert (loaded.container, loaded.other_state_dicts) == (f"wrapped:{used}", others)


def test_state_dicts_under_other_keys_are_named_not_guessed(tmp_path: Path) -> None:
    path = save(
        tmp_path, {"teacher": {"w": torch.ones(1)}, "extra": {"student": {"w": torch.ones(1)}}}
    )
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).endswith(
        "top-level keys: 'teacher', 'extra'. state dicts found under 'teacher', 'extra.student': "
        "choose one with --key NAME"
    )
    loaded = load_checkpoint(path, key="extra.student")
    assert (loaded.container, loaded.other_state_dicts) == ("wrapped:extra.student", ("teacher",))
    assert list(loaded.extras) == ["teacher"]


def test_key_chooses(tmp_path: Path) -> None:
    a, b = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    path = save(tmp_path, {"model": a, "ema": b, "dotted.name": {"x": {"w": torch.ones(2)}}})
    for loaded in both_readers(path, key="ema"):
        assert loaded.container == "wrapped:ema" and float(loaded.state_dict["w"][0]) == 1.0
        assert loaded.other_state_dicts == ("model", "dotted.name.x")
        assert sorted(loaded.extras) == ["dotted.name", "model"]
    assert load_checkpoint(path, key="dotted.name.x").container == "wrapped:dotted.name.x"


def test_key_state_dict_keeps_our_header_and_the_authors(tmp_path: Path) -> None:
    ours = load_checkpoint(SAMPLE, key="state_dict")
    assert (ours.container, ours.arch) == ("ssc", load_checkpoint(SAMPLE).arch)
    assert load_checkpoint(AUTHORS, key="state_dict").container == "authors-training"
    with pytest.raises(CheckpointError, match="--key 'metadata' holds a dict whose entry"):
        load_checkpoint(SAMPLE, key="metadata")


ONE = {"w": torch.ones(1)}
MANY = {f"k{i}": i for i in range(12)}


@pytest.mark.parametrize(
    ("obj", "key", "message"),
    [
        ({"model": ONE}, "ema", "--key 'ema': no entry 'ema' at the top level; its keys: 'model'"),
        ({"model": ONE}, "model.x", "--key 'model.x': no entry 'x' under 'model'; its keys: 'w'"),
        ({"model": ONE, "epoch": 3}, "epoch", "'epoch' holds an int, not a dict of tensors"),
        ({"epoch": 3}, "epoch.x", "--key 'epoch.x': 'epoch' holds an int, not a dict"),
        ({"model": ONE}, "model.w", "--key 'model.w' holds a tensor, not a dict of tensors"),
        ({"model": {}}, "model", "--key 'model' holds an empty dict, not a dict of tensors"),
        ({"model": [1]}, "model", "--key 'model' holds a list, not a dict of tensors"),
        ({"model": {**ONE, "n": 2}}, "model", "a dict whose entry 'n' is an int, not a tensor"),
        ({"model": {3: torch.ones(1)}}, "model", "holds a dict with the key 3, not a string"),
        (MANY, "x", "its keys: 'k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7', 'k8', 'k9', ..."),
    ],
)
@pytest.mark.parametrize("save_kwargs", FORMATS)
def test_key_errors(
    tmp_path: Path, save_kwargs: dict[str, Any], obj: Any, key: str, message: str
) -> None:
    path = save(tmp_path, obj, **save_kwargs)
    for arrays in (False, True):
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path, arrays=arrays, key=key)
        text = str(caught.value)
        assert text.startswith(f"{path}: ") and "\n" not in text
        assert text.endswith(message), text


def test_key_on_a_safetensors_file(tmp_path: Path) -> None:
    save_file({"w": torch.ones(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="holds its tensors at the top level, under no key"):
        load_checkpoint(tmp_path / "w.safetensors", key="model")


# --- the commands ---------------------------------------------------------------------------------


def test_info_reports_the_wrapper_and_the_others(ssc, tmp_path: Path, weights: Any) -> None:
    path = save(tmp_path, {"model": weights, "ema": zeroed(weights), "optimizer": {}, "epoch": 4})
    data = ssc("info", str(path), "--json")
    assert data.code == 0 and data.err == "", data.err
    info = data.json()
    assert (info["container"], info["other_state_dicts"]) == ("wrapped:model", ["ema"])
    assert info["architecture_name"] and info["architecture_error"] is None
    text = ssc("info", str(path))
    assert text.code == 0, text.err
    assert "wrapped:model" in text.out
    assert "also holds state dicts under 'ema': --key NAME uses one of them" in text.out

    chosen = ssc("info", str(path), "--key", "ema", "--json").json()
    assert (chosen["container"], chosen["other_state_dicts"]) == ("wrapped:ema", ["model"])
    plain = ssc("info", str(SAMPLE), "--json").json()
    assert plain["other_state_dicts"] == []
    assert info["unique_parameters"] == plain["unique_parameters"]  # storages still shared
    assert "also holds" not in ssc("info", str(SAMPLE)).out


def test_eval_key_chooses_the_network(ssc, tmp_path: Path, weights: Any) -> None:
    path = save(tmp_path, {"net_state_dict": weights, "ema_state_dict": zeroed(weights)})
    reference = ssc("eval", str(SAMPLE), "--data", "digits", "--json").json()["top1"]
    default = ssc("eval", str(path), "--data", "digits", "--json")
    assert default.code == 0, default.err
    assert default.json()["top1"] == reference  # net_state_dict: the trained weights
    ema = ssc("eval", str(path), "--data", "digits", "--key", "ema_state_dict", "--json")
    assert ema.code == 0, ema.err
    assert ema.json()["top1"] < reference / 2  # the zeroed classifier: chance


def test_command_key_errors(ssc, tmp_path: Path, weights: Any) -> None:
    path = save(tmp_path, {"model": weights, "epoch": 3})
    for command in (("info",), ("eval", "--data", "digits")):
        err = one_error_line(ssc(*command[:1], str(path), *command[1:], "--key", "ema"))
        assert err.rstrip().endswith(
            "--key 'ema': no entry 'ema' at the top level; its keys: 'model', 'epoch'"
        )
        err = one_error_line(ssc(*command[:1], str(path), *command[1:], "--key", "epoch"))
        assert err.rstrip().endswith("--key 'epoch' holds an int, not a dict of tensors")
        run = ssc(*command[:1], str(path), *command[1:], "--key", "")
        assert run.code == 2 and "an empty key names no entry" in run.err
    save_file({"w": torch.ones(1)}, str(tmp_path / "w.safetensors"))
    one_error_line(ssc("info", str(tmp_path / "w.safetensors"), "--key", "model"))
    assert "--key NAME" in ssc("info", "--help").out and "--key NAME" in ssc("eval", "--help").out


def test_hostile_keys_are_shown_escaped(ssc, tmp_path: Path) -> None:
    state = {"w": torch.ones(1)}
    path = save(tmp_path, {"model": state, EVIL: {"w": torch.zeros(1)}})
    run = ssc("info", str(path))
    assert run.code == 0 and not unsafe(run.out + run.err), run.out
    assert repr(EVIL)[1:-1] in run.out and "[link=http:x]" in run.out  # quoted, literal
    data = ssc("info", str(path), "--json")
    assert data.out.isascii() and data.json()["other_state_dicts"] == [EVIL]

    chosen = ssc("info", str(path), "--key", EVIL)
    assert chosen.code == 0 and not unsafe(chosen.out), chosen.err
    assert f"wrapped:{SHOWN}" in chosen.out
    assert ssc("info", str(path), "--key", EVIL, "--json").json()["container"] == f"wrapped:{EVIL}"

    err = one_error_line(ssc("info", str(path), "--key", f"{EVIL}x"))
    assert "\\x1b]0;pwned\\x07" in err and "[link=http:x]" in err  # the key given and the keys
    nothing = save(tmp_path, {EVIL: 1, "teacher": {EVIL: torch.ones(1)}}, "n.pt")
    err = one_error_line(ssc("info", str(nothing)))
    assert "\\x1b]0;pwned\\x07" in err and "state dicts found under 'teacher'" in err
    err = one_error_line(ssc("eval", str(nothing), "--data", "digits", "--key", EVIL))
    assert "holds an int, not a dict of tensors" in err


def test_key_chooses_the_network_for_analyze_plot_and_fold(
    ssc, tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    """--key on the commands that analyse and fold: the chosen entry is what they read."""
    aligned = load_checkpoint(ROOT / "sample_checkpoints" / "swrn28-1-4_digits_align.pt")
    path = save(tmp_path, {"teacher": dict(aligned.state_dict), "student": weights})
    runs = {
        key: ssc("analyze", str(path), "--key", key, "--json").json()["params"]
        for key in ("teacher", "student")
    }
    assert runs["teacher"] != runs["student"]  # two different networks were read
    plain = ssc("analyze", str(SAMPLE), "--json").json()["params"]
    assert runs["student"] == plain
    plot = ssc("plot-similarity", str(path), "--key", "student", "-o", str(tmp_path / "s.png"))
    assert plot.code == 0 and (tmp_path / "s.png").stat().st_size > 0, plot.err
    out = tmp_path / "f.safetensors"
    fold = ssc("fold", str(path), "--key", "teacher", "-o", str(out), "--json")
    assert fold.code == 0, fold.err
    assert fold.json()["params"]["checkpoint_unique"] == runs["teacher"]["checkpoint_unique"]
    missing = ssc("fold", str(path), "--key", "nope", "-o", str(tmp_path / "g.safetensors"))
    assert missing.code == 2 and "nope" in missing.err and not (tmp_path / "g.safetensors").exists()
