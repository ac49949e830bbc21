"""The header of a folded file (container ``ssc-folded``), read without building the network.

A folded file is safetensors weights plus, in the header's ``__metadata__``, ``format``
(:data:`FORMAT_NAME`), ``format_version`` (:data:`FORMAT_VERSION`), ``program`` and ``report``
(JSON strings). The checkpoint layer reads that header here; what the program builds is the
folding layer's part (:mod:`soft_share_cli.folding.swrn`, :mod:`soft_share_cli.folding.kinds`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from soft_share_cli.errors import CheckpointError
from soft_share_cli.limits import loads_json

FORMAT_NAME = "ssc-folded"
FORMAT_VERSION = "1"


def folded_metadata(path: str | os.PathLike[str], header: dict[str, str]) -> dict[str, Any]:
    """The parsed ``program`` and ``report`` of a folded file's safetensors header.

    Raises:
        CheckpointError: the header is not a readable folded-network header.
    """
    if header.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path}: not a folded network (its header says format "
            f"{header.get('format')!r}); make one with `ssc fold`"
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: folded format version {header.get('format_version')!r}; "
            f"this ssc reads version {FORMAT_VERSION}"
        )
    parsed: dict[str, Any] = {"format_version": int(FORMAT_VERSION)}
    for name in ("program", "report"):
        try:
            value = loads_json(header.get(name, "null"), f"{path}: its '{name}' metadata")
        except ValueError:
            raise CheckpointError(f"{path}: its '{name}' metadata is not valid JSON") from None
        if not isinstance(value, dict):
            raise CheckpointError(f"{path}: its '{name}' metadata is missing or not a JSON object")
        parsed[name] = value
    return parsed


def is_folded_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file whose header marks a folded network (header only)."""
    if not os.path.isfile(path):  # a FIFO, device or socket is no file (and would block)
        return False
    try:
        with Path(path).open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= 100_000_000:  # safetensors' own header limit
                return False
            header = json.loads(fh.read(size))
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not JSON, too deep
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME
