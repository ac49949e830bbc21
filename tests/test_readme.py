"""Every ``$ ssc ...`` line of the README's console blocks runs as pasted (exit 0), in order, in a
fresh copy of the repository's tracked files: what a new user who pastes them gets."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def readme_examples(text: str) -> list[tuple[str, list[str]]]:
    """Each ``$ ssc ...`` line of the ``console`` blocks, in order, with the output shown under it
    (up to the next ``$`` line or the end of the block)."""
    examples: list[tuple[str, list[str]]] = []
    block: str | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block != "console":
            continue
        if line.startswith("$ ssc "):
            examples.append((line[2:].strip(), []))
        elif line.startswith("$ "):
            examples.append(("", []))  # another program: its output is not ssc's
        elif examples:
            examples[-1][1].append(line)
    return [(command, shown) for command, shown in examples if command]


def readme_commands(text: str) -> list[str]:
    """The ``$ ssc ...`` lines of the ``console`` blocks, in order."""
    return [command for command, _ in readme_examples(text)]


# Outputs that depend on nothing but the bundled files: what the README shows must be printed.
CHECKED = ("analyze", "info")


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_the_parser_reads_console_blocks_only() -> None:
    text = "```bash\n$ ssc no\n```\n```console\n$ ssc info a.pt\nout\n$ python x.py\n```\n$ ssc no"
    assert readme_commands(text) == ["ssc info a.pt"]
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 8
    assert {c.split()[1] for c in commands} >= {"analyze", "fold", "info", "eval", "train"}


def _tracked_copy(target: Path) -> None:
    """The tracked files as they are in this working tree (a clone's content, edits included)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.mark.slow
def test_every_readme_example_runs_as_pasted(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know the tracked files")
    clone = tmp_path / "clone"
    _tracked_copy(clone)
    script = Path(sys.executable).with_name("ssc")
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "soft_share_cli"]
    # as a user's pipe sees it: no terminal width inherited from the test runner
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    for command, shown in readme_examples(README.read_text(encoding="utf-8")):
        args = shlex.split(command)[1:]
        run = subprocess.run(
            [*entry, *args], cwd=clone, capture_output=True, text=True, timeout=900, env=env
        )
        assert run.returncode == 0, f"$ {command}\nexit {run.returncode}: {run.stderr[-2000:]}"
        if args[0] in CHECKED:  # every line shown (but elisions) is in what ssc printed
            printed = _flat(run.stdout)
            missing = [ln for ln in shown if not ln.startswith("[") and _flat(ln) not in printed]
            assert not missing, f"$ {command}: the README shows lines ssc does not print: {missing}"
