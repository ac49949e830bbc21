"""``ssc eval``: a checkpoint's accuracy (or a task's solve rate) on a data set."""

from __future__ import annotations

import click

from soft_share_cli.cli.common import common
from soft_share_cli.data.spec import DATA_HELP


@click.command("eval")
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
