"""``ssc eval --iterations 10,20,40`` and ``--iterations auto``: a looped network on a task.

:func:`run_sweep` scores several iteration counts in one pass, :func:`run_auto` runs each
instance until its output stops changing (:mod:`soft_share_cli.evaluation.iterations` says how);
both give an :class:`IterationEvalReport`. A single count is :func:`~soft_share_cli.pipeline.eval.
run_eval`'s; :func:`auto_options` turns the options of ``auto`` into the library's, refusing them
for the other modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from soft_share_cli.errors import InputError
from soft_share_cli.pipeline.eval import SCHEMA_VERSION, Progress, open_for_eval, users_forward


@dataclass(frozen=True)
class IterationEvalReport:
    """``ssc eval`` of a looped network at several counts (a sweep) or until it converges."""

    kind: ClassVar[str] = "iterations"

    checkpoint: str
    architecture: str
    data: str
    data_description: str
    device: str
    batch_size: int
    result: Any  # evaluation.iterations.SweepResult or AutoResult

    @property
    def mode(self) -> str:
        """``"sweep"`` or ``"auto"``."""
        return str(self.result.scores()["mode"])

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall times sit under ``timing``, the rest repeats exactly run to run."""
        from soft_share_cli.pipeline.reports import eval_json

        return eval_json(self, SCHEMA_VERSION, {})


def auto_options(
    mode: Any,
    *,
    patience: int | None = None,
    tolerance: float | None = None,
    max_iterations: int | None = None,
) -> Any:
    """The :class:`~soft_share_cli.evaluation.iterations.AutoOptions` of ``--iterations auto``
    (``mode`` an :class:`~soft_share_cli.evaluation.iterations.IterationMode`, or None when
    ``--iterations`` is not given), None for the other modes.

    Raises:
        InputError: one of the options given without ``auto``, or out of range.
    """
    from soft_share_cli.evaluation.iterations import AutoOptions, IterationMode

    given = {"--patience": patience, "--tolerance": tolerance, "--max-iterations": max_iterations}
    if mode is not IterationMode.AUTO:
        for name, value in given.items():
            if value is not None:
                raise InputError(
                    f"{name} applies to --iterations auto (the stopping rule); leave it out"
                )
        return None
    if patience is None:
        return AutoOptions(tolerance=tolerance, max_iterations=max_iterations)
    return AutoOptions(patience, tolerance, max_iterations)


def run_sweep(
    path: str | Path,
    data_spec: str,
    counts: Sequence[int],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Progress | None = None,
    model_spec: str | None = None,
    key: str | None = None,
) -> IterationEvalReport:
    """The exact-solve rate and pixel accuracy of a looped network at each of ``counts``.

    Raises:
        InputError: a network without a loop that can run longer; a bad count.
        DataError: data that is not a task, or that the network does not fit.
    """
    from soft_share_cli.evaluation.iterations import sweep_iterations

    def measure(model: Any, data: Any, **run: Any) -> Any:
        return sweep_iterations(model, data, counts, **run)

    where = (path, data_spec, model_spec, key)
    return _run_loop(where, "--iterations", "sweeping", measure, batch_size, device, progress)


def run_auto(
    path: str | Path,
    data_spec: str,
    options: Any = None,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    progress: Progress | None = None,
    model_spec: str | None = None,
    key: str | None = None,
) -> IterationEvalReport:
    """A looped network run on each instance until its output stops changing (``options``:
    :class:`~soft_share_cli.evaluation.iterations.AutoOptions`, its defaults when None).

    Raises:
        InputError: a network without a loop that can run longer; a cap within the patience.
        DataError: data that is not a task, or that the network does not fit.
    """
    from soft_share_cli.evaluation.iterations import evaluate_auto

    def measure(model: Any, data: Any, **run: Any) -> Any:
        return evaluate_auto(model, data, options, **run)

    where = (path, data_spec, model_spec, key)
    return _run_loop(where, "--iterations auto", "iterating", measure, batch_size, device, progress)


def run_any(
    path: str | Path,
    data_spec: str,
    request: Any,
    auto: Any = None,
    **options: Any,
) -> Any:
    """What ``ssc eval --iterations`` asks for: :func:`~soft_share_cli.pipeline.eval.run_eval`
    for no request or one count, :func:`run_sweep` or :func:`run_auto` (with ``auto``, the
    :class:`~soft_share_cli.evaluation.iterations.AutoOptions`) for the others. ``request`` is
    an :class:`~soft_share_cli.evaluation.iterations.IterationRequest` or None; ``options``
    are those every run takes (batch_size, device, progress, model_spec, key)."""
    from soft_share_cli.evaluation.iterations import IterationMode
    from soft_share_cli.pipeline.eval import run_eval

    if request is None or request.mode is IterationMode.FIXED:
        count = None if request is None else request.count
        return run_eval(path, data_spec, iterations=count, **options)
    if request.mode is IterationMode.SWEEP:
        return run_sweep(path, data_spec, request.counts, **options)
    return run_auto(path, data_spec, auto, **options)


def _run_loop(
    where: tuple[Any, str, str | None, str | None],
    loop: str,
    stage: str,
    measure: Any,
    batch_size: int,
    device: str,
    progress: Progress | None,
) -> IterationEvalReport:
    """Open ``where`` (path, data spec, model spec, key) for a loop that runs longer and
    ``measure(model, data, batch_size=, device=, progress=)`` it: a sweep or auto."""
    path, data_spec, model_spec, key = where
    opened = open_for_eval(path, data_spec, model_spec, key, task=True, loop=loop)
    callback = (lambda done, total: progress(stage, done, total)) if progress else None
    with users_forward(model_spec):
        result = measure(
            opened.model, opened.data, batch_size=batch_size, device=device, progress=callback
        )
    return IterationEvalReport(
        str(path), opened.name, data_spec, opened.description, device, batch_size, result
    )
