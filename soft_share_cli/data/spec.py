"""The ``--data`` spec grammar: the kinds of data set, their forms, and :func:`parse_data_spec`.

A spec is ``KIND[:PATH]`` (or ``KIND:OPTIONS`` for the generated tasks), optionally followed by
``?limit=N`` to keep the first N samples. :class:`DataKind` is the one table of kinds: their
forms give :data:`SPEC_FORMS` (error messages) and, with the task options, :data:`DATA_HELP`
(the help of ``--data``). Parsing checks the form and that the path exists; loading is
:func:`soft_share_cli.data.loaders.load_data`, which takes the parsed :class:`DataSpec`.

Plain Python: importing this module loads neither numpy nor torch.
"""

from __future__ import annotations

import enum
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from soft_share_cli import limits
from soft_share_cli.data.common import shorten, stat_mode
from soft_share_cli.errors import DataError
from soft_share_cli.files import file_kind, require_regular_file


class DataKind(str, enum.Enum):
    """The kinds of data set a spec can name: ``KIND = value, argument, extra, summary``.

    ``argument`` follows ``KIND:`` in the spec's short form (none for digits); ``extra`` is what
    the help adds to it (the optional task options); ``summary`` says what the kind loads.
    """

    _value_: str
    argument: str
    extra: str
    summary: str

    DIGITS = "digits", "", "", "scikit-learn's bundled 8x8 digits (no download), fixed split"
    NPZ = "npz", "FILE", "", "arrays x (N, C, H, W) float, preprocessed, and y (N,) int"
    CIFAR10 = "cifar10", "DIR", "", "the CIFAR-10 python-pickle batches (DIR or its parent)"
    CIFAR100 = "cifar100", "DIR", "", "the CIFAR-100 python-pickle batches (DIR or its parent)"
    FOLDER = "folder", "DIR", "", "one sub-folder of same-size images per class"
    MAZE = "maze", "size=N", "[,count=M,seed=S]", "generated mazes, a label per pixel"
    PREFIX_SUMS = "prefix-sums", "length=N", "[,...]", "generated bit strings, running parity"

    # Defaults only so that type checkers accept the lookup ``DataKind("npz")``.
    def __new__(
        cls, value: str, argument: str = "", extra: str = "", summary: str = ""
    ) -> DataKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.argument, member.extra, member.summary = argument, extra, summary
        return member

    @property
    def form(self) -> str:
        """The spec's short form, e.g. ``digits`` or ``npz:FILE``."""
        return f"{self.value}:{self.argument}" if self.argument else self.value


TASK_KINDS = (DataKind.MAZE, DataKind.PREFIX_SUMS)  # generated; options instead of a path
SPLITS = ("train", "test")
#: The accepted forms, as error messages list them.
SPEC_FORMS = ", ".join(kind.form for kind in DataKind) + " (optionally ?limit=N)"
#: The one-line help of ``--data``.
DATA_HELP = (
    "Data to use: "
    + " | ".join(kind.form + kind.extra for kind in DataKind)
    + " (see README, 'Data specs')."
)


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` spec; parsing checks the form and that the path exists."""

    kind: DataKind
    path: Path | None  # None for digits and the generated tasks
    options: dict[str, int] = field(default_factory=dict)  # e.g. {"limit": 500}
    text: str = field(default="", compare=False)  # the spec as given: the data set's name


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``spec`` into a :class:`DataSpec`, raising :class:`DataError` if it is unusable."""
    text = spec
    options: dict[str, int] = {}
    # Options only when the tail is exactly "?limit=N", so paths containing "?" still work.
    match = re.fullmatch(r"(.*)\?limit=([0-9]+)", spec.strip())
    if match:
        spec, digits = match.group(1), match.group(2).lstrip("0") or "0"
        # Compared as text first: int() of thousands of digits is refused (or slow).
        limit = int(digits) if len(digits) <= 18 else limits.MAX_SAMPLES + 1
        if limit < 1:
            raise DataError(f"?limit must be at least 1 in data spec {spec!r}")
        if limit > limits.MAX_SAMPLES:
            raise DataError(
                f"?limit={shorten(match.group(2))} in data spec {spec!r}: ssc reads at most "
                f"{limits.MAX_SAMPLES} samples (limits.MAX_SAMPLES)"
            )
        options["limit"] = limit
    kind_text, sep, path_text = spec.strip().partition(":")
    try:
        kind = DataKind(kind_text.lower())
    except ValueError:
        raise DataError(f"unknown data spec {spec!r}; use one of: {SPEC_FORMS}") from None
    if kind in TASK_KINDS:
        from soft_share_cli.data.tasks import parse_task_spec

        task = parse_task_spec(kind.value, path_text)
        task_options = {"size": task.size, "count": task.count, "seed": task.seed, **options}
        return DataSpec(kind, None, task_options, text)
    if kind is DataKind.DIGITS:
        if sep:
            raise DataError(f"'digits' takes no path (got {spec!r}); use one of: {SPEC_FORMS}")
        return DataSpec(kind, None, options, text)
    if not path_text:
        raise DataError(f"data spec {spec!r} needs a path, e.g. {kind.value}:/path/to/data")
    path = Path(path_text).expanduser()
    if not os.path.lexists(path):
        raise DataError(f"data path not found: {path} (from spec {spec!r})")
    mode = stat_mode(path)  # follows symlinks; a loop or a dangling link is a DataError
    want_dir = kind.argument == "DIR"  # the kind's row says: FILE or DIR
    if want_dir != stat.S_ISDIR(mode):
        what = "a directory" if want_dir else f"an .{kind.value} file"
        raise DataError(f"{kind.value}: expects {what}, got {path} ({file_kind(mode)})")
    if not want_dir:
        require_regular_file(path, f"{kind.value} file", DataError)
    return DataSpec(kind, path, options, text)
