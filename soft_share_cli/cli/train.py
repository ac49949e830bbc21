"""``ssc train``: train a network and write a self-describing checkpoint.

Which architecture takes which option, and the defaults per architecture, are
:mod:`soft_share_cli.pipeline.train_options`; this module parses the options and calls it.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from soft_share_cli.cli import common as opts
from soft_share_cli.models.names import RFCN_BLOCKS
from soft_share_cli.pipeline.train_options import ARCHS, DEFAULT_LR, inapplicable, train_config


@click.command("train")
@opts.data_option(required=True)
@opts.output_option(
    "Checkpoint to write (torch format, atomically; each epoch's state goes to OUTPUT.partial "
    "until the run completes)."
)
@opts.choice_option(
    "--arch",
    ARCHS,
    "swrn",
    "swrn/wrn: image classifiers; sfcn/fcn/rfcn: shared/plain/recurrent (one block looped) "
    "nets for maze and prefix-sums.",
)
@click.option(
    "--depth", type=int, default=16, show_default=True, help="6n+4: 16, 22, 28, ... (wrn also 10)."
)
@opts.count_option("--width", 1, "Width multiplier k of WRN-d-k (swrn, wrn only).")
@opts.count_option("--templates", 3, "K (swrn, sfcn only).")
@opts.count_option("--blocks", 12, "Residual blocks (fcn, sfcn); rfcn: its iterations.")
@opts.count_option("--channels", 32, "fcn, sfcn, rfcn only.")
@opts.count_option(
    "--supervise",
    1,
    "fcn, sfcn, rfcn: score the read-outs of the last N blocks (1: the output only).",
)
@click.option(
    "--progressive",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="fcn, sfcn, rfcn: weight alpha of the progressive loss (Bansal et al. 2022): each step "
    "also scores k blocks run after n without gradient (n, k random); 0: off.",
)
@opts.choice_option(
    "--block",
    RFCN_BLOCKS[::-1],  # projection first: the default
    "projection",
    "rfcn only: the looped block. projection: a conv of [state, recall] then two residual "
    "blocks (Bansal et al.; holds its answer when run longer); residual: the fcn's block.",
)
@opts.count_option("--epochs", 30, "Passes over the training split.")
@opts.count_option("--batch-size", 64, "Samples per optimizer step.")
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    help=f"Peak learning rate [default: {DEFAULT_LR['classifier']} (swrn/wrn, SGD); "
    f"{DEFAULT_LR['task']} (sfcn/fcn, Adam)].",
)
@opts.amount_option(
    "--weight-decay", 5e-4, "L2 weight decay on every parameter except the coefficients."
)
@opts.choice_option(
    "--schedule",
    ["cosine", "step"],
    "cosine",
    "Learning rate: cosine decay per step, or step (x0.2 at 30 %, 60 %, 80 % of the epochs); "
    "swrn, wrn only.",
)
@opts.amount_option(
    "--align",
    0.0,
    "Weight of the coefficient-alignment regulariser (grows networks that fold well).",
)
@opts.choice_option(
    "--align-mode",
    ["recurrent", "signed", "nearest"],
    "recurrent",
    "recurrent: same-role layers of consecutive blocks align (loops); signed: the same, "
    "sign included (networks without BatchNorm: sfcn); nearest: any pair.",
)
@click.option(
    "--augment/--no-augment",
    default=False,
    show_default=True,
    help="Random crops (and flips, for RGB images) of the training images; swrn, wrn only.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seeds initialisation, shuffling and augmentation (deterministic on one machine).",
)
@opts.device_option()
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run kept in OUTPUT.partial (same options); see README.",
)
@opts.json_option
@opts.common
def train_command(data_spec: str, output: str, resume: bool, as_json: bool, **options: Any) -> None:
    """Train a network (--arch swrn, wrn, sfcn, fcn, rfcn); write a self-describing checkpoint.

    The state after each epoch is kept in OUTPUT.partial until the run completes, so an
    interrupted run can be continued with --resume.
    """
    from soft_share_cli.pipeline.train import run_train
    from soft_share_cli.render import tables as render
    from soft_share_cli.training.resume import partial_path

    context = click.get_current_context()
    given = {
        name
        for name in options
        if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    }
    unusable = inapplicable(options["arch"], given)
    if unusable is None and "align_mode" in given and not options["align"]:
        unusable = "--align-mode chooses the alignment regulariser; it needs --align W (W > 0)"
    if unusable is None and output.lower().endswith(".safetensors"):
        unusable = (
            f"-o {output}: ssc train writes a torch checkpoint (weights and metadata); name it *.pt"
        )
    if unusable is not None:
        from soft_share_cli.errors import InputError

        raise InputError(unusable)
    config = train_config(**options)  # every option but the data, the output and the mode
    opts.check_io({"-o": output, "-o's .partial": str(partial_path(output))}, data_spec=data_spec)
    command = "ssc " + shlex.join(sys.argv[1:])
    on_epoch = None
    # A log file or a pipe gets a line per epoch: on stdout, or with --json (stdout is the JSON
    # only) on stderr, where a terminal would show the progress bar instead.
    stream = sys.stderr if as_json else sys.stdout
    if not stream.isatty():
        from soft_share_cli.render.epochs import epoch_line

        def on_epoch(record: Any) -> None:
            click.echo(epoch_line(record, config.epochs), err=as_json)
            stream.flush()

    with render.progress_bar() as progress:
        report = run_train(
            config,
            data_spec,
            output,
            command=command,
            progress=progress,
            resume=resume,
            on_epoch=on_epoch,
        )
    render.print_json(report.to_dict()) if as_json else render.render_train(report)
