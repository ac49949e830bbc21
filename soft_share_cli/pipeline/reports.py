"""The JSON shape shared by the reports of ``ssc train`` on images and on tasks."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


def train_json(report: Any, schema_version: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """``report`` (a train report) as JSON: wall times under ``timing``, ``metrics`` (the task
    kind's own figures) after the history; the rest repeats exactly run to run."""
    history = [asdict(e) for e in report.history]
    epoch_seconds = [record.pop("seconds") for record in history]
    return {
        "schema_version": schema_version,
        "output": report.output,
        "architecture": report.architecture,
        "data": report.data,
        "history": history,
        **metrics,
        "parameters": report.parameters,
        "file_bytes": report.file_bytes,
        "resumed_epochs": report.resumed_epochs,
        "timing": {"seconds": report.seconds, "epoch_seconds": epoch_seconds},
    }


def eval_json(report: Any, schema_version: int, recorded: dict[str, Any]) -> dict[str, Any]:
    """``report`` (an eval report) as JSON: its result's fields, then what the checkpoint
    ``recorded``, wall times under ``timing``."""
    result = report.result.to_dict()
    timing = result.pop("timing")
    return {
        "schema_version": schema_version,
        "checkpoint": report.checkpoint,
        "architecture": report.architecture,
        "data": report.data,
        "device": report.device,
        "batch_size": report.batch_size,
        **result,
        **recorded,
        "timing": timing,
    }
