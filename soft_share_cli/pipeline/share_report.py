"""What ``ssc share`` reports: the groups it fitted, what the fit costs, and where it went.

Plain frozen dataclasses, built by :mod:`soft_share_cli.pipeline.share` and rendered by
:mod:`soft_share_cli.render.share_tables`; ``to_dict`` is the ``--json`` form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class GroupFit:
    """One group of same-shape layers and the bank that replaced it."""

    name: str
    layers: tuple[str, ...]
    shape: tuple[int, ...]  # the weight shape of every layer of the group
    templates: int  # K
    relative_error: float  # ||W - W_K||_F / ||W||_F over the group's stacked weights
    needed: int | None = None  # --keep: the K this group alone needs (an SWRN uses the largest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layers": list(self.layers),
            "shape": list(self.shape),
            "templates": self.templates,
            "relative_error": self.relative_error,
            "needed_templates": self.needed,
        }


@dataclass(frozen=True)
class ProbeCheck:
    """The shared network against the original on seeded random inputs (no data needed)."""

    shape: tuple[int, ...]  # (samples, *input shape)
    max_abs_diff: float  # max |logit difference|
    max_abs_logit: float  # max |logit| of the original: the scale the difference is read on
    basis: str = "ssc fold's probe"  # where the input shape comes from (or "the --data images'")

    @property
    def relative(self) -> float | None:
        """The max difference relative to the largest logit (None when every logit is 0)."""
        return self.max_abs_diff / self.max_abs_logit if self.max_abs_logit > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "max_abs_diff": self.max_abs_diff,
            "max_abs_logit": self.max_abs_logit,
            "relative": self.relative,
            "basis": self.basis,
        }


@dataclass(frozen=True)
class DataFigures:
    """Top-1 (%) on the test split of ``--data``: before, right after, and after the fine-tune."""

    spec: str
    samples: int
    original: float
    converted: float
    shared: float  # the network written (equal to ``converted`` without a fine-tune)

    @property
    def delta_top1(self) -> float:
        """Points the written network gains (+) or loses (-) against the original."""
        return self.shared - self.original

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "samples": self.samples,
            "original": self.original,
            "converted": self.converted,
            "shared": self.shared,
            "delta_top1": self.delta_top1,
        }


@dataclass(frozen=True)
class ShareReport:
    """``ssc share``: which layers now draw from which bank, and what it cost and saved."""

    checkpoint: str
    architecture: str  # the source network, e.g. "WRN 28-1 (10 classes, 1 input channel)"
    shared_architecture: str  # what was written, e.g. "SWRN 28-1-2 (...)" or "user network ..."
    output: str
    templates: int | None  # --templates K (None with --keep)
    keep: float | None  # --keep F (None with --templates)
    note: str | None  # how K was chosen when that needs saying (--keep on a WRN)
    original_parameters: int  # unique parameters of the source file (BN statistics left out)
    shared_parameters: int  # the same, of the file written
    groups: tuple[GroupFit, ...]
    probe: ProbeCheck
    data: DataFigures | None
    finetune_epochs: int  # 0: no fine-tune (no --data, or --finetune-epochs 0)
    history: tuple[Any, ...]  # training.classification.EpochRecord per fine-tune epoch
    resumed_epochs: int  # fine-tune epochs restored from OUTPUT.partial (--resume)
    fold_command: str  # the exact command that folds the output
    file_bytes: dict[str, int]  # {"original": source file, "shared": the file written}
    seconds: float

    @property
    def saved_pct(self) -> float:
        """Parameters saved against the source, in percent."""
        if not self.original_parameters:
            return 0.0
        return 100.0 * (1.0 - self.shared_parameters / self.original_parameters)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall times sit under ``timing``, the rest repeats exactly run to run."""
        history = [asdict(record) for record in self.history]
        epoch_seconds = [record.pop("seconds") for record in history]
        return {
            "schema_version": SCHEMA_VERSION,
            "checkpoint": self.checkpoint,
            "architecture": self.architecture,
            "shared_architecture": self.shared_architecture,
            "output": self.output,
            "templates": self.templates,
            "keep": self.keep,
            "note": self.note,
            "params": {
                "original": self.original_parameters,
                "shared": self.shared_parameters,
                "saved_pct": self.saved_pct,
            },
            "groups": [g.to_dict() for g in self.groups],
            "probe": self.probe.to_dict(),
            "data": None if self.data is None else self.data.to_dict(),
            "finetune": {"epochs": self.finetune_epochs, "history": history},
            "resumed_epochs": self.resumed_epochs,
            "fold_command": self.fold_command,
            "file_bytes": dict(self.file_bytes),
            "timing": {"seconds": self.seconds, "epoch_seconds": epoch_seconds},
        }
