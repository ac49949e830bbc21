"""``ssc analyze`` and ``ssc plot-similarity``: a checkpoint's banks, similarity and loops."""

from __future__ import annotations

import click

from soft_share_cli.cli import common as opts

MODEL_HELP = (
    "Build your own network (imports YOUR code) with CHECKPOINT's weights and run it once on a "
    "probe: every conv/linear call's weight is traced to the parameters it is computed from, "
    "so sharing is found under any names (soft banks, hard ties, bases, flat stores)."
)


@click.command("analyze")
@opts.checkpoint_argument
@opts.analysis_options()
@click.option(
    "--graph",
    "graph_path",
    type=click.Path(path_type=str),
    help="Export the recurrence graph (.graphml, .gexf, .json, .dot).",
)
@opts.key_option()
@opts.model_option(MODEL_HELP)
@opts.json_option
@opts.common
def analyze_command(
    checkpoint: str,
    threshold: float,
    metric: str,
    linkage: str,
    signed: bool,
    bank_key: str | None,
    coefficient_key: str | None,
    graph_path: str | None,
    key: str | None,
    model_spec: str | None,
    as_json: bool,
) -> None:
    """Find CHECKPOINT's template banks, their similarity, clusters and loops."""
    from soft_share_cli.pipeline.analyze import analyze_checkpoint
    from soft_share_cli.render import tables as render
    from soft_share_cli.render.graph_files import export_graph, graph_format

    if graph_path is not None:  # refuse a bad output before the work, not after
        graph_format(graph_path)
    opts.check_io({"--graph": graph_path}, checkpoint, model_spec=model_spec)
    options = opts.analysis_options_of(
        threshold, metric, linkage, signed, bank_key, coefficient_key
    )
    result = analyze_checkpoint(checkpoint, options, key, model_spec)
    if graph_path is not None:
        export_graph(result.graph, graph_path)
    render.print_json(result.to_dict()) if as_json else render.render_analysis(result)


@click.command("plot-similarity")
@opts.checkpoint_argument
@opts.output_option("Heatmap file (.png, .svg, .pdf).")
@opts.analysis_options()
@click.option(
    "--graph-plot",
    type=click.Path(path_type=str),
    help="Also draw the recurrence graph to this file (.png, .svg, .pdf).",
)
@opts.key_option()
@opts.model_option(MODEL_HELP)
@opts.common
def plot_similarity_command(
    checkpoint: str,
    output: str,
    threshold: float,
    metric: str,
    linkage: str,
    signed: bool,
    bank_key: str | None,
    coefficient_key: str | None,
    graph_plot: str | None,
    key: str | None,
    model_spec: str | None,
) -> None:
    """Draw the Layer Similarity Matrix of every bank of CHECKPOINT, clusters outlined."""
    from soft_share_cli.pipeline.analyze import plot_similarity
    from soft_share_cli.render import tables as render
    from soft_share_cli.render.plots import figure_format

    for path in (output, graph_plot):
        if path is not None:  # refuse a bad output before the work, not after
            figure_format(path)
    opts.check_io({"-o": output, "--graph-plot": graph_plot}, checkpoint, model_spec=model_spec)
    options = opts.analysis_options_of(
        threshold, metric, linkage, signed, bank_key, coefficient_key
    )
    written = plot_similarity(checkpoint, output, options, graph_plot, key, model_spec)
    for path in written:
        render.err.print(f"wrote {path}")
