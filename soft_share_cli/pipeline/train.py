"""``ssc train``: train a network of any kind and write a self-describing checkpoint.

One :func:`run_train` for image classifiers (:class:`~soft_share_cli.training.classification.\
TrainConfig`, :class:`TrainReport`) and per-pixel task networks
(:class:`~soft_share_cli.training.tasks.TaskTrainConfig`, :class:`TaskTrainReport`); both are
resumable (:mod:`soft_share_cli.training.resume`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from soft_share_cli.errors import InputError
from soft_share_cli.pipeline.eval import is_task_spec

SCHEMA_VERSION = 1

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TrainReport:
    """``ssc train`` of a classifier: what was trained, how it went, where the checkpoint is."""

    kind: ClassVar[str] = "classification"

    output: str
    architecture: str
    data: str
    history: tuple[Any, ...]  # training.classification.EpochRecord per epoch
    test_top1: float | None
    parameters: int
    file_bytes: int
    seconds: float
    resumed_epochs: int = 0  # finished epochs restored from OUTPUT.partial (--resume)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall times sit under ``timing``, the rest repeats exactly run to run."""
        from soft_share_cli.pipeline.reports import train_json

        return train_json(self, SCHEMA_VERSION, {"test_top1": self.test_top1})


@dataclass(frozen=True)
class TaskTrainReport:
    """``ssc train`` on a task: what was trained, how it went, where the checkpoint is."""

    kind: ClassVar[str] = "task"

    output: str
    architecture: str
    data: str
    history: tuple[Any, ...]  # training.tasks.TaskEpochRecord per epoch
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


def run_train(
    config: Any,
    data_spec: str,
    output: str | Path,
    *,
    command: str | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    on_epoch: Callable[[Any], None] | None = None,
) -> TrainReport | TaskTrainReport:
    """Train ``config`` on ``data_spec`` and write a self-describing checkpoint atomically.

    A ``TrainConfig`` trains an image classifier, a ``TaskTrainConfig`` a task network. The
    state after every epoch goes to ``OUTPUT.partial`` (see :mod:`soft_share_cli.training.resume`);
    ``resume`` continues from it; ``on_epoch`` gets each epoch's record as soon as it is known.
    Ctrl-C raises :class:`~soft_share_cli.errors.Interrupted`
    saying what was kept; ``output`` is then untouched.
    """
    from soft_share_cli.models.builder import ArchSpec
    from soft_share_cli.models.params import count_parameters
    from soft_share_cli.pipeline.reports import training_splits
    from soft_share_cli.training import classification, tasks
    from soft_share_cli.training.resume import train_resumably

    task = isinstance(config, tasks.TaskTrainConfig)
    if task and not is_task_spec(data_spec):
        raise InputError(
            f"--arch {config.arch} trains on per-pixel tasks (maze:size=N, prefix-sums:length=N), "
            f"not {data_spec}; use --arch swrn or wrn for image classification"
        )
    if not task and is_task_spec(data_spec):
        raise InputError(
            f"{config.arch} classifies whole images; {data_spec} labels every pixel or "
            "position: train --arch sfcn (shared), fcn (plain) or rfcn (recurrent) on it"
        )
    train_data, test_data = training_splits(data_spec, output)
    trainer: Callable[..., Any] = tasks.train_task if task else classification.train

    def run(on_state: Any, state: Any) -> Any:
        return trainer(
            config,
            train_data,
            test_data,
            progress=progress,
            on_state=on_state,
            on_epoch=on_epoch,
            resume=state,
        )

    def metadata(result: Any) -> dict[str, Any]:
        if task:
            return tasks.task_checkpoint_metadata(result, config, train_data, command)
        meta = classification.checkpoint_metadata(result, config, train_data, command)
        # The keys `ssc eval` compares against: same data spec -> same accuracy, to the sample.
        meta["data"] = data_spec
        meta["test_top1"] = result.test_top1
        return meta

    result, meta, resumed = train_resumably(output, config, data_spec, resume, run, metadata)
    common = {
        "output": str(output),
        "architecture": ArchSpec(result.arch, result.arch_kwargs).describe(),
        "data": data_spec,
        "history": tuple(result.history),
        "parameters": count_parameters(result.model),
        "file_bytes": Path(output).stat().st_size,
        "seconds": result.seconds,
        "resumed_epochs": resumed,
    }
    if task:
        return TaskTrainReport(steps_to=meta["steps_to"], **common)
    return TrainReport(test_top1=result.test_top1, **common)
