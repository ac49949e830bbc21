"""The ``ssc`` command line. Thin: parse, call one pipeline function, render.

This module holds the click group :data:`cli` and :func:`main`, the only place where a failure
becomes one line on stderr and an exit code; each command lives in its own module here
(:mod:`.info`, :mod:`.eval`, :mod:`.train`, :mod:`.analyze`, :mod:`.fold`, :mod:`.share`) and
the options they share in :mod:`.common`. Heavy libraries (torch, matplotlib, scikit-learn,
networkx) are imported inside the commands, so ``ssc --help`` and ``ssc --version`` never load them.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from typing import Any

import click

from soft_share_cli._version import __version__
from soft_share_cli.cli import common as opts
from soft_share_cli.cli.analyze import analyze_command, plot_similarity_command
from soft_share_cli.cli.common import _state
from soft_share_cli.cli.eval import eval_command
from soft_share_cli.cli.fold import fold_command
from soft_share_cli.cli.info import info_command
from soft_share_cli.cli.share import share_command
from soft_share_cli.cli.train import train_command
from soft_share_cli.errors import EXIT_CODES, SscError

INTERNAL_ERROR = 4  # a bug in ssc, not in the input: the message asks for a report

_EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()) + "."


class _Group(click.Group):
    """Turns Ctrl-C inside a command into :class:`Interrupted` before click sees it.

    Click answers a ``KeyboardInterrupt`` by printing a blank line to stderr and raising
    ``Abort``; ssc's promise is one ``Error:`` line.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from soft_share_cli.errors import Interrupted

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise Interrupted("interrupted; nothing was written") from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.version_option(__version__, "-V", "--version", prog_name="ssc")
@opts.common
def cli() -> None:
    """Analyse, fold and evaluate CNNs trained with soft parameter sharing."""


for _command in (
    info_command,
    eval_command,
    train_command,
    analyze_command,
    plot_similarity_command,
    fold_command,
    share_command,
):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # restored when the block ends
        if "--debug" not in (sys.argv[1:] if argv is None else argv):
            # numpy's overflow / invalid-value warnings on extreme inputs are noise to a user:
            # the result already says what happened (an issue, a null in JSON, an error line).
            warnings.simplefilter("ignore", RuntimeWarning)
        _run(argv)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Python's warning text, made inert: libraries' warnings may quote names from a file."""
    from soft_share_cli.render.text import inert, inert_lines

    stream = sys.stderr if file is None else file
    if stream is not None:  # the message on one line, and the source line quoted after it
        text = warnings.formatwarning(inert(str(message)), category, filename, lineno, line)
        stream.write(inert_lines(text))


def _run(argv: list[str] | None) -> None:
    try:
        code = cli.main(args=argv, prog_name="ssc", standalone_mode=False)
    except SscError as exc:
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        _show_click_error(exc)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        _fail("interrupted; nothing was written", 130)
    except Exception as exc:  # a bug: say so plainly, keep the traceback behind --debug
        _fail(
            f"internal error ({type(exc).__name__}: {exc}); "
            "rerun with --debug and report the traceback",
            INTERNAL_ERROR,
        )
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    from soft_share_cli.render.text import inert_lines, one_line

    if _state["debug"]:  # the traceback quotes the same messages: inert too
        sys.stderr.write(inert_lines(traceback.format_exc()))
    # One line whatever the message (library exceptions quoted in it may span several), and
    # inert: messages quote keys, names and metadata from files, which must not reach a terminal
    # as control sequences.
    click.echo(f"Error: {one_line(message)}", err=True)
    sys.exit(code)


def _show_click_error(exc: click.ClickException) -> None:
    """Click's usage error text, with the values it quotes (a file name, an option) made inert."""
    import io

    from soft_share_cli.render.text import inert, inert_lines

    # Escaped before click formats them, so a quoted value's own newlines cannot split it.
    for name in ("message", "ui_filename"):
        value = getattr(exc, name, None)
        if isinstance(value, str):
            setattr(exc, name, inert(value))
    if isinstance(exc, click.UsageError):
        # One line, like every other error: the message, and where the help is.
        command = exc.ctx.command_path if exc.ctx is not None else "ssc"
        message = inert(exc.format_message()).rstrip(".")
        sys.stderr.write(f"Error: {message} (see '{command} --help')\n")
        sys.stderr.flush()
        return
    buffer = io.StringIO()
    exc.show(file=buffer)
    sys.stderr.write(inert_lines(buffer.getvalue()))
    sys.stderr.flush()
