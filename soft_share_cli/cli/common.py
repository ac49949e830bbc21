"""What the commands share: the ``--debug`` flag, the analysis options, the check of outputs.

Plain click: importing this module loads neither numpy nor torch (``ssc --help`` imports it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import click

from soft_share_cli.analysis.defaults import DEFAULT_THRESHOLD

_state = {"debug": False}  # set by --debug; read when a failure is reported


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _state["debug"] = True


def common(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command takes."""
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="Show the full traceback when something fails.",
    )(func)


def _check_io(
    outputs: dict[str, str | None],
    checkpoint: str | None = None,
    data_spec: str | None = None,
    model_spec: str | None = None,
) -> None:
    """Refuse, before any work, outputs that cannot be written or are an input (exit 2).

    The inputs are the checkpoint, the file or directory of ``--data`` and the file of a
    ``--model path/to/file.py:callable``; see :func:`soft_share_cli.files.check_outputs`.
    """
    from soft_share_cli.files import check_outputs

    inputs: dict[str, Any] = {"CHECKPOINT": checkpoint}
    if data_spec is not None:
        from soft_share_cli.data.spec import parse_data_spec

        inputs["--data"] = parse_data_spec(data_spec).path
    if model_spec is not None:
        where = model_spec.rpartition(":")[0]
        if where.endswith(".py") or "/" in where or os.sep in where:
            inputs["--model"] = where
    check_outputs(outputs, inputs)


class ThresholdType(click.ParamType):
    """A number in [0, 1], or ``auto`` where the command allows it."""

    name = "threshold"

    def __init__(self, allow_auto: bool = False) -> None:
        self.allow_auto = allow_auto

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float) or (self.allow_auto and value == "auto"):
            return value
        try:
            number = float(value)
        except ValueError:
            wanted = "a number in [0, 1] or 'auto'" if self.allow_auto else "a number in [0, 1]"
            self.fail(f"{value!r} is not {wanted}", param, ctx)
        if not 0.0 <= number <= 1.0:
            self.fail(f"{number} is not in [0, 1]", param, ctx)
        return number


class _EnumChoice(click.Choice[str]):
    """A ``click.Choice`` of an enum's values, read from the enum only when click needs them.

    The enums (:class:`~soft_share_cli.analysis.similarity.Metric`,
    :class:`~soft_share_cli.analysis.clustering.Linkage`) live in modules that import numpy,
    which ``ssc --help`` must not load; a command's own help and parsing read them.
    """

    def __init__(self, values: Callable[[], Iterable[str]]) -> None:
        self._values = values
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._values())

    @choices.setter
    def choices(self, value: tuple[str, ...]) -> None:
        raise AttributeError("the choices are the enum's values")


def _metrics() -> list[str]:
    from soft_share_cli.analysis.similarity import Metric

    return [m.value for m in Metric]


def _linkages() -> list[str]:
    from soft_share_cli.analysis.clustering import Linkage

    return [m.value for m in Linkage]


def analysis_options(allow_auto: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """The options that decide which layers are the same layer (analyze, plot, fold)."""
    threshold_help = "Layers with similarity >= this may share one weight"
    if allow_auto:
        threshold_help += "; 'auto' searches (needs --data and --max-drop)"
    options = [
        click.option(
            "--threshold",
            type=ThresholdType(allow_auto),
            default=DEFAULT_THRESHOLD,
            show_default=True,
            help=threshold_help + ".",
        ),
        click.option(
            "--metric",
            type=_EnumChoice(_metrics),
            default="coefficients",
            show_default=True,
            help="coefficients: the paper's LSM; weight: cosine of the generated weights.",
        ),
        click.option(
            "--linkage",
            type=_EnumChoice(_linkages),
            default="complete",
            show_default=True,
            help="complete: every pair in a cluster meets the threshold.",
        ),
        click.option("--signed", is_flag=True, help="Keep the sign of the cosine in the LSM."),
    ]

    def decorate(func: Callable[..., Any]) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _options(threshold: float, metric: str, linkage: str, signed: bool) -> Any:
    """The library's :class:`~soft_share_cli.analysis.analyze.AnalysisOptions` of the options."""
    from soft_share_cli.analysis.analyze import AnalysisOptions
    from soft_share_cli.analysis.clustering import Linkage
    from soft_share_cli.analysis.similarity import Metric

    return AnalysisOptions(threshold, Metric(metric), Linkage(linkage), signed)
