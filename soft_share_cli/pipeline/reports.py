"""What ``ssc train`` and ``ssc eval`` share across task kinds (images, per-pixel tasks): the
JSON shape of their reports and the preparation of a training run."""

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


def training_splits(data_spec: str, output: Any) -> tuple[Any, Any]:
    """The train and test splits of ``data_spec``, once ``output`` is known to be writable (so a
    run fails now, not after an hour of training)."""
    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.data.spec import parse_data_spec
    from soft_share_cli.files import check_output

    parsed = parse_data_spec(data_spec)
    check_output(output)
    return load_data(parsed, split="train"), load_data(parsed, split="test")
