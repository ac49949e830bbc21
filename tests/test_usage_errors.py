"""A mistyped option or a missing argument is one line, exit 2, naming the help to read."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("share", "x.pt", "-o", "y.pt", "--templates", "2.5"), "'--templates': '2.5'"),
        (("share", "x.pt", "-o", "y.pt", "--keep", "abc"), "'--keep'"),
        (("train", "--data", "digits", "-o", "a.pt", "--epochs", "-1"), "'--epochs'"),
        (("fold", "x.pt", "--threshold", "abc"), "'--threshold'"),
        (("fold",), "Missing argument"),
        (("nosuch",), "No such command"),
        (("eval", "x.pt", "--data", "digits", "--bogus"), "--bogus"),
    ],
)
def test_usage_errors_are_one_line(ssc, args: tuple[str, ...], says: str) -> None:
    run = ssc(*args)
    assert run.code == 2
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("Error: ") and says in lines[0]
    assert "--help" in lines[0]
    assert run.out == ""
