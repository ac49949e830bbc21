"""Helpers every data source shares: regular-file opening, stat, the limit checks and errors.

Plain Python (no numpy), so :mod:`soft_share_cli.data.spec` can use them and stay light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from soft_share_cli import limits
from soft_share_cli.errors import DataError
from soft_share_cli.files import require_regular_file


def shorten(text: str, keep: int = 24) -> str:
    """``text``, or its first ``keep`` characters and an ellipsis when it is longer."""
    return text if len(text) <= keep else text[:keep] + "..."


def stat_mode(path: Path) -> int:
    """``os.stat(path).st_mode`` (through symlinks); a :class:`DataError` when it fails.

    Only stats, never opens: a FIFO cannot block here.
    """
    try:
        return os.stat(path).st_mode
    except OSError as exc:  # ELOOP (a symlink loop), a dangling link, EACCES, ENAMETOOLONG
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def open_regular(path: Path, what: str) -> Any:
    """``path`` opened for reading, after checking (without opening) that it is a regular file."""
    return require_regular_file(path, what, DataError).open("rb")


def limit_error(where: Any, what: str, limit: int, name: str) -> DataError:
    """The one-line error for data beyond ``limits.<name>`` (= ``limit``)."""
    return DataError(f"{where}: {what}; ssc reads at most {limit} (limits.{name})")


def check_images(where: Any, samples: int, channels: int, pixels: int) -> None:
    """Refuse ``samples`` images of ``channels`` x ``pixels`` beyond the data limits."""
    if samples > limits.MAX_SAMPLES:
        raise limit_error(where, f"{samples} samples", limits.MAX_SAMPLES, "MAX_SAMPLES")
    if channels > limits.MAX_CHANNELS:
        raise limit_error(where, f"{channels} channels", limits.MAX_CHANNELS, "MAX_CHANNELS")
    if pixels > limits.MAX_IMAGE_PIXELS:
        raise limit_error(
            where, f"images of {pixels} pixels", limits.MAX_IMAGE_PIXELS, "MAX_IMAGE_PIXELS"
        )
    size = samples * channels * pixels * 4
    if size > limits.MAX_DATA_BYTES:
        raise limit_error(
            where,
            f"{samples} images of {channels} x {pixels} would take {size} bytes as float32",
            limits.MAX_DATA_BYTES,
            "MAX_DATA_BYTES",
        )
