"""Names from a file are data: never terminal commands, never markup (issue 11, section 2).

Every file is generated here, at test time: state dicts whose keys hold escape sequences, OSC 8
links, bidi overrides, C1 controls and rich markup (zip, legacy and safetensors), an ssc
checkpoint whose metadata holds them, pickles naming such a global, image folders whose class
folders are so named, a forged train state and a forged folded header. Each command that reads
them must print no control character (other than newlines) and no bidi control, show the name
escaped (so the test proves it was shown) with its markup literal, and keep the exact strings
in ``--json``.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import subprocess
import sys
import unicodedata
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from rich.table import Table
from safetensors.torch import save_file

from soft_share_cli.render import tables as render
from soft_share_cli.render.text import BIDI_CONTROLS, inert, inert_lines, one_line

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_checkpoints" / "swrn28-1-4_digits.pt"

# Window title, clear screen, an OSC 8 hyperlink, rich markup (a link, a style, a bare close tag
# that crashes rich's parser), bidi override / isolate / mark / Arabic mark, a C1 CSI, DEL, NUL,
# an emoji code, a line break and a tab. No "." (keys split on it) and no "/" (paths).
EVIL = (
    "x\x1b]0;pwned\x07\x1b[2J\x1b]8;;http:evil\x1b\\L\x1b]8;;\x1b\\"
    "[link=http:x]click[/link][bold red]B\u202eA\u2066\u200f\u061c\x9b31m\x7f\x00:smile:\n\tz[/]"
)
SHOWN = inert(EVIL)  # what the user must see: the same name, escaped
MARKUP = ("[link=http:x]", "[bold red]", "[/]", ":smile:")  # must appear as written
FOLDER_NAME = EVIL.replace("\x00", "").replace("/", "|")  # a file name holds no NUL, no "/"


def unsafe_characters(text: str) -> list[str]:
    """The characters of ``text`` that a terminal acts on (independent of render.text)."""
    bad = []
    for char in text:
        code = ord(char)
        if char == "\n":
            continue
        if (
            code < 0x20
            or 0x7F <= code <= 0x9F
            or char in BIDI_CONTROLS
            or char in "\u061c\u200e\u200f\u2028\u2029"
            or 0x202A <= code <= 0x202E
            or 0x2066 <= code <= 0x2069
            or unicodedata.category(char) in ("Cf", "Cs")
        ):
            bad.append(f"U+{code:04X}")
    return bad


def assert_inert(*texts: str) -> None:
    for text in texts:
        bad = unsafe_characters(text)
        assert not bad, f"raw control characters {sorted(set(bad))} in {text[:400]!r}"


def assert_shown(text: str, shown: str = SHOWN) -> None:
    """``shown`` (an escaped name) is in ``text``, with its markup printed literally."""
    assert shown in text, f"{shown!r} not in {text[:2000]!r}"
    for literal in MARKUP:
        if literal in EVIL and literal in shown:
            assert literal in text


def strings(value: Any) -> set[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set(value) | {s for item in value.values() for s in strings(item)}
    if isinstance(value, list):
        return {s for item in value for s in strings(item)}
    return set()


def one_error_line(run: Any, code: int) -> None:
    assert run.code == code, (run.code, run.err[:500])
    assert run.err.startswith("Error: ") and run.err.count("\n") == 1, run.err[:500]
    assert_inert(run.out, run.err)


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consoles wide enough that no escaped name is wrapped or cut, so it can be found whole."""
    monkeypatch.setattr(render, "out", render.InertConsole(width=5000))
    monkeypatch.setattr(render, "err", render.InertConsole(stderr=True, width=5000))


# --- the files ------------------------------------------------------------------------------------


def banked_state_dict(prefix: str = EVIL) -> dict[str, torch.Tensor]:
    """One template bank used by four layers (one all-zero: an issue quoting its name)."""
    generator = torch.Generator().manual_seed(0)
    state = {f"{prefix}bank.templates": torch.randn(3, 4, 4, 3, 3, generator=generator)}
    for i in range(4):
        state[f"{prefix}conv{i}.coefficients"] = torch.randn(3, generator=generator)
    state[f"{prefix}conv3.coefficients"].zero_()
    state[f"{prefix}fc.weight"] = torch.randn(2, 4, generator=generator)
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inert")
    state = banked_state_dict()
    paths = {
        "zip": root / "keys.pt",
        "legacy": root / "keys_legacy.pt",
        "safetensors": root / "keys.safetensors",
    }
    torch.save(state, paths["zip"])
    torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)
    save_file(state, str(paths["safetensors"]), metadata={"format": EVIL, EVIL: EVIL})
    # A `$` key: matplotlib reads $...$ as TeX, a malformed one used to fail the plot (exit 4).
    torch.save(banked_state_dict("m$\\frac{a}{$^_"), root / "dollar.pt")
    paths["dollar"] = root / "dollar.pt"

    # An ssc checkpoint (the digits sample) whose metadata strings are hostile; its recorded
    # top-1 (a string) is shown by `ssc eval` on the data it names, a tiny image folder.
    paths["images"] = image_folder(root / "images", ["a", "b"], images=1)
    payload = torch.load(SAMPLE, weights_only=True)
    payload["metadata"].update(
        {
            "command": f"ssc {EVIL}",
            "epoch": EVIL,
            "test_top1": EVIL,
            "note": {EVIL: [EVIL]},
            "data": f"folder:{paths['images']}",
        }
    )
    paths["meta"] = root / "meta.pt"
    torch.save(payload, paths["meta"])
    return paths


def _unicode(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def refused_pickles(root: Path) -> dict[Path, str]:
    """Pickles calling a global whose name is hostile, and the name the refusal must show."""
    ascii_name = "system\x1b]0;pwned\x07[link=http:x]"  # GLOBAL names are ASCII lines
    name = "system\x1b]0;pwned\x07\u202e[link=http:x]"
    call = b"(" + _unicode("true") + b"tR"
    by_global = b"\x80\x02}" + _unicode("w") + f"cposix\n{ascii_name}\n".encode() + call + b"s."
    by_stack = (  # protocol 4 STACK_GLOBAL: both names are unicode strings
        b"\x80\x04}" + _unicode("w") + _unicode("os") + _unicode(name) + b"\x93" + call + b"s."
    )
    cases = {}
    legacy = root / "global_legacy.pt"  # magic, protocol, sys_info, the object, storage keys
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    head = [pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, info)]
    legacy.write_bytes(b"".join([*head, by_global, b"\x80\x02]."]))
    cases[legacy] = f"posix.{inert(ascii_name)}"
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(1)}, buffer)
    zipped = root / "stack_global.pt"
    with zipfile.ZipFile(buffer) as old, zipfile.ZipFile(zipped, "w") as new:
        for info in old.infolist():
            data = by_stack if info.filename.endswith("/data.pkl") else old.read(info)
            new.writestr(info.filename, data)
    cases[zipped] = f"os.{inert(name)}"
    return cases


def image_folder(root: Path, classes: list[str], images: int = 2) -> Path:
    root.mkdir(parents=True)
    generator = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir()
        for i in range(images):
            pixels = generator.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


# --- text.inert -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;t\x07", "\\x1b]0;t\\x07"),
        ("\x1b[2J", "\\x1b[2J"),
        ("a\u202eb", "a\\u202eb"),
        ("\u2066\u2069\u200e\u200f\u061c", "\\u2066\\u2069\\u200e\\u200f\\u061c"),
        ("\x9b31m\x85\x7f\x00", "\\x9b31m\\x85\\x7f\\x00"),
        ("l1\nl2\tt\r", "l1\\nl2\\tt\\r"),
        ("\u2028\u2029\ufeff\u200b", "\\u2028\\u2029\\ufeff\\u200b"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("lone \ud800", "lone \\ud800"),
    ],
)
def test_inert_escapes_controls_visibly(raw: str, shown: str) -> None:
    assert inert(raw) == shown
    assert inert(shown) == shown  # idempotent: the output is plain printable text


@pytest.mark.parametrize(
    "ordinary",
    [
        "",
        "stage_1.0.conv1.coefficients",
        "module.bank_3",
        "[link=http://x]markup[/] stays: escaping it is the renderer's job",
        "déjà vu, 中文, Ελληνικά, emoji 😀, τ = 0.99, ‖α‖, a\\x1b literally",
        "non-breaking\u00a0space and\u3000ideographic space",
    ],
)
def test_inert_is_the_identity_on_ordinary_text(ordinary: str) -> None:
    assert inert(ordinary) == ordinary


def test_inert_leaves_no_unsafe_character_anywhere_in_unicode() -> None:
    planes = (range(0x10000), range(0x1F000, 0x20000), range(0xE0000, 0xE1000))  # BMP, emoji, tags
    every = "".join(chr(code) for codes in planes for code in codes)
    escaped = inert(every)
    assert not unsafe_characters(escaped)
    assert inert(42) == "42" and inert(None) == "None"


def test_one_line_and_inert_lines() -> None:
    assert one_line("first\n  second\r\n\x1b[2Jthird\u202e") == "first second \\x1b[2Jthird\\u202e"
    assert inert_lines("a\x1b\nb\u202e\n") == "a\\x1b\nb\\u202e\n"


# --- the rendering rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("color_system", [None, "truecolor"])
def test_inert_console_on_a_terminal_prints_names_not_commands(color_system: str | None) -> None:
    """On a real terminal rich emits its own styling, and nothing else: no title, no link."""
    buffer = io.StringIO()
    console = render.InertConsole(
        file=buffer, force_terminal=True, color_system=color_system, width=5000
    )
    table = Table(title=f"{EVIL} title")
    table.add_column(EVIL)
    table.add_row(EVIL)
    console.print(table)
    console.print(EVIL)
    console.print(render.styled("warning", "yellow", f" {EVIL}"))
    printed = buffer.getvalue()
    own_styling = re.sub(r"\x1b\[[0-9;]*m", "", printed)  # SGR only
    assert_inert(own_styling)
    assert printed.count(SHOWN) == 5  # title, header, cell, line, warning
    for literal in MARKUP:
        assert literal in printed


def test_progress_descriptions_are_inert(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    console = render.InertConsole(file=buffer, force_terminal=True, color_system=None, width=200)
    monkeypatch.setattr(render, "err", console)
    with render.progress_bar() as update:
        assert update is not None
        update(EVIL, 1, 2)
        update(EVIL, 2, 2)
    printed = buffer.getvalue()
    assert "\x1b]" not in printed and "\x07" not in printed and "\u202e" not in printed
    assert "\\x1b]0;pwned\\x07" in printed


def test_show_warning_is_inert() -> None:
    from soft_share_cli.cli import _show_warning

    stream = io.StringIO()
    _show_warning(UserWarning(f"Glyph {EVIL} missing"), UserWarning, "f.py", 1, stream, "src")
    assert_inert(stream.getvalue())
    assert_shown(stream.getvalue())


# --- every command, in process --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_keys_in_analyze_and_info(ssc, files, fmt: str) -> None:
    path = str(files[fmt])
    run = ssc("analyze", path)
    assert run.code == 0, run.err
    assert_inert(run.out, run.err)
    assert_shown(run.out, f"{SHOWN}bank: 3 templates")  # the bank's table title
    assert_shown(run.out, f"{SHOWN}conv1")  # a layer and its nearest layer, in cells
    assert f"warning {SHOWN}conv3 has all-zero coefficients" in run.out  # an issue

    data = ssc("analyze", path, "--json")
    assert data.code == 0 and data.err == "" and data.out.isascii()
    found = strings(data.json())
    assert {f"{EVIL}bank", f"{EVIL}conv0", f"{EVIL}conv3.coefficients"} <= found

    info = ssc("info", path)
    assert info.code == 0, info.err
    assert_inert(info.out, info.err)
    assert_shown(info.out, f"{SHOWN}bank.templates")  # quoted in "not a known architecture"


def test_keys_in_fold_and_plot(ssc, files, tmp_path: Path) -> None:
    fold = ssc("fold", str(files["zip"]), "-o", str(tmp_path / "f.safetensors"))
    one_error_line(fold, 2)
    assert SHOWN[:20] in fold.err

    for name in ("zip", "dollar"):
        heatmap, graph = tmp_path / f"{name}.svg", tmp_path / f"{name}_graph.svg"
        run = ssc(
            "plot-similarity", str(files[name]), "-o", str(heatmap), "--graph-plot", str(graph)
        )
        assert run.code == 0, run.err
        assert_inert(run.out, run.err)
        assert "Glyph" not in run.err  # matplotlib warned, quoting the raw characters it lacked
        assert heatmap.stat().st_size > 0 and graph.stat().st_size > 0


def test_metadata_in_info_and_eval(ssc, files) -> None:
    path = str(files["meta"])
    info = ssc("info", path)
    assert info.code == 0, info.err
    assert_inert(info.out, info.err)
    assert_shown(info.out, f"ssc {SHOWN}")  # made by
    assert info.out.count(SHOWN) >= 3  # epoch, test top-1 at save (not a number: shown as is)

    data = ssc("info", path, "--json")
    assert data.code == 0 and data.err == "" and data.out.isascii()
    meta = data.json()["metadata"]
    assert meta["command"] == f"ssc {EVIL}" and meta["epoch"] == EVIL
    assert meta["note"] == {EVIL: [EVIL]}

    run = ssc("eval", path, "--data", f"folder:{files['images']}")
    assert run.code == 0, run.err
    assert_inert(run.out, run.err)
    assert_shown(run.out)  # as the recorded top-1


def test_refused_globals_are_named_escaped(ssc, tmp_path: Path) -> None:
    for path, shown in refused_pickles(tmp_path).items():
        for command in ("info", "analyze"):
            run = ssc(command, str(path))
            one_error_line(run, 3)
            assert shown in run.err, run.err
            assert "[link=http:x]" in run.err
        debug = ssc("--debug", "info", str(path))  # the traceback quotes the name as well
        assert debug.code == 3 and "Traceback" in debug.err
        assert_inert(debug.out, debug.err)


def test_class_folder_names(ssc, tmp_path: Path) -> None:
    good = image_folder(tmp_path / f"data{FOLDER_NAME}", [f"{FOLDER_NAME}{i}" for i in range(2)])
    run = ssc("eval", str(SAMPLE), "--data", f"folder:{good}")
    assert run.code == 0, run.err
    assert_inert(run.out, run.err)
    assert inert(FOLDER_NAME) in run.out  # the data row quotes the folder, \n and \t included

    empty = tmp_path / "empty"
    (empty / FOLDER_NAME).mkdir(parents=True)
    run = ssc("eval", str(SAMPLE), "--data", f"folder:{empty}")
    one_error_line(run, 2)
    # Error lines join line breaks with spaces (library messages may span lines): one_line.
    assert f"{one_line(FOLDER_NAME)}: class folder has no images" in run.err

    broken = tmp_path / "broken"
    (broken / FOLDER_NAME).mkdir(parents=True)
    (broken / FOLDER_NAME / f"{FOLDER_NAME}.png").write_bytes(b"not an image")
    run = ssc("eval", str(SAMPLE), "--data", f"folder:{broken}")
    one_error_line(run, 2)
    assert one_line(FOLDER_NAME) in run.err


def test_forged_train_state_and_folded_header(ssc, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    state = {
        "format": "ssc-train-state",
        "format_version": 1,
        "model": {"w": torch.ones(1)},
        "config": {"arch": EVIL},
        "data": EVIL,
        "epoch": 1,
    }
    torch.save(state, f"{output}.partial")
    run = ssc("train", "--data", "digits", "-o", str(output), "--resume", "--epochs", "1")
    one_error_line(run, 2)

    from soft_share_cli.checkpoints import folded_header

    header = {"format": folded_header.FORMAT_NAME, "format_version": EVIL}
    forged = tmp_path / "forged.safetensors"
    save_file({"w": torch.ones(1)}, str(forged), metadata=header)
    for command in (("info",), ("eval", "--data", "digits"), ("analyze",)):
        run = ssc(*command[:1], str(forged), *command[1:])
        assert run.code == 2, run.err
        assert_inert(run.out, run.err)


def test_usage_errors_quote_values_escaped(ssc, files) -> None:
    """Click's own errors quote the option value or command name the user typed."""
    for args in (
        ("analyze", str(files["zip"]), "--metric", EVIL),
        ("info", f"--{FOLDER_NAME}"),
        (FOLDER_NAME,),
        ("info", str(files["zip"]), "extra", EVIL),
    ):
        run = ssc(*args)
        assert run.code == 2, (args, run.err)
        assert_inert(run.out, run.err)
        assert "\\x1b]0;pwned\\x07" in run.err, run.err

    missing = ssc("info", f"/nonexistent/{FOLDER_NAME}.pt")
    one_error_line(missing, 2)
    assert one_line(FOLDER_NAME) in missing.err


def test_error_and_warning_lines_from_the_library(ssc, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the library says about a file reaches the terminal inert: errors and warnings."""
    import soft_share_cli.pipeline.info as pipeline
    from soft_share_cli.errors import InputError

    def failing(path: str, key: str | None = None) -> None:
        warnings.warn(f"about {EVIL}", UserWarning, stacklevel=1)
        raise InputError(f"{path}: bad key {EVIL}")

    monkeypatch.setattr(pipeline, "inspect_checkpoint", failing)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        run = ssc("info", "f.pt")
    assert run.code == 2
    assert_inert(run.out, run.err)
    error = run.err.strip().splitlines()[-1]
    assert error == f"Error: f.pt: bad key {one_line(EVIL)}"
    assert f"about {SHOWN}" in run.err  # the warning, made inert, on its own line

    def crashing(path: str, key: str | None = None) -> None:
        raise RuntimeError(EVIL)

    monkeypatch.setattr(pipeline, "inspect_checkpoint", crashing)
    run = ssc("info", "f.pt")
    one_error_line(run, 4)
    assert "internal error (RuntimeError: " in run.err


# --- a real process, bytes as they reach the terminal ---------------------------------------------


def test_a_real_process_writes_no_control_bytes(files) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["COLUMNS"] = "5000"
    command = [sys.executable, "-m", "soft_share_cli", "analyze", str(files["legacy"])]
    done = subprocess.run(command, capture_output=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for stream in (done.stdout, done.stderr):
        text = stream.decode("utf-8")  # strict: every byte is UTF-8
        assert b"\x1b" not in stream and b"\x07" not in stream and b"\xc2\x9b" not in stream
        assert_inert(text)
    assert_shown(done.stdout.decode(), f"{SHOWN}bank: 3 templates")
