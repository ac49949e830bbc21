"""Every file ssc writes appears whole or not at all, and a failed write keeps the old file.

Two layers: a static check that every write call in the package sits inside a function handed
to ``checkpoint.atomic_write`` (so a new writer cannot slip in unnoticed), and, per kind of output,
a real ``ssc`` command whose write is broken half-way (disk full, or Ctrl-C) that must leave the
previous file byte for byte and no temporary file. Library-level versions: test_checkpoint.py
(atomic_write, save_checkpoint), test_folded.py (save_folded), test_plotting.py (save_figure),
test_graph.py (export_graph); the train state file: test_resume.py.
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

PACKAGE = Path(__file__).resolve().parent.parent / "soft_share_cli"
SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
ALIGNED = str(SAMPLES / "swrn28-1-4_digits_align.pt")

# Calls that create or change files (method or function names).
WRITERS = {
    "save", "savez", "savez_compressed", "save_file", "save_model", "savefig", "imsave",
    "write_text", "write_bytes", "write_graphml", "write_gexf", "write_gml", "to_csv",
    "dump", "copyfile", "copy2", "copytree", "move", "symlink_to", "hardlink_to", "touch",
}  # fmt: skip


def _temp_file_writers() -> set[tuple[str, str]]:
    """Writers that take a path from their caller and are only ever handed atomic_write's
    temporary file: graph.export_graph picks them from graph._WRITERS inside its lambda (and
    the graph cases of test_a_broken_write_keeps_the_previous_file check that it does)."""
    from soft_share_cli.render import graph_files as graph

    return {("graph_files.py", writer.__name__) for writer in graph._WRITERS.values()}


def _writes(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name == "open":  # open(path, "w"), path.open("wb"), open(..., mode="a")
        modes = [a.value for a in call.args if isinstance(a, ast.Constant)]
        modes += [k.value.value for k in call.keywords if k.arg == "mode" and
                  isinstance(k.value, ast.Constant)]  # fmt: skip
        return any(isinstance(m, str) and set(m) & set("wax+") for m in modes)
    return name in WRITERS


def _unguarded_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node

    def handed_to_atomic_write(function: ast.AST) -> bool:
        if isinstance(function, ast.Lambda):
            call = parents.get(function)
            return isinstance(call, ast.Call) and _name(call.func) == "atomic_write"
        assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        if (path.name, function.name) in _temp_file_writers():
            return True
        scope = parents.get(function)
        return any(
            isinstance(node, ast.Call)
            and _name(node.func) == "atomic_write"
            and any(isinstance(a, ast.Name) and a.id == function.name for a in node.args)
            for node in ast.walk(scope or tree)
        )

    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _writes(node)):
            continue
        function: ast.AST | None = parents.get(node)
        while function is not None and not isinstance(
            function, ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef
        ):
            function = parents.get(function)
        if function is None or not handed_to_atomic_write(function):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def _name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_every_write_in_the_package_goes_through_atomic_write() -> None:
    unguarded = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _unguarded_writes(path)]
    assert not unguarded, "write these through checkpoint.atomic_write:\n" + "\n".join(unguarded)


def test_the_static_check_sees_a_plain_write(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        textwrap.dedent(
            """
            import torch
            from soft_share_cli.files import atomic_write

            def fine(path, obj):
                atomic_write(path, lambda tmp: torch.save(obj, tmp))

            def also_fine(path, fig):
                def write(tmp):
                    fig.savefig(tmp)
                atomic_write(path, write)

            def direct(path, obj):
                torch.save(obj, path)

            def text(path):
                with open(path, "w") as fh:
                    fh.write("x")
            """
        )
    )
    assert [hit.split(":")[1] for hit in _unguarded_writes(bad)] == ["14", "17"]


# --- a real command, a write broken half-way --------------------------------------------------


def _break(monkeypatch: pytest.MonkeyPatch, target: str, error: BaseException) -> list[str]:
    """Make every low-level writer fail half-way when it writes the temporary file of
    ``target`` (other files are written normally); returns the temporary paths it saw."""
    import matplotlib.figure
    import safetensors.torch

    from soft_share_cli.render import graph_files as graph

    seen: list[str] = []

    def failing(real: Callable[..., Any], position: int) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            destination = args[position] if len(args) > position else kwargs["fname"]
            if not isinstance(destination, str | os.PathLike):  # torch.save gets an open file
                destination = destination.name
            destination = str(destination)
            if re.fullmatch(rf"\.{re.escape(target)}\.[0-9a-f]{{12}}\.tmp", Path(destination).name):
                seen.append(destination)
                Path(destination).write_bytes(b"half of the new file")
                raise error
            return real(*args, **kwargs)

        return write

    monkeypatch.setattr(torch, "save", failing(torch.save, 1))
    monkeypatch.setattr(safetensors.torch, "save_file", failing(safetensors.torch.save_file, 1))
    figure = matplotlib.figure.Figure
    monkeypatch.setattr(figure, "savefig", failing(figure.savefig, 1))
    writers = {suffix: failing(fn, 1) for suffix, fn in graph._WRITERS.items()}
    monkeypatch.setattr(graph, "_WRITERS", writers)
    return seen


USER_NET = """
import torch.nn.functional as F
from torch import nn
from soft_share_cli.models.layers import SConv2d, TemplateBank

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bank = TemplateBank(2, 4, 4, 3)
        self.conv2, self.conv3 = SConv2d(self.bank), SConv2d(self.bank)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        x = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        return self.head(x.mean((2, 3)))
"""


def _user_checkpoint(directory: Path) -> str:
    (directory / "outputs_user_net.py").write_text(USER_NET)
    import sys

    sys.path.insert(0, str(directory))
    try:
        import outputs_user_net  # type: ignore[import-not-found]

        torch.manual_seed(0)
        net = outputs_user_net.Net()
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop("outputs_user_net", None)
    torch.save(net.state_dict(), directory / "user.pt")
    return str(directory / "user.pt")


TINY_TRAIN = ("--data", "digits?limit=100", "--depth", "16", "--templates", "2", "--epochs", "1")


def _fold_with_materialize(d: Path) -> list[str]:
    return ["fold", ALIGNED, "-o", str(d / "f.safetensors"), "--materialize", str(d / "m.pt")]


def _fold_user_network(d: Path) -> list[str]:
    model = f"{d / 'outputs_user_net.py'}:Net"
    return ["fold", _user_checkpoint(d), "-o", str(d / "u.safetensors"), "--model", model]


def _graph_plot(d: Path) -> list[str]:
    return ["plot-similarity", ALIGNED, "-o", str(d / "x.pdf"), "--graph-plot", str(d / "g.svg")]


def _graph(suffix: str) -> Callable[[Path], list[str]]:
    return lambda d: ["analyze", ALIGNED, "--graph", str(d / f"g{suffix}")]


# (id, output file name, the command writing it, given the directory)
OUTPUTS: list[tuple[str, str, Callable[[Path], list[str]]]] = [
    ("train", "out.pt", lambda d: ["train", *TINY_TRAIN, "-o", str(d / "out.pt")]),
    ("fold", "f.safetensors", lambda d: ["fold", ALIGNED, "-o", str(d / "f.safetensors")]),
    ("fold-materialize", "m.pt", _fold_with_materialize),
    ("fold-user-network", "u.safetensors", _fold_user_network),
    ("plot", "lsm.png", lambda d: ["plot-similarity", ALIGNED, "-o", str(d / "lsm.png")]),
    ("graph-plot", "g.svg", _graph_plot),
    *[(f"graph{s}", f"g{s}", _graph(s)) for s in (".graphml", ".gexf", ".json", ".dot")],
]


@pytest.mark.parametrize(
    ("error", "code"),
    [(OSError(28, "No space left on device"), 2), (KeyboardInterrupt(), 130)],
    ids=["disk-full", "ctrl-c"],
)
@pytest.mark.parametrize(("name", "command"), [(o[1], o[2]) for o in OUTPUTS],
                         ids=[o[0] for o in OUTPUTS])  # fmt: skip
def test_a_broken_write_keeps_the_previous_file(
    ssc,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    command: Callable[[Path], list[str]],
    error: BaseException,
    code: int,
) -> None:
    args = command(tmp_path)  # may create inputs in tmp_path
    target = tmp_path / name
    target.write_bytes(b"the previous file")
    before = {p.name for p in tmp_path.iterdir()}
    seen = _break(monkeypatch, name, error)
    run = ssc(*args)
    assert seen, "the command never wrote its output"
    assert run.code == code, run.err
    # (after Ctrl-C, click first ends the terminal's "^C" line: hence lstrip)
    assert run.err.lstrip("\n").startswith("Error: ") and run.err.strip().count("\n") == 0
    if code == 2:
        assert f"cannot write {target}: No space left on device" in run.err
    assert target.read_bytes() == b"the previous file"
    left = {p.name for p in tmp_path.iterdir()} - before
    # No temporary file left; a train interrupted at its very end keeps its finished epochs.
    assert left <= {"out.pt.partial", "f.safetensors", "x.pdf"}, left
