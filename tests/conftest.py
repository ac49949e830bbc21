"""Shared fixtures: the committed sample checkpoints and an in-process ``ssc`` runner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def ssc(capsys: pytest.CaptureFixture[str]):
    """Run ``ssc ARGS`` in-process through the real entry point (exit codes included)."""
    from soft_share_cli.cli import _state, main

    def run(*args: str) -> Run:
        _state["debug"] = False
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def manifest() -> dict:
    return json.loads((SAMPLES / "manifest.json").read_text())
