"""Loading a traced fold (:mod:`soft_share_cli.folding.traced_program`), shared user networks too.

``ssc share --model`` turns a user's network into one drawing its convs from template banks and
records how (the *sharing record*, :func:`soft_share_cli.sharing.convert.sharing_record`); the
user's factory still builds the original network, so every load rebuilds the shared one as
``factory()`` plus :func:`~soft_share_cli.sharing.convert.apply_record`. A traced fold of such a
network replays its program on the *shared* network, so the program carries the same record
(key :data:`SHARING_KEY`, put there by :func:`with_sharing`) and :func:`rebuild_traced` applies
it before the program: factory, record, program, weights. A program without a record loads as
it always did.

The direction banks and computed attributes of the program are read here too
(:func:`read_directions`), and every bank is registered on the module its record names
(:mod:`~soft_share_cli.folding.traced_holders`; none named: the top module, as in every file
written before holders existed).

The record comes from a file: it is checked (:func:`~soft_share_cli.sharing.convert.read_record`)
before the factory runs, and against the built network before any bank is made; every failure
is a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from soft_share_cli import limits
from soft_share_cli.errors import CheckpointError, InputError
from soft_share_cli.folding.traced_directions import Computed, DirectionBank, substitute
from soft_share_cli.folding.traced_holders import key_prefix, read_holder
from soft_share_cli.folding.traced_program import PROGRAM_FORMAT, apply_program, read_program
from soft_share_cli.folding.user_program import with_aliases

SHARING_KEY = "sharing"  # where a traced-fold program keeps the sharing record of its network
_ATTRIBUTE = re.compile(r"ssc_folded_\w{1,200}")
_NAME = re.compile(r"\w{1,200}")


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
    held = {
        b["module"]: read_holder(b) for b in (*program["banks"], *program.get("directions", []))
    }
    try:
        apply_program(model, banks, layers, dropped, held)
        substitute(model, directions, computed, held)
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


def _malformed(why: str) -> CheckpointError:
    return CheckpointError(f"malformed traced-fold program: {why}")


def read_directions(
    program: Mapping[str, Any], state_dict: Mapping[str, Tensor], taken: set[str]
) -> tuple[dict[str, DirectionBank], list[Computed]]:
    """The program's direction banks (empty, sized from the file's tensors) and substitutions,
    every field checked; ``taken``: the attributes of the weights banks."""
    rows = program.get("directions", [])
    specs = program.get("computed", [])
    if not isinstance(rows, list) or not isinstance(specs, list):
        raise _malformed("'directions' or 'computed' is not a list")
    try:
        limits.count(len(rows), "traced-fold directions", limit=limits.MAX_BANKS * 10,
                     name="MAX_BANKS")  # fmt: skip
        limits.count(len(specs), "traced-fold computed", limit=limits.MAX_KEYS, name="MAX_KEYS")
    except ValueError as exc:
        raise _malformed(str(exc)) from None
    banks: dict[str, DirectionBank] = {}
    for b in rows:
        attr = b.get("module") if isinstance(b, dict) else None
        if (
            not isinstance(attr, str)
            or not _ATTRIBUTE.fullmatch(attr)
            or attr in banks
            or attr in taken
        ):
            raise _malformed(f"direction bank {attr!r} is not a fresh ssc_folded_<name>")
        if not isinstance(b.get("name"), str) or len(b["name"]) > 1000:
            raise _malformed(f"direction bank {attr}: its name is not a string")
        prefix = key_prefix(read_holder(b), attr)
        d, g = state_dict.get(prefix + "directions"), state_dict.get(prefix + "gains")
        if d is None or g is None:
            raise CheckpointError(f"the traced fold lacks the tensors of bank {attr}")
        clusters = b.get("clusters")
        if type(clusters) is not int or not 1 <= clusters <= limits.MAX_CLUSTERS:
            raise _malformed(f"direction bank {attr}: clusters {clusters!r} is not a count")
        if d.dim() < 2 or d.dim() > 7 or d.shape[0] != clusters or g.dim() != 1:
            raise CheckpointError(f"bank {attr}: directions {tuple(d.shape)}, gains "
                                  f"{tuple(g.shape)} for {clusters} clusters")  # fmt: skip
        with torch.device("meta"):
            bank = DirectionBank(torch.empty(d.shape, dtype=d.dtype),
                                 torch.empty(g.shape, dtype=g.dtype))  # fmt: skip
        banks[attr] = bank.to_empty(device="cpu")
    computed: list[Computed] = []
    places: set[tuple[str, str]] = set()
    for x in specs:
        if not isinstance(x, dict):
            raise _malformed("a computed attribute is not a map")
        path, attr, owner, c, g = (x.get(k) for k in ("path", "attr", "bank", "cluster", "gain"))
        if not isinstance(path, str) or len(path) > 1000 or not isinstance(attr, str):
            raise _malformed(f"computed attribute {path!r}.{attr!r}")
        if not _NAME.fullmatch(attr) or (path, attr) in places or owner not in banks:
            raise _malformed(f"computed attribute {path}.{attr}: a second record, or bank "
                             f"{owner!r} not one of the file's")  # fmt: skip
        held = banks[owner]
        if type(c) is not int or not 0 <= c < held.directions.shape[0]:
            raise _malformed(f"computed attribute {path}.{attr}: cluster {c!r}")
        if type(g) is not int or not 0 <= g < held.gains.shape[0]:
            raise _malformed(f"computed attribute {path}.{attr}: gain {g!r}")
        places.add((path, attr))
        computed.append(Computed(path, attr, owner, c, g))
    return banks, computed
