"""``ssc eval``: a network's accuracy on a data set, for every kind of file and of data.

One :func:`run_eval` for classifiers (top-1, top-5: :class:`EvalReport`) and per-pixel tasks
(exact solves, pixel accuracy: :class:`TaskEvalReport`); the network comes from
:func:`soft_share_cli.pipeline.network.open_network`, whatever kind of file holds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from soft_share_cli.data.spec import TASK_KINDS
from soft_share_cli.errors import DataError, InputError, SscError

SCHEMA_VERSION = 1

Progress = Callable[[str, int, int], None]


def is_task_spec(data_spec: str) -> bool:
    """Whether ``data_spec`` names a generated task (checked by its kind, before parsing)."""
    kind = data_spec.strip().partition(":")[0].lower()
    return kind in {k.value for k in TASK_KINDS}


@dataclass(frozen=True)
class EvalReport:
    """``ssc eval`` of a classifier: which network on which data, and how well it did."""

    kind: ClassVar[str] = "classification"

    checkpoint: str
    architecture: str
    data: str
    device: str
    batch_size: int
    result: Any  # evaluation.classification.EvalResult
    recorded_top1: float | None  # accuracy stored in the checkpoint for the same data, if any

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall times sit under ``timing``, the rest repeats exactly run to run."""
        from soft_share_cli.pipeline.reports import eval_json

        return eval_json(self, SCHEMA_VERSION, {"recorded_top1": self.recorded_top1})


@dataclass(frozen=True)
class TaskEvalReport:
    """``ssc eval`` on a task: which network, which data, how many solved."""

    kind: ClassVar[str] = "task"

    checkpoint: str
    architecture: str
    data: str
    data_description: str
    device: str
    batch_size: int
    result: Any  # evaluation.tasks.TaskEvalResult
    trained_iterations: int | None  # a looped network's trained count, None for others
    recorded_exact: float | None  # exact-solve rate stored at save time for the same spec

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall times sit under ``timing``, the rest repeats exactly run to run."""
        from soft_share_cli.pipeline.reports import eval_json

        return eval_json(
            self,
            SCHEMA_VERSION,
            {
                "trained_iterations": self.trained_iterations,
                "recorded_exact": self.recorded_exact,
            },
        )


def run_eval(
    path: str | Path,
    data_spec: str,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Progress | None = None,
    model_spec: str | None = None,
    iterations: int | None = None,
    key: str | None = None,
) -> EvalReport | TaskEvalReport:
    """Load a checkpoint, rebuild its network and measure it on ``data_spec``'s test split.

    ``model_spec`` ("module:callable") builds the user's own network for checkpoints of
    architectures ssc does not know, folded or not. Task data (``maze:``, ``prefix-sums:``) and
    ``iterations`` (a looped network's body run that many times instead of the trained count)
    give a :class:`TaskEvalReport`. ``key`` names the entry of the checkpoint that holds the
    state dict (see :func:`~soft_share_cli.checkpoints.load.load_checkpoint`). Sweeps over
    iteration counts and ``auto`` are :mod:`soft_share_cli.pipeline.eval_iterations`.

    Raises:
        InputError: ``iterations`` for a network without a loop that can run longer, or
            outside 1..``limits.MAX_ITERATIONS``.
        DataError: ``iterations`` on data that is not a task; data the network does not fit.
    """
    from soft_share_cli.limits import MAX_ITERATIONS

    task = iterations is not None or is_task_spec(data_spec)
    if iterations is not None and not 1 <= iterations <= MAX_ITERATIONS:
        raise InputError(
            f"--iterations must be between 1 and {MAX_ITERATIONS} (limits.MAX_ITERATIONS), "
            f"got {iterations}"
        )
    opened = open_for_eval(
        path, data_spec, model_spec, key, task=task, loop="--iterations" if iterations else None
    )
    model, name = opened.model, opened.name
    if iterations is not None:
        model.iterations = iterations
        name = model.describe()
    callback = (lambda done, total: progress("evaluating", done, total)) if progress else None
    options = {"batch_size": batch_size, "device": device, "progress": callback}
    if not task:
        from soft_share_cli.evaluation.classification import evaluate

        with users_forward(model_spec):
            result = evaluate(model, opened.data, **options)  # type: ignore[arg-type]
        recorded_top1 = _recorded_top1(opened.ckpt, data_spec)
        return EvalReport(str(path), name, data_spec, device, batch_size, result, recorded_top1)
    from soft_share_cli.evaluation.tasks import evaluate_task

    assert opened.description is not None  # task data is described
    with users_forward(model_spec):
        task_result = evaluate_task(model, opened.data, **options)  # type: ignore[arg-type]
    meta = opened.ckpt.metadata
    recorded = meta.get("test_exact") if meta.get("data") == data_spec and not iterations else None
    return TaskEvalReport(
        str(path),
        name,
        data_spec,
        opened.description,
        device,
        batch_size,
        task_result,
        opened.trained,
        recorded,
    )


@dataclass(frozen=True)
class Opened:
    """What an evaluation runs on: the checkpoint, its network, the test split."""

    ckpt: Any  # checkpoints.load.Checkpoint
    model: Any  # the network, in eval mode
    name: str  # the network described
    trained: int | None  # a looped network's trained iteration count, None for others
    data: Any  # data.loaders.Dataset, the test split
    description: str | None  # a task's description (mazes of 4x4 cells ...), None for others


def open_for_eval(
    path: str | Path,
    data_spec: str,
    model_spec: str | None,
    key: str | None,
    *,
    task: bool,
    loop: str | None,
) -> Opened:
    """Open the checkpoint's network and the test split of ``data_spec``, checked to fit.

    ``loop`` names the option (``--iterations``) that needs a looped network and task data, or
    is None. The spec is parsed before the checkpoint is touched.

    Raises:
        InputError: ``loop`` given for a network without a loop that can run longer.
        DataError: ``loop`` given with data that is not a task; data the network does not fit.
    """
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.data.spec import parse_data_spec
    from soft_share_cli.evaluation.tasks import check_data_dims, runs_longer
    from soft_share_cli.pipeline.network import open_network

    parsed = parse_data_spec(data_spec)  # fail on a bad spec before touching the checkpoint
    ckpt = load_checkpoint(path, key=key)
    model, name, channels = open_network(ckpt, path, model_spec)
    trained = model.trained_iterations if task and runs_longer(model) else None
    if loop is not None:
        if not runs_longer(model):
            raise InputError(
                f"{path}: {name} has no loop that can run longer; {loop} needs a looped "
                "network: fold an SFCN with `ssc fold CKPT -o FILE.safetensors`, or train "
                "--arch rfcn"
            )
        if not is_task_spec(data_spec):
            raise DataError(
                f"{loop} reports exact-solve rates; {data_spec} is not a task "
                "(use maze:size=N or prefix-sums:length=N)"
            )
    data = load_data(parsed, split="test")
    if channels and data.in_channels != channels:
        raise DataError(
            f"{data_spec} has {data.in_channels} input channels but {name} expects {channels}"
        )
    check_data_dims(model, data, data_spec, name)
    description = None
    if task:
        from soft_share_cli.data.tasks import Task, TaskSpec, describe_task

        o = parsed.options
        description = describe_task(TaskSpec(Task(parsed.kind.value), o["size"], o["count"]))
    return Opened(ckpt, model, name, trained, data, description)


@contextlib.contextmanager
def users_forward(model_spec: str | None) -> Iterator[None]:
    """A failure inside the forward of the user's own network (``--model``) is the network's:
    one line naming it (exit 2), not an internal error of ssc."""
    if model_spec is None:
        yield
        return
    try:
        yield
    except SscError:
        raise
    except Exception as exc:
        from soft_share_cli.models.user import _first_line

        raise InputError(
            f"the network built by {model_spec} failed on the data: {_first_line(exc)}"
        ) from exc


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
