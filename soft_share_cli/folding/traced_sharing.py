"""Loading a traced fold (:mod:`soft_share_cli.folding.traced_program`), shared user networks too.

``ssc share --model`` turns a user's network into one drawing its convs from template banks and
records how (the *sharing record*, :func:`soft_share_cli.sharing.convert.sharing_record`); the
user's factory still builds the original network, so every load rebuilds the shared one as
``factory()`` plus :func:`~soft_share_cli.sharing.convert.apply_record`. A traced fold of such a
network replays its program on the *shared* network, so the program carries the same record
(key :data:`SHARING_KEY`, put there by :func:`with_sharing`) and :func:`rebuild_traced` applies
it before the program: factory, record, program, weights. A program without a record loads as
it always did.

The record comes from a file: it is checked (:func:`~soft_share_cli.sharing.convert.read_record`)
before the factory runs, and against the built network before any bank is made; every failure
is a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from soft_share_cli.errors import CheckpointError, InputError
from soft_share_cli.folding.traced_directions import read_directions, substitute
from soft_share_cli.folding.traced_program import PROGRAM_FORMAT, apply_program, read_program
from soft_share_cli.folding.user_program import with_aliases

SHARING_KEY = "sharing"  # where a traced-fold program keeps the sharing record of its network


def with_sharing(program: Mapping[str, Any], record: Any) -> dict[str, Any]:
    """``program`` carrying ``record`` (the sharing record of the network it folds), if any."""
    out = dict(program)
    if record is not None:
        out[SHARING_KEY] = record
    return out


def rebuild_traced(
    spec: Any,
    program: Mapping[str, Any],
    state_dict: Mapping[str, Tensor],
    where: str = "the traced fold",
) -> nn.Module:
    """``factory()`` (given the program's sharing record, if it has one) with the program
    replayed and the file's tensors loaded strictly, in eval mode."""
    from soft_share_cli.models.builder import load_state_dict_checked
    from soft_share_cli.models.user import load_factory
    from soft_share_cli.sharing.convert import apply_record, read_record

    full = with_aliases(program, state_dict)
    banks, layers, dropped = read_program(program, full)
    directions, computed = read_directions(program, full, set(banks))
    record = program.get(SHARING_KEY)
    if record is not None:
        read_record(record, where)  # checked while it costs nothing: the factory has not run
    model = load_factory(spec)()
    if record is not None:
        apply_record(model, record, where)
    try:
        substitute(apply_program(model, banks, layers, dropped), directions, computed)
    except InputError as exc:
        shared = " and its sharing record" if record is not None else ""
        raise CheckpointError(
            f"the traced fold does not fit the network built by {spec}{shared}: {exc}"
        ) from None
    load_state_dict_checked(model, full, f"the folded network built by {spec}")
    return model.eval()


def load_traced(path: str | os.PathLike[str], spec: Any) -> nn.Module:
    """Rebuild a network written by :func:`~.traced_program.save_traced` with the factory
    ``spec``."""
    from soft_share_cli.checkpoints.load import load_checkpoint

    ckpt = load_checkpoint(path)
    program = ckpt.metadata.get("program") if ckpt.container == "ssc-folded" else None
    if not isinstance(program, dict) or program.get("format") != PROGRAM_FORMAT:
        raise CheckpointError(f"{path}: not a traced fold (make one with `ssc fold --model`)")
    return rebuild_traced(spec, program, ckpt.state_dict, str(path))
