"""``ssc info``: what a checkpoint is, without building its network (no torch where the file
allows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soft_share_cli._version import __version__

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint is: format, wrapping, architecture, parameters and provenance."""

    path: str
    format: str
    container: str
    stripped_prefix: str | None
    placeholders: tuple[str, ...]
    architecture: dict[str, Any] | None  # ArchSpec.to_dict(), None when unknown
    architecture_name: str | None
    architecture_error: str | None  # why the architecture is unknown
    tensors: int
    unique_parameters: int
    file_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)
    other_state_dicts: tuple[str, ...] = ()  # dotted keys of state dicts not used (--key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "checkpoint": self.path,
            "format": self.format,
            "container": self.container,
            "other_state_dicts": list(self.other_state_dicts),
            "stripped_prefix": self.stripped_prefix,
            "placeholders": list(self.placeholders),
            "architecture": self.architecture,
            "architecture_name": self.architecture_name,
            "architecture_error": self.architecture_error,
            "tensors": self.tensors,
            "unique_parameters": self.unique_parameters,
            "file_bytes": self.file_bytes,
            "metadata": self.metadata,
        }


def inspect_checkpoint(path: str | Path, key: str | None = None) -> CheckpointInfo:
    """Load a checkpoint safely and describe it; an unknown architecture is reported, not raised.

    ``key`` names the entry holding the state dict (see
    :func:`~soft_share_cli.checkpoints.load.load_checkpoint`).
    """
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.errors import ArchitectureError
    from soft_share_cli.folding.kinds import folded_name
    from soft_share_cli.models.builder import architecture_of
    from soft_share_cli.models.params import count_state_dict_parameters

    ckpt = load_checkpoint(path, arrays=True, key=key)  # shapes and storages only: no torch needed
    arch: dict[str, Any] | None = None
    name = error = None
    name = folded_name(ckpt)
    if name is None:
        try:
            spec = architecture_of(ckpt)
            arch, name = spec.to_dict(), spec.describe()
        except ArchitectureError as exc:
            error = str(exc)
    return CheckpointInfo(
        path=str(path),
        format=ckpt.format,
        container=ckpt.container,
        stripped_prefix=ckpt.stripped_prefix,
        placeholders=tuple(ckpt.placeholders),
        architecture=arch,
        architecture_name=name,
        architecture_error=error,
        tensors=len(ckpt.state_dict),
        unique_parameters=count_state_dict_parameters(ckpt.state_dict),
        file_bytes=Path(path).stat().st_size,
        metadata=_jsonable(ckpt.metadata),
        other_state_dicts=ckpt.other_state_dicts,
    )


def _jsonable(value: Any) -> Any:
    """Plain-JSON view of metadata (placeholders and arrays become short descriptions)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return repr(value)


def version_info() -> dict[str, str]:
    return {"ssc": __version__}
