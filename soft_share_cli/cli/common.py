"""What the commands share: the ``--debug`` flag, the option builders (analysis, ``--key``, ...),
the check of outputs.

Plain click: importing this module loads neither numpy nor torch (``ssc --help`` imports it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from soft_share_cli.analysis.defaults import DEFAULT_THRESHOLD, Linkage, Metric
from soft_share_cli.data.spec import DATA_HELP

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


def check_io(
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


def choice_option(name: str, values: Any, default: str, help: str | None = None) -> Any:
    """An option that takes one of ``values`` (strings, or an enum's values)."""
    names = [getattr(value, "value", value) for value in values]
    return click.option(
        name, type=click.Choice(names), default=default, show_default=True, help=help
    )


def amount_option(name: str, default: float | None = None, help: str | None = None) -> Any:
    """An option that takes a number >= 0 (weights of a loss, tolerances, budgets)."""
    shown = default is not None
    return click.option(
        name, type=click.FloatRange(min=0), default=default, show_default=shown, help=help
    )


def count_option(name: str, default: int | None = None, help: str | None = None) -> Any:
    """An option that takes a whole number >= 1 (batch sizes, epochs, block counts, ...)."""
    shown = default is not None
    return click.option(
        name, type=click.IntRange(min=1), default=default, show_default=shown, help=help
    )


def output_option(help: str | None = None) -> Any:
    """The required ``-o/--output`` file."""
    return click.option("-o", "--output", required=True, type=click.Path(path_type=str), help=help)


def data_option(help: str | None = None, required: bool = False) -> Any:
    """``--data SPEC`` (the spec forms of :mod:`soft_share_cli.data.spec`, then ``help``)."""
    text = DATA_HELP if help is None else f"{DATA_HELP} {help}"
    return click.option("--data", "data_spec", required=required, help=text)


def model_option(help: str) -> Any:
    """``--model MODULE:CALLABLE``: build the user's own network (imports the user's code)."""
    return click.option("--model", "model_spec", metavar="MODULE:CALLABLE", help=help)


KEY_HELP = (
    "The entry of CHECKPOINT that holds its weights, dotted for nesting (model.state_dict, ema). "
    "By default the first that does of state_dict, model, model_state_dict, net, ..., then the "
    "EMA copies (ema, model_ema, ...); `ssc info` shows which was used and what else is there."
)


def _key_given(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value:
        raise click.BadParameter("an empty key names no entry", ctx, param)
    return value


def key_option(help: str | None = None) -> Any:
    """``--key NAME``: which entry of a checkpoint holds its state dict (the ``key`` argument of
    :func:`soft_share_cli.checkpoints.load.load_checkpoint`); ``help`` is added to the help."""
    text = KEY_HELP if help is None else f"{KEY_HELP} {help}"
    return click.option("--key", "key", metavar="NAME", callback=_key_given, help=text)


def device_option(
    help: str = "Where the networks run (cuda needs a GPU and a CUDA build of torch; "
    "refused where there is none).",
) -> Any:
    """``--device cpu|cuda``."""
    return choice_option("--device", ["cpu", "cuda"], "cpu", help)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout."
)
checkpoint_argument = click.argument("checkpoint", type=click.Path(path_type=str))


BANK_KEY_HELP = (
    "Glob on whole state-dict keys naming the template banks (e.g. '*.w_store'): replaces the "
    "naming rules (the authors' 5-d '...templates', any (K,O,I,k,k) or (K,O,I) tensor near a "
    "layer) and counts only the keys it matches. The report names the rule that matched; a "
    "pattern that matches no bank-shaped tensor is an error."
)
COEFFICIENT_KEY_HELP = (
    "Glob on whole state-dict keys naming the per-layer coefficient vectors (e.g. '*.lam'): "
    "replaces the naming rules ('...coefficients', alpha, mix, lambdas, ...). The report names "
    "the rule that matched; a pattern that matches no vector of K numbers is an error."
)


def _pattern_given(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("an empty pattern matches no key", ctx, param)
    return value


def analysis_options(allow_auto: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """The options that decide which layers are the same layer (analyze, plot, fold), and which
    tensors are banks and coefficients (``--bank-key``, ``--coefficient-key``)."""
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
        choice_option(
            "--metric",
            Metric,
            "coefficients",
            "coefficients: the paper's LSM; weight: cosine of the generated weights.",
        ),
        choice_option(
            "--linkage",
            Linkage,
            "complete",
            "complete: every pair in a cluster meets the threshold.",
        ),
        click.option("--signed", is_flag=True, help="Keep the sign of the cosine in the LSM."),
        click.option("--bank-key", metavar="PATTERN", callback=_pattern_given, help=BANK_KEY_HELP),
        click.option(
            "--coefficient-key",
            metavar="PATTERN",
            callback=_pattern_given,
            help=COEFFICIENT_KEY_HELP,
        ),
    ]

    def decorate(func: Callable[..., Any]) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def analysis_options_of(
    threshold: float,
    metric: str,
    linkage: str,
    signed: bool,
    bank_key: str | None = None,
    coefficient_key: str | None = None,
) -> Any:
    """The library's :class:`~soft_share_cli.analysis.analyze.AnalysisOptions` of the options."""
    from soft_share_cli.analysis.analyze import AnalysisOptions

    return AnalysisOptions(
        threshold, Metric(metric), Linkage(linkage), signed, bank_key, coefficient_key
    )
