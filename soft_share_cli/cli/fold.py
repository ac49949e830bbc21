"""``ssc fold``: rewrite a checkpoint with real loops, and check what the fold costs."""

from __future__ import annotations

import click

from soft_share_cli.analysis.defaults import DEFAULT_THRESHOLD
from soft_share_cli.cli import common as opts


@click.command("fold")
@opts.checkpoint_argument
@opts.output_option("Folded network (.safetensors: weights plus the loop program).")
@opts.analysis_options(allow_auto=True)
@opts.data_option("Measures both networks on it.")
@opts.amount_option("--max-drop", help="Exit 1 if top-1 drops more (points).")
@opts.amount_option("--atol", help="Exit 1 if any probe logit differs more.")
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
@opts.model_option("Build your own network (imports YOUR code) whose state dict CHECKPOINT holds.")
@click.option(
    "--plot",
    type=click.Path(path_type=str),
    help="With --threshold auto: draw parameters against accuracy (.png/.svg/.pdf).",
)
@opts.count_option("--batch-size", 256, "Samples per evaluation batch (with --data).")
@opts.device_option("Where the evaluation on --data runs (the fold itself runs on the CPU).")
@opts.key_option()
@opts.json_option
@opts.common
def fold_command(
    checkpoint: str,
    output: str,
    threshold: float | str,
    metric: str,
    linkage: str,
    signed: bool,
    bank_key: str | None,
    coefficient_key: str | None,
    data_spec: str | None,
    max_drop: float | None,
    atol: float | None,
    recalibrate_bn: int,
    materialize: str | None,
    model_spec: str | None,
    plot: str | None,
    batch_size: int,
    device: str,
    key: str | None,
    as_json: bool,
) -> None:
    """Rewrite CHECKPOINT with real loops; report savings and what the fold costs."""
    from soft_share_cli.errors import CheckFailed
    from soft_share_cli.pipeline.fold import FoldOptions, fold_checkpoint
    from soft_share_cli.render import tables as render
    from soft_share_cli.render.fold_tables import render_fold

    auto = threshold == "auto"
    outputs = {"-o": output, "--materialize": materialize, "--plot": plot}
    opts.check_io(outputs, checkpoint, data_spec, model_spec)
    import click

    given = click.get_current_context().get_parameter_source
    commandline = click.core.ParameterSource.COMMANDLINE
    if data_spec is None and given("batch_size") is commandline:
        from soft_share_cli.errors import InputError

        raise InputError("--batch-size applies to the evaluation on --data; leave it out")
    if signed:
        from soft_share_cli.errors import InputError

        raise InputError(
            "--signed changes only how analyze and plot-similarity show the similarity (the "
            "clustering uses its magnitude): a fold is the same without it; leave it out"
        )
    if plot is not None and not auto:
        from soft_share_cli.errors import InputError

        raise InputError(
            "--plot draws the trade-off of --threshold auto; it needs --threshold auto"
        )
    if plot is not None:
        from soft_share_cli.render.plots import figure_format

        figure_format(plot)
    options = FoldOptions(
        analysis=opts.analysis_options_of(
            DEFAULT_THRESHOLD if auto else float(threshold),
            metric,
            linkage,
            signed,
            bank_key,
            coefficient_key,
        ),
        auto_threshold=auto,
        data=data_spec,
        max_drop=max_drop,
        atol=atol,
        recalibrate_bn=recalibrate_bn,
        batch_size=batch_size,
        device=device,
        key=key,
        model=model_spec,
    )
    with render.progress_bar() as progress:
        report = fold_checkpoint(
            checkpoint, output, options, materialize=materialize, progress=progress
        )
    if plot is not None and report.candidates and report.data is not None:
        from soft_share_cli.render.plots import save_figure
        from soft_share_cli.render.tradeoff import tradeoff_figure

        chosen = report.options.threshold if report.output else None
        figure = tradeoff_figure(
            report.candidates, report.data.original.headline, chosen, max_drop or 0.0
        )
        save_figure(figure, plot)
    render.print_json(report.to_dict()) if as_json else render_fold(report)
    if report.failures:
        raise CheckFailed("; ".join(report.failures) + " (nothing was written)")
