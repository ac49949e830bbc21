"""The one error hierarchy of ssc.

Library code raises these; exactly one place (``cli.main``) turns them into a one-line
``Error: ...`` message and the exit code below. Exit codes are part of the public contract:

* 0 success
* 1 a requested check failed (``CheckFailed``)
* 2 usage or input error (bad file, bad data, unknown architecture)
* 3 a checkpoint refused as unsafe (``UnsafeCheckpointError``)
* 4 internal error (a bug in ssc; ``cli.main`` asks for a report)
* 130 interrupted by Ctrl-C (``Interrupted`` when there is more to say than "interrupted")
"""

from __future__ import annotations


class SscError(Exception):
    """Base class of every error ssc reports to a user."""

    exit_code: int = 2


class InputError(SscError):
    """A path, option value or file content that ssc cannot use."""

    exit_code = 2


class CheckpointError(InputError):
    """A checkpoint file that cannot be read (missing, empty, truncated, not a checkpoint)."""


class ArchitectureError(InputError):
    """A state dict that does not describe a known architecture, or does not fit it."""


class DataError(InputError):
    """A ``--data`` spec that is malformed, or data that is missing or malformed."""


class UnsafeCheckpointError(SscError):
    """A checkpoint that references code able to execute or touch the system."""

    exit_code = 3


class CheckFailed(SscError):
    """A check the user asked for (a gate such as ``--max-drop``) did not pass."""

    exit_code = 1


class Interrupted(SscError):
    """Ctrl-C, re-raised with what was kept (e.g. the finished epochs of ``ssc train``)."""

    exit_code = 130


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "a requested check failed",
    2: "usage or input error",
    3: "checkpoint refused as unsafe",
    4: "internal error (a bug: rerun with --debug and report it)",
    130: "interrupted",
}
