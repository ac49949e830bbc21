"""``ssc eval``: a checkpoint's accuracy (or a task's solve rate) on a data set."""

from __future__ import annotations

import click

from soft_share_cli.cli import common as opts

ITERATIONS_HELP = (
    "A folded looped network's loop on a task: run it N times instead of the trained count; "
    "N1,N2,... (distinct, ascending) scores each count in one pass (a sweep: table, --plot); "
    "auto runs each instance until its prediction stops changing (--patience, --tolerance, "
    "--max-iterations) and reports the iterations used."
)


@click.command("eval")
@opts.checkpoint_argument
@opts.data_option(required=True)
@opts.device_option()
@opts.count_option("--batch-size", 256, "Samples per evaluation batch.")
@opts.model_option(
    "Build your own network (imports YOUR code) for a checkpoint of it, folded or not."
)
@click.option("--iterations", metavar="N|N1,N2,...|auto", help=ITERATIONS_HELP)
@opts.count_option(
    "--patience",
    help="auto: stop an instance after this many consecutive iterations that leave its "
    "per-pixel prediction unchanged.  [default: 3]",
)
@opts.amount_option(
    "--tolerance",
    help="auto: an iteration counts as unchanged only if the logits also move by at most this "
    "much, relative (||z_n - z_n-1|| / ||z_n-1||).  [default: prediction only]",
)
@opts.count_option(
    "--max-iterations",
    help="auto: the most iterations an instance runs.  [default: 4 x the trained count]",
)
@click.option(
    "--plot",
    type=click.Path(path_type=str),
    help="With a sweep: draw accuracy against iterations to FILE (.png, .svg or .pdf).",
)
@opts.key_option()
@opts.json_option
@opts.common
def eval_command(
    checkpoint: str,
    data_spec: str,
    device: str,
    batch_size: int,
    model_spec: str | None,
    iterations: str | None,
    patience: int | None,
    tolerance: float | None,
    max_iterations: int | None,
    plot: str | None,
    key: str | None,
    as_json: bool,
) -> None:
    """Measure CHECKPOINT's top-1 (and top-5) accuracy on the test split of --data.

    On a task (maze:..., prefix-sums:...) the exact-solve rate and per-pixel accuracy instead.
    """
    from soft_share_cli.errors import InputError
    from soft_share_cli.evaluation.iterations import IterationMode, parse_iterations
    from soft_share_cli.pipeline.eval_iterations import auto_options, run_any
    from soft_share_cli.render import tables as render

    request = parse_iterations(iterations) if iterations is not None else None
    mode = request.mode if request else None
    auto = auto_options(mode, patience=patience, tolerance=tolerance, max_iterations=max_iterations)
    if plot is not None:
        if mode is not IterationMode.SWEEP:
            raise InputError(
                "--plot draws accuracy against iterations: it needs a sweep (--iterations 10,20,40)"
            )
        from soft_share_cli.render.plots import figure_format

        figure_format(plot)
        opts.check_io({"--plot": plot}, checkpoint, data_spec, model_spec)
    with render.progress_bar() as progress:
        report = run_any(
            checkpoint,
            data_spec,
            request,
            auto,
            batch_size=batch_size,
            device=device,
            progress=progress,
            model_spec=model_spec,
            key=key,
        )
    if plot is not None:
        from soft_share_cli.render.iteration_plot import sweep_figure
        from soft_share_cli.render.plots import save_figure

        save_figure(sweep_figure(report.result, f"{checkpoint} on {data_spec}"), plot)
    if as_json:
        render.print_json(report.to_dict())
    elif report.kind == "iterations":
        from soft_share_cli.render.iterations import render_iterations

        render_iterations(report)
    else:
        render.render_eval(report)
