"""The ``ssc`` command line. Thin: parse, call one pipeline function, render.

Heavy libraries (torch, matplotlib, scikit-learn, networkx) are imported inside the commands, so
``ssc --help`` and ``ssc --version`` never load them. Every :class:`SscError` becomes one line on
stderr and its exit code in :func:`main`, the only place that does so.
"""

from __future__ import annotations

import shlex
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import click

from soft_share_cli._version import __version__
from soft_share_cli.analysis.defaults import DEFAULT_THRESHOLD
from soft_share_cli.errors import EXIT_CODES, SscError

INTERNAL_ERROR = 4  # a bug in ssc, not in the input: the message asks for a report
_state = {"debug": False}

DATA_HELP = (
    "Data to use: digits | npz:FILE | cifar10:DIR | cifar100:DIR | folder:DIR | "
    "maze:size=N[,count=M,seed=S] | prefix-sums:length=N[,...] (see README, 'Data specs')."
)
TASK_ARCHS = ("sfcn", "fcn")  # fully convolutional networks for the per-pixel tasks


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


_EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()) + "."


class _Group(click.Group):
    """Turns Ctrl-C inside a command into :class:`Interrupted` before click sees it.

    Click answers a ``KeyboardInterrupt`` by printing a blank line to stderr and raising
    ``Abort``; ssc's promise is one ``Error:`` line.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from soft_share_cli.errors import Interrupted

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise Interrupted("interrupted; nothing was written") from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.version_option(__version__, "-V", "--version", prog_name="ssc")
@common
def cli() -> None:
    """Analyse, fold and evaluate CNNs trained with soft parameter sharing."""


@cli.command("info")
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@common
def info_command(checkpoint: str, as_json: bool) -> None:
    """Show what CHECKPOINT is: format, wrapping, architecture, parameters, provenance."""
    from soft_share_cli.pipeline.classification import inspect_checkpoint
    from soft_share_cli.render import tables as render

    result = inspect_checkpoint(checkpoint)
    render.print_json(result.to_dict()) if as_json else render.render_info(result)


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--data", "data_spec", required=True, help=DATA_HELP)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--model",
    "model_spec",
    metavar="MODULE:CALLABLE",
    help="Build your own network (imports YOUR code) for a checkpoint of it, folded or not.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    help="Run a folded looped network's loop this many times instead of the trained count.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@common
def eval_command(
    checkpoint: str,
    data_spec: str,
    device: str,
    batch_size: int,
    model_spec: str | None,
    iterations: int | None,
    as_json: bool,
) -> None:
    """Measure CHECKPOINT's top-1 (and top-5) accuracy on the test split of --data.

    On a task (maze:..., prefix-sums:...) the exact-solve rate and per-pixel accuracy instead.
    """
    from soft_share_cli.pipeline.classification import run_eval
    from soft_share_cli.render import tables as render

    with render.progress_bar() as progress:
        report = run_eval(
            checkpoint,
            data_spec,
            batch_size=batch_size,
            device=device,
            progress=progress,
            model_spec=model_spec,
            iterations=iterations,
        )
    render.print_json(report.to_dict()) if as_json else render.render_eval(report)


@cli.command("train")
@click.option("--data", "data_spec", required=True, help=DATA_HELP)
@click.option("-o", "--output", required=True, type=click.Path(path_type=str))
@click.option(
    "--arch",
    type=click.Choice(["swrn", "wrn", *TASK_ARCHS]),
    default="swrn",
    show_default=True,
    help="swrn/wrn: image classifiers; sfcn/fcn: shared/plain nets for maze and prefix-sums.",
)
@click.option("--depth", type=int, default=16, show_default=True, help="6n+4: 10, 16, 22, 28, ...")
@click.option("--width", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--templates",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="K (swrn, sfcn only).",
)
@click.option(
    "--blocks",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Residual blocks (fcn, sfcn only).",
)
@click.option(
    "--channels", type=click.IntRange(min=1), default=32, show_default=True, help="fcn, sfcn only."
)
@click.option(
    "--supervise",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="fcn, sfcn: score the read-outs of the last N blocks (1: the output only).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    help="Peak learning rate [default: 0.1 (swrn/wrn, SGD); 0.002 (sfcn/fcn, Adam)].",
)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True)
@click.option(
    "--schedule", type=click.Choice(["cosine", "step"]), default="cosine", show_default=True
)
@click.option(
    "--align",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Weight of the coefficient-alignment regulariser (grows networks that fold well).",
)
@click.option(
    "--align-mode",
    type=click.Choice(["recurrent", "signed", "nearest"]),
    default="recurrent",
    show_default=True,
    help="recurrent: same-role layers of consecutive blocks align (loops); signed: the same, "
    "sign included (networks without BatchNorm: sfcn); nearest: any pair.",
)
@click.option("--augment/--no-augment", default=False, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run kept in OUTPUT.partial (same options); see README.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@common
def train_command(
    data_spec: str,
    output: str,
    arch: str,
    depth: int,
    width: int,
    templates: int,
    blocks: int,
    channels: int,
    supervise: int,
    epochs: int,
    batch_size: int,
    lr: float | None,
    weight_decay: float,
    schedule: str,
    align: float,
    align_mode: str,
    augment: bool,
    seed: int,
    device: str,
    resume: bool,
    as_json: bool,
) -> None:
    """Train an SWRN (or plain WRN) and write a self-describing checkpoint to OUTPUT.

    The state after each epoch is kept in OUTPUT.partial until the run completes, so an
    interrupted run can be continued with --resume.
    """
    from soft_share_cli.pipeline.classification import run_train
    from soft_share_cli.render import tables as render
    from soft_share_cli.training.classification import Schedule, TrainConfig
    from soft_share_cli.training.regularizers import AlignMode

    config: Any
    if arch in TASK_ARCHS:
        from soft_share_cli.errors import InputError
        from soft_share_cli.training.tasks import TaskTrainConfig

        if augment or schedule != "cosine":
            raise InputError("task training takes no --augment and only the cosine schedule")
        config = TaskTrainConfig(
            arch=arch,
            blocks=blocks,
            width=channels,
            num_templates=templates if arch == "sfcn" else None,
            epochs=epochs,
            batch_size=batch_size,
            lr=0.002 if lr is None else lr,
            weight_decay=weight_decay,
            supervise=supervise,
            align=align,
            align_mode=AlignMode(align_mode),
            seed=seed,
            device=device,
        )
    else:
        config = TrainConfig(
            arch=arch,
            depth=depth,
            width=width,
            num_templates=templates if arch == "swrn" else None,
            epochs=epochs,
            batch_size=batch_size,
            lr=0.1 if lr is None else lr,
            weight_decay=weight_decay,
            schedule=Schedule(schedule),
            align=align,
            align_mode=AlignMode(align_mode),
            augment=augment,
            seed=seed,
            device=device,
        )
    from soft_share_cli.training.resume import partial_path

    _check_io({"-o": output, "-o's .partial": str(partial_path(output))}, data_spec=data_spec)
    command = "ssc " + shlex.join(sys.argv[1:])
    with render.progress_bar() as progress:
        report = run_train(
            config, data_spec, output, command=command, progress=progress, resume=resume
        )
    render.print_json(report.to_dict()) if as_json else render.render_train(report)


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
    import os

    from soft_share_cli.files import check_outputs

    inputs: dict[str, Any] = {"CHECKPOINT": checkpoint}
    if data_spec is not None:
        from soft_share_cli.data.loaders import parse_data_spec

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
            type=click.Choice(["coefficients", "weight"]),
            default="coefficients",
            show_default=True,
            help="coefficients: the paper's LSM; weight: cosine of the generated weights.",
        ),
        click.option(
            "--linkage",
            type=click.Choice(["complete", "average", "single"]),
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
    from soft_share_cli.analysis.analyze import AnalysisOptions
    from soft_share_cli.analysis.clustering import Linkage
    from soft_share_cli.analysis.similarity import Metric

    return AnalysisOptions(threshold, Metric(metric), Linkage(linkage), signed)


@cli.command("analyze")
@click.argument("checkpoint", type=click.Path(path_type=str))
@analysis_options()
@click.option(
    "--graph",
    "graph_path",
    type=click.Path(path_type=str),
    help="Export the recurrence graph (.graphml, .gexf, .json, .dot).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@common
def analyze_command(
    checkpoint: str,
    threshold: float,
    metric: str,
    linkage: str,
    signed: bool,
    graph_path: str | None,
    as_json: bool,
) -> None:
    """Find CHECKPOINT's template banks, their similarity, clusters and loops."""
    from soft_share_cli.analysis.loops import export_graph, graph_format
    from soft_share_cli.pipeline.analyze import analyze_checkpoint
    from soft_share_cli.render import tables as render

    if graph_path is not None:  # refuse a bad output before the work, not after
        graph_format(graph_path)
    _check_io({"--graph": graph_path}, checkpoint)
    result = analyze_checkpoint(checkpoint, _options(threshold, metric, linkage, signed))
    if graph_path is not None:
        export_graph(result.graph, graph_path)
    render.print_json(result.to_dict()) if as_json else render.render_analysis(result)


@cli.command("plot-similarity")
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=str),
    help="Heatmap file (.png, .svg, .pdf).",
)
@analysis_options()
@click.option(
    "--graph-plot",
    type=click.Path(path_type=str),
    help="Also draw the recurrence graph to this file (.png, .svg, .pdf).",
)
@common
def plot_similarity_command(
    checkpoint: str,
    output: str,
    threshold: float,
    metric: str,
    linkage: str,
    signed: bool,
    graph_plot: str | None,
) -> None:
    """Draw the Layer Similarity Matrix of every bank of CHECKPOINT, clusters outlined."""
    from soft_share_cli.pipeline.analyze import plot_similarity
    from soft_share_cli.render import tables as render
    from soft_share_cli.render.plots import figure_format

    for path in (output, graph_plot):
        if path is not None:  # refuse a bad output before the work, not after
            figure_format(path)
    _check_io({"-o": output, "--graph-plot": graph_plot}, checkpoint)
    written = plot_similarity(
        checkpoint, output, _options(threshold, metric, linkage, signed), graph_plot
    )
    for path in written:
        render.err.print(f"wrote {path}")


@cli.command("fold")
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=str),
    help="Folded network (.safetensors: weights plus the loop program).",
)
@analysis_options(allow_auto=True)
@click.option("--data", "data_spec", help=DATA_HELP + " Measures both networks on it.")
@click.option(
    "--max-drop", type=click.FloatRange(min=0), help="Exit 1 if top-1 drops more (points)."
)
@click.option(
    "--atol", type=click.FloatRange(min=0), help="Exit 1 if any probe logit differs more."
)
@click.option(
    "--recalibrate-bn",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Re-estimate BatchNorm statistics on N batches of the data's train split.",
)
@click.option(
    "--materialize",
    type=click.Path(path_type=str),
    help="Also write the folded network as a plain WRN checkpoint (ordinary Conv2d layers).",
)
@click.option(
    "--model",
    "model_spec",
    metavar="MODULE:CALLABLE",
    help="Build your own network (imports YOUR code) whose state dict CHECKPOINT holds.",
)
@click.option(
    "--plot",
    type=click.Path(path_type=str),
    help="With --threshold auto: draw parameters against accuracy (.png/.svg/.pdf).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@common
def fold_command(
    checkpoint: str,
    output: str,
    threshold: float | str,
    metric: str,
    linkage: str,
    signed: bool,
    data_spec: str | None,
    max_drop: float | None,
    atol: float | None,
    recalibrate_bn: int,
    materialize: str | None,
    model_spec: str | None,
    plot: str | None,
    batch_size: int,
    device: str,
    as_json: bool,
) -> None:
    """Rewrite CHECKPOINT with real loops; report savings and what the fold costs."""
    from soft_share_cli.errors import CheckFailed
    from soft_share_cli.pipeline.fold import FoldOptions, fold_checkpoint
    from soft_share_cli.render import tables as render

    auto = threshold == "auto"
    outputs = {"-o": output, "--materialize": materialize, "--plot": plot}
    _check_io(outputs, checkpoint, data_spec, model_spec)
    if plot is not None:
        from soft_share_cli.render.plots import figure_format

        figure_format(plot)
    options = FoldOptions(
        analysis=_options(DEFAULT_THRESHOLD if auto else float(threshold), metric, linkage, signed),
        auto_threshold=auto,
        data=data_spec,
        max_drop=max_drop,
        atol=atol,
        recalibrate_bn=recalibrate_bn,
        batch_size=batch_size,
        device=device,
        model=model_spec,
    )
    with render.progress_bar() as progress:
        report = fold_checkpoint(
            checkpoint, output, options, materialize=materialize, progress=progress
        )
    if plot is not None and report.candidates and report.data is not None:
        from soft_share_cli.analysis.tradeoff import tradeoff_figure
        from soft_share_cli.render.plots import save_figure

        chosen = report.options.threshold if report.output else None
        figure = tradeoff_figure(
            report.candidates, report.data.original.top1, chosen, max_drop or 0.0
        )
        save_figure(figure, plot)
    render.print_json(report.to_dict()) if as_json else render.render_fold(report)
    if report.failures:
        raise CheckFailed("; ".join(report.failures) + " (nothing was written)")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # restored when the block ends
        if "--debug" not in (sys.argv[1:] if argv is None else argv):
            # numpy's overflow / invalid-value warnings on extreme inputs are noise to a user:
            # the result already says what happened (an issue, a null in JSON, an error line).
            warnings.simplefilter("ignore", RuntimeWarning)
        _run(argv)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Python's warning text, made inert: libraries' warnings may quote names from a file."""
    from soft_share_cli.render.text import inert, inert_lines

    stream = sys.stderr if file is None else file
    if stream is not None:  # the message on one line, and the source line quoted after it
        text = warnings.formatwarning(inert(str(message)), category, filename, lineno, line)
        stream.write(inert_lines(text))


def _run(argv: list[str] | None) -> None:
    try:
        code = cli.main(args=argv, prog_name="ssc", standalone_mode=False)
    except SscError as exc:
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        _show_click_error(exc)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        _fail("interrupted; nothing was written", 130)
    except Exception as exc:  # a bug: say so plainly, keep the traceback behind --debug
        _fail(
            f"internal error ({type(exc).__name__}: {exc}); "
            "rerun with --debug and report the traceback",
            INTERNAL_ERROR,
        )
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    from soft_share_cli.render.text import inert_lines, one_line

    if _state["debug"]:  # the traceback quotes the same messages: inert too
        sys.stderr.write(inert_lines(traceback.format_exc()))
    # One line whatever the message (library exceptions quoted in it may span several), and
    # inert: messages quote keys, names and metadata from files, which must not reach a terminal
    # as control sequences.
    click.echo(f"Error: {one_line(message)}", err=True)
    sys.exit(code)


def _show_click_error(exc: click.ClickException) -> None:
    """Click's usage error text, with the values it quotes (a file name, an option) made inert."""
    import io

    from soft_share_cli.render.text import inert, inert_lines

    # Escaped before click formats them, so a quoted value's own newlines cannot split it.
    for name in ("message", "ui_filename"):
        value = getattr(exc, name, None)
        if isinstance(value, str):
            setattr(exc, name, inert(value))
    buffer = io.StringIO()
    exc.show(file=buffer)
    sys.stderr.write(inert_lines(buffer.getvalue()))
    sys.stderr.flush()
