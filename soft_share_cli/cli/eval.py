"""``ssc eval``: a checkpoint's accuracy (or a task's solve rate) on a data set."""

from __future__ import annotations

import click

from soft_share_cli.cli import common as opts


@click.command("eval")
@opts.checkpoint_argument
@opts.data_option(required=True)
@opts.device_option()
@opts.count_option("--batch-size", 256, "Samples per evaluation batch.")
@opts.model_option(
    "Build your own network (imports YOUR code) for a checkpoint of it, folded or not."
)
@opts.count_option(
    "--iterations",
    help="Run a folded looped network's loop this many times instead of the trained count.",
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
    iterations: int | None,
    key: str | None,
    as_json: bool,
) -> None:
    """Measure CHECKPOINT's top-1 (and top-5) accuracy on the test split of --data.

    On a task (maze:..., prefix-sums:...) the exact-solve rate and per-pixel accuracy instead.
    """
    from soft_share_cli.pipeline.eval import run_eval
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
            key=key,
        )
    render.print_json(report.to_dict()) if as_json else render.render_eval(report)
