"""``ssc info``: what a checkpoint is."""

from __future__ import annotations

import click

from soft_share_cli.cli.common import common


@click.command("info")
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@common
def info_command(checkpoint: str, as_json: bool) -> None:
    """Show what CHECKPOINT is: format, wrapping, architecture, parameters, provenance."""
    from soft_share_cli.pipeline.info import inspect_checkpoint
    from soft_share_cli.render import tables as render

    result = inspect_checkpoint(checkpoint)
    render.print_json(result.to_dict()) if as_json else render.render_info(result)
