"""The package's layout stays one a newcomer can see (docs/architecture.md).

Measured from the source itself: every import (those inside functions too; those under
``if TYPE_CHECKING:`` are for type checkers only and left out) is an edge between modules, and
the graph has no cycle; no module is over 400 lines; the loose top-level modules are few; the
flow between subpackages goes one way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "soft_share_cli"
MAX_LINES = 400
# Loose modules the layout allows besides these (issue 12: at most four).
ALWAYS_LOOSE = {"__init__", "__main__", "_version", "errors", "files", "cli"}  # cli: a package now
MAX_OTHER_LOOSE = 4


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    """Every node under an ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) block."""
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", "")
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skipped.update(ast.walk(child))
    return skipped


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (not for type checking)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` depends on the submodule; ``from mod import name`` on mod
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # the longest prefix that is a module of the package
            parts = target.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


def import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target in _imports(name, path, modules):
            if target != "soft_share_cli":  # the top-level __init__: the public API
                graph.add_edge(name, target)
    return graph


def test_the_import_graph_is_seen() -> None:
    """The graph is not empty by accident: known edges are there."""
    graph = import_graph()
    assert graph.has_edge("soft_share_cli.analysis.analyze", "soft_share_cli.analysis.banks")
    assert graph.number_of_edges() > 50


def test_no_import_cycle() -> None:
    cycles = sorted(sorted(c) for c in nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles[:20])


def test_a_cycle_would_be_found(tmp_path: Path) -> None:
    """The checker sees imports inside functions and skips TYPE_CHECKING ones."""
    a = tmp_path / "a.py"
    a.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from soft_share_cli import files\n"
        "def f():\n    from soft_share_cli.errors import SscError\n"
    )
    modules = {"soft_share_cli.a": a, "soft_share_cli.errors": a, "soft_share_cli.files": a}
    assert _imports("soft_share_cli.a", a, modules) == {"soft_share_cli.errors"}


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_is_over_400_lines(name: str) -> None:
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(PACKAGE.glob("*/__init__.py")) if p.parent.name != "cli"],
    ids=lambda p: p.parent.name,
)
def test_subpackage_inits_import_nothing(path: Path) -> None:
    """Importing one module of a subpackage must not load its siblings (``cli/__init__`` is
    the entry point and registers the commands; the top-level ``__init__`` is lazy)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)


def test_few_loose_modules() -> None:
    loose = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and not (p / "__init__.py").exists()
    }
    others = sorted(loose - ALWAYS_LOOSE)
    assert len(others) <= MAX_OTHER_LOOSE, others


# The one-way flow: a subpackage may import only those to its right in this order (and the
# loose modules). render reads results only, so it sits beside analysis' consumers.
LAYERS = (
    ("cli",),
    ("pipeline",),
    ("folding", "training", "evaluation"),
    ("render",),
    ("analysis",),
    ("models", "data", "checkpoints"),
)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    return None


def test_imports_flow_one_way() -> None:
    backwards = []
    for source, target in import_graph().edges:
        a, b = _layer(source), _layer(target)
        if a is not None and b is not None and b < a:
            backwards.append(f"{source} -> {target}")
    assert not backwards, "imports against the flow:\n" + "\n".join(sorted(backwards))
