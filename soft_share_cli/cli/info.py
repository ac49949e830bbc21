"""``ssc info``: what a checkpoint is."""

from __future__ import annotations

import click

from soft_share_cli.cli import common as opts


@click.command("info")
@opts.checkpoint_argument
@opts.json_option
@opts.common
def info_command(checkpoint: str, as_json: bool) -> None:
    """Show what CHECKPOINT is: format, wrapping, architecture, parameters, provenance."""
    from soft_share_cli.pipeline.info import inspect_checkpoint
    from soft_share_cli.render import tables as render

    result = inspect_checkpoint(checkpoint)
    render.print_json(result.to_dict()) if as_json else render.render_info(result)
