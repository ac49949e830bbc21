"""``ssc share``: turn a trained plain CNN into template banks (post-hoc sharing)."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from soft_share_cli.cli import common as opts


@click.command("share")
@opts.checkpoint_argument
@opts.output_option(
    "Shared network (torch checkpoint, atomically; with --data each fine-tune epoch's state "
    "goes to OUTPUT.partial until the run completes)."
)
@click.option(
    "--templates",
    type=int,
    metavar="K",
    help="Templates per bank (1 .. the group's layers; K = layers is exact).",
)
@click.option(
    "--keep",
    type=float,
    metavar="F",
    help="Instead of --templates: per group the smallest K whose fit keeps this fraction of "
    "the group's squared Frobenius norm (0 < F <= 1).",
)
@opts.model_option(
    "Build your own network (imports YOUR code) whose state dict CHECKPOINT holds; its groups "
    "are the runs of same-shape 3x3 convs in one stage."
)
@click.option(
    "--groups",
    multiple=True,
    metavar="PATTERNS",
    help="With --model: one group per use, comma-separated module-name patterns "
    "('layer1.*.conv2,layer1.*.conv1'); replaces the groups found.",
)
@opts.data_option("Measures top-1 before and after, and fine-tunes on its train split.")
@click.option(
    "--finetune-epochs",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Epochs of the ssc train recipe on --data (0: measure only).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=0.01,
    show_default=True,
    help="Peak learning rate (cosine) of the fine-tune.",
)
@opts.count_option("--batch-size", 64, "Samples per fine-tune step.")
@opts.amount_option("--weight-decay", 5e-4, "L2 weight decay on all but the coefficients.")
@opts.amount_option(
    "--align", 0.0, "Weight of the coefficient-alignment regulariser (grows networks that fold)."
)
@opts.choice_option(
    "--align-mode",
    ["recurrent", "signed", "nearest"],
    "recurrent",
    "Which layers the regulariser pulls together (see ssc train).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds the fine-tune's shuffling."
)
@opts.device_option("Where evaluation and fine-tune run (the conversion runs on the CPU).")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted fine-tune kept in OUTPUT.partial (same options).",
)
@opts.json_option
@opts.common
def share_command(
    checkpoint: str,
    output: str,
    templates: int | None,
    keep: float | None,
    model_spec: str | None,
    groups: tuple[str, ...],
    data_spec: str | None,
    finetune_epochs: int,
    device: str,
    resume: bool,
    as_json: bool,
    **tune: Any,
) -> None:
    """Rewrite a trained plain network (ssc's WRN, or yours with --model) with template banks.

    Same-shape layers of a stage are stacked and fitted by a truncated SVD: K templates and one
    coefficient vector per layer. With --data the result is measured and fine-tuned; `ssc fold`
    then turns it into loops.
    """
    from soft_share_cli.errors import InputError
    from soft_share_cli.pipeline.share import share_checkpoint
    from soft_share_cli.pipeline.share_options import (
        FINETUNE_OPTIONS,
        FinetuneOptions,
        ShareOptions,
        inapplicable,
    )
    from soft_share_cli.render import tables as render
    from soft_share_cli.render.share_tables import render_share
    from soft_share_cli.training.resume import partial_path

    source = click.get_current_context().get_parameter_source
    given = {
        name
        for name in (*FINETUNE_OPTIONS, "finetune_epochs", "device")
        if source(name) is click.core.ParameterSource.COMMANDLINE
    }
    problem = inapplicable(given, data_spec is not None, finetune_epochs, tune["align"], device)
    if problem is not None:
        raise InputError(problem)
    outputs: dict[str, str | None] = {"-o": output}
    if data_spec is not None and finetune_epochs:
        outputs["-o's .partial"] = str(partial_path(output))
    opts.check_io(outputs, checkpoint, data_spec, model_spec)
    options = ShareOptions(
        templates=templates,
        keep=keep,
        model=model_spec,
        groups=groups,
        data=data_spec,
        finetune=FinetuneOptions(epochs=finetune_epochs, device=device, **tune),
        resume=resume,
    )
    on_epoch = None
    stream = sys.stderr if as_json else sys.stdout
    if data_spec is not None and not stream.isatty():  # a log or a pipe: a line per epoch
        from soft_share_cli.render.epochs import epoch_line

        def on_epoch(record: Any) -> None:
            click.echo(epoch_line(record, finetune_epochs), err=as_json)
            stream.flush()

    command = "ssc " + shlex.join(sys.argv[1:])
    with render.progress_bar() as progress:
        report = share_checkpoint(
            checkpoint, output, options, command=command, progress=progress, on_epoch=on_epoch
        )
    render.print_json(report.to_dict()) if as_json else render_share(report)
