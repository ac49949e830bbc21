"""What each command does, as library calls returning result dataclasses (no rendering here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soft_share_cli._version import __version__

SCHEMA_VERSION = 1

Progress = Callable[[str, int, int], None]


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "checkpoint": self.path,
            "format": self.format,
            "container": self.container,
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


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Load a checkpoint safely and describe it; an unknown architecture is reported, not raised."""
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.errors import ArchitectureError
    from soft_share_cli.folding.kinds import folded_name
    from soft_share_cli.models.builder import architecture_of
    from soft_share_cli.models.params import count_state_dict_parameters

    ckpt = load_checkpoint(path, arrays=True)  # shapes and storages only: no torch needed
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
    )


@dataclass(frozen=True)
class EvalReport:
    """``ssc eval``: which network on which data, and how well it did."""

    checkpoint: str
    architecture: str
    data: str
    device: str
    batch_size: int
    result: Any  # evaluation.EvalResult
    recorded_top1: float | None  # accuracy stored in the checkpoint for the same data, if any

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall times sit under ``timing``, the rest repeats exactly run to run."""
        from soft_share_cli.pipeline.reports import eval_json

        return eval_json(self, SCHEMA_VERSION, {"recorded_top1": self.recorded_top1})


def run_eval(
    path: str | Path,
    data_spec: str,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Progress | None = None,
    model_spec: str | None = None,
    iterations: int | None = None,
) -> Any:
    """Load a checkpoint, rebuild its network and measure it on ``data_spec``'s test split.

    ``model_spec`` ("module:callable") builds the user's own network for checkpoints of
    architectures ssc does not know, folded or not. Task data (``maze:``, ``prefix-sums:``) and
    ``iterations`` (a looped network run longer) give a ``task_pipeline.TaskEvalReport``.
    """
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.data.spec import parse_data_spec
    from soft_share_cli.evaluation.classification import evaluate
    from soft_share_cli.pipeline.network import open_network
    from soft_share_cli.pipeline.tasks import is_task_spec, run_task_eval

    if iterations is not None or is_task_spec(data_spec):
        return run_task_eval(
            path,
            data_spec,
            iterations=iterations,
            batch_size=batch_size,
            device=device,
            progress=progress,
            model_spec=model_spec,
        )

    parsed = parse_data_spec(data_spec)  # fail on a bad spec before touching the checkpoint
    ckpt = load_checkpoint(path)
    model, name, channels = open_network(ckpt, path, model_spec)
    data = load_data(parsed, split="test")
    if channels and data.in_channels != channels:
        from soft_share_cli.errors import DataError

        raise DataError(
            f"{data_spec} has {data.in_channels} input channels but {name} expects {channels}"
        )
    result = evaluate(
        model,
        data,
        batch_size=batch_size,
        device=device,
        progress=(lambda done, total: progress("evaluating", done, total)) if progress else None,
    )
    return EvalReport(
        str(path), name, data_spec, device, batch_size, result, _recorded_top1(ckpt, data_spec)
    )


def _recorded_top1(ckpt: Any, data_spec: str) -> float | None:
    """The top-1 a checkpoint says it had on ``data_spec`` when it was written, if any."""
    meta = ckpt.metadata

    def part(value: Any, key: str) -> Any:  # metadata comes from the file: any shape at all
        return value.get(key) if isinstance(value, dict) else None

    if ckpt.container == "ssc-folded":
        measured = part(part(meta, "report"), "data")
        if part(measured, "spec") != data_spec:
            return None
        final = part(measured, "recalibrated") or part(measured, "folded")
        top1 = part(final, "top1")
    else:
        top1 = part(meta, "test_top1") if part(meta, "data") == data_spec else None
    # A scalar is shown as stored (a number as a percentage, anything else as is, inert).
    return top1 if isinstance(top1, str | int | float) else None  # type: ignore[return-value]


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


@dataclass(frozen=True)
class TrainReport:
    """``ssc train``: what was trained, how it went, and where the checkpoint is."""

    output: str
    architecture: str
    data: str
    history: tuple[Any, ...]  # training.EpochRecord per epoch
    test_top1: float | None
    parameters: int
    file_bytes: int
    seconds: float
    resumed_epochs: int = 0  # finished epochs restored from OUTPUT.partial (--resume)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall times sit under ``timing``, the rest repeats exactly run to run."""
        from soft_share_cli.pipeline.reports import train_json

        return train_json(self, SCHEMA_VERSION, {"test_top1": self.test_top1})


def run_train(
    config: Any,
    data_spec: str,
    output: str | Path,
    *,
    command: str | None = None,
    progress: Progress | None = None,
    resume: bool = False,
) -> TrainReport:
    """Train ``config`` on ``data_spec`` and write a self-describing checkpoint atomically.

    The state after every epoch goes to ``OUTPUT.partial`` (see
    :mod:`soft_share_cli.training.resume`);
    ``resume`` continues from it. Ctrl-C raises :class:`~soft_share_cli.errors.Interrupted`
    saying what was kept; ``output`` is then untouched. A ``task_training.TaskTrainConfig``
    trains a task network instead (``task_pipeline.run_task_train``, resumable alike).
    """
    from soft_share_cli.training.tasks import TaskTrainConfig

    if isinstance(config, TaskTrainConfig):
        from soft_share_cli.pipeline.tasks import run_task_train

        report = run_task_train(
            config, data_spec, output, command=command, progress=progress, resume=resume
        )
        return report  # type: ignore[return-value]  # a TaskTrainReport, rendered alike
    from soft_share_cli.pipeline.tasks import is_task_spec

    if is_task_spec(data_spec):
        from soft_share_cli.errors import InputError

        raise InputError(
            f"{config.arch} classifies whole images; {data_spec} labels every pixel: "
            "train --arch sfcn (shared) or --arch fcn (plain) on it"
        )
    from soft_share_cli.models.builder import ArchSpec
    from soft_share_cli.models.params import count_parameters
    from soft_share_cli.pipeline.reports import training_splits
    from soft_share_cli.training.classification import TrainResult, checkpoint_metadata, train
    from soft_share_cli.training.resume import train_resumably

    train_data, test_data = training_splits(data_spec, output)

    def run(on_state: Any, state: Any) -> TrainResult:
        return train(
            config, train_data, test_data, progress=progress, on_state=on_state, resume=state
        )

    def metadata(result: TrainResult) -> dict[str, Any]:
        meta = checkpoint_metadata(result, config, train_data, command)
        # The keys `ssc eval` compares against: same data spec -> same accuracy, to the sample.
        meta["data"] = data_spec
        meta["test_top1"] = result.test_top1
        return meta

    result, _, resumed = train_resumably(output, config, data_spec, resume, run, metadata)
    return TrainReport(
        output=str(output),
        architecture=ArchSpec(result.arch, result.arch_kwargs).describe(),
        data=data_spec,
        history=tuple(result.history),
        test_top1=result.test_top1,
        parameters=count_parameters(result.model),
        file_bytes=Path(output).stat().st_size,
        seconds=result.seconds,
        resumed_epochs=resumed,
    )
