"""``ssc train`` and ``ssc eval`` on the algorithmic tasks, as library calls returning results.

:mod:`soft_share_cli.pipeline.classification` hands over here when the data spec names a task
(``maze:...``,
``prefix-sums:...``) or when ``--iterations`` is asked for; nothing here renders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soft_share_cli.errors import InputError

SCHEMA_VERSION = 1

Progress = Callable[[str, int, int], None]


def is_task_spec(data_spec: str) -> bool:
    """Whether ``data_spec`` names a generated task (checked by its kind, before parsing)."""
    from soft_share_cli.data.spec import TASK_KINDS

    kind = data_spec.strip().partition(":")[0].lower()
    return kind in {k.value for k in TASK_KINDS}


@dataclass(frozen=True)
class TaskEvalReport:
    """``ssc eval`` on a task: which network, which data, how many solved."""

    checkpoint: str
    architecture: str
    data: str
    data_description: str
    device: str
    batch_size: int
    result: Any  # task_evaluation.TaskEvalResult
    trained_iterations: int | None  # a looped network's trained count, None for others
    recorded_exact: float | None  # exact-solve rate stored at save time for the same spec

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall times sit under ``timing``, the rest repeats exactly run to run."""
        from soft_share_cli.pipeline.reports import eval_json

        return eval_json(self, SCHEMA_VERSION, {
            "trained_iterations": self.trained_iterations,
            "recorded_exact": self.recorded_exact,
        })


def run_task_eval(
    path: str | Path,
    data_spec: str,
    *,
    iterations: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Progress | None = None,
    model_spec: str | None = None,
) -> TaskEvalReport:
    """Measure a network's exact-solve rate and per-pixel accuracy on a task's test split.

    ``iterations`` runs a looped network's body that many times instead of the trained count.

    Raises:
        InputError: ``iterations`` for a network without a loop that can run longer, or < 1;
            data that is not a task; a network whose output is not per pixel.
    """
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.data.spec import parse_data_spec
    from soft_share_cli.data.tasks import Task, TaskSpec, describe_task
    from soft_share_cli.errors import DataError
    from soft_share_cli.evaluation.tasks import evaluate_task
    from soft_share_cli.folding.looped import LoopedFCN
    from soft_share_cli.pipeline.network import open_network

    if iterations is not None and iterations < 1:
        raise InputError(f"--iterations must be at least 1, got {iterations}")
    parsed = parse_data_spec(data_spec)
    ckpt = load_checkpoint(path)
    model, name, channels = open_network(ckpt, path, model_spec)
    trained = model.trained_iterations if isinstance(model, LoopedFCN) else None
    if iterations is not None:
        if not isinstance(model, LoopedFCN):
            raise InputError(
                f"{path}: {name} has no loop that can run longer; --iterations needs a looped "
                "network: fold an SFCN with `ssc fold CKPT -o FILE.safetensors`"
            )
        model.iterations = iterations
        name = model.describe()
    if not is_task_spec(data_spec):
        raise DataError(
            f"--iterations reports exact-solve rates; {data_spec} is not a task "
            "(use maze:size=N or prefix-sums:length=N)"
        )
    data = load_data(parsed, split="test")
    if channels and data.in_channels != channels:
        raise DataError(
            f"{data_spec} has {data.in_channels} input channels but {name} expects {channels}"
        )
    o = parsed.options
    description = describe_task(TaskSpec(Task(parsed.kind.value), o["size"], o["count"]))
    result = evaluate_task(
        model,
        data,
        batch_size=batch_size,
        device=device,
        progress=(lambda done, total: progress("evaluating", done, total)) if progress else None,
    )
    meta = ckpt.metadata
    recorded = meta.get("test_exact") if meta.get("data") == data_spec and not iterations else None
    return TaskEvalReport(
        str(path), name, data_spec, description, device, batch_size, result, trained, recorded
    )


@dataclass(frozen=True)
class TaskTrainReport:
    """``ssc train`` on a task: what was trained, how it went, where the checkpoint is."""

    output: str
    architecture: str
    data: str
    history: tuple[Any, ...]  # task_training.TaskEpochRecord per epoch
    steps_to: dict[str, int | None]
    parameters: int
    file_bytes: int
    seconds: float
    resumed_epochs: int = 0  # finished epochs restored from OUTPUT.partial (--resume)

    @property
    def test_exact(self) -> float | None:
        return self.history[-1].test_exact if self.history else None

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall times sit under ``timing``, the rest repeats exactly run to run."""
        from soft_share_cli.pipeline.reports import train_json

        metrics = {"steps_to": dict(self.steps_to), "test_exact": self.test_exact}
        return train_json(self, SCHEMA_VERSION, metrics)


def run_task_train(
    config: Any,
    data_spec: str,
    output: str | Path,
    *,
    command: str | None = None,
    progress: Progress | None = None,
    resume: bool = False,
) -> TaskTrainReport:
    """Train ``config`` (a TaskTrainConfig) on a task and write the checkpoint atomically.

    Resumable as ``ssc train`` on images: the state after every epoch is kept in
    ``OUTPUT.partial`` and ``resume`` continues from it
    (:func:`~soft_share_cli.training.resume.train_resumably`).
    """
    from soft_share_cli.models.builder import ArchSpec
    from soft_share_cli.models.params import count_parameters
    from soft_share_cli.pipeline.reports import training_splits
    from soft_share_cli.training.resume import train_resumably
    from soft_share_cli.training.tasks import (
        TaskTrainResult,
        task_checkpoint_metadata,
        train_task,
    )

    if not is_task_spec(data_spec):
        raise InputError(
            f"--arch {config.arch} trains on per-pixel tasks (maze:size=N, prefix-sums:length=N), "
            f"not {data_spec}; use --arch swrn or wrn for image classification"
        )
    train_data, test_data = training_splits(data_spec, output)

    def run(on_state: Any, state: Any) -> TaskTrainResult:
        return train_task(
            config, train_data, test_data, progress=progress, on_state=on_state, resume=state
        )

    def metadata(result: TaskTrainResult) -> dict[str, Any]:
        return task_checkpoint_metadata(result, config, train_data, command)

    result, meta, resumed = train_resumably(output, config, data_spec, resume, run, metadata)
    return TaskTrainReport(
        output=str(output),
        architecture=ArchSpec(result.arch, result.arch_kwargs).describe(),
        data=data_spec,
        history=result.history,
        steps_to=meta["steps_to"],
        parameters=count_parameters(result.model),
        file_bytes=Path(output).stat().st_size,
        seconds=result.seconds,
        resumed_epochs=resumed,
    )
