"""``ssc info``: what a checkpoint is."""

from __future__ import annotations

import click

from soft_share_cli.cli import common as opts


@click.command("info")
@opts.checkpoint_argument
@opts.key_option()
@opts.json_option
@opts.common
def info_command(checkpoint: str, key: str | None, as_json: bool) -> None:
    """Show what CHECKPOINT is: format, wrapping, architecture, parameters, provenance."""
    from soft_share_cli.pipeline.info import inspect_checkpoint
    from soft_share_cli.render import tables as render

    result = inspect_checkpoint(checkpoint, key)
    if as_json:
        render.print_json(result.to_dict())
        return
    render.render_info(result)
    if result.other_state_dicts:  # the container row says which one was used
        others = ", ".join(map(repr, result.other_state_dicts))
        render.out.print(f"also holds state dicts under {others}: --key NAME uses one of them")
