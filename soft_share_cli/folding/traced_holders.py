"""Where a traced fold keeps the banks it adds (:mod:`soft_share_cli.folding.traced`).

A bank (a :class:`~soft_share_cli.folding.bank.FoldedBank` or a
:class:`~soft_share_cli.folding.traced_directions.DirectionBank`) is a new module of the
network, and a container's forward calls every module it holds: an ``nn.Sequential`` root given
one more child would run it on its activations. So a bank lives on the top module (file key
``ssc_folded_<name>.…``, what every earlier version wrote) unless that module is a container;
then on a module that uses it — the first folded layer of its group (a ``TracedLayer``, whose
forward calls no child) or the first module whose parameter it computes — and its program
record names that module (``holder``; file keys ``<holder>.ssc_folded_<name>.…``). A record
without ``holder`` (every file written before) means the top module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from soft_share_cli.errors import CheckpointError, InputError

HOLDER_KEY = "holder"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def is_container(module: nn.Module) -> bool:
    """Whether ``module``'s forward (or its user's loop) runs over every module it holds."""
    return isinstance(module, _CONTAINERS)


def choose_holder(network: nn.Module, paths: Iterable[str], what: str) -> str:
    """The path of the module to keep a bank on: ``""`` (the top module) unless that is a
    container, else the first of ``paths`` (modules using the bank) that is not one."""
    if not is_container(network):
        return ""
    for path in paths:
        if path and not is_container(network.get_submodule(path)):
            return path
    raise InputError(
        f"cannot fold {what}: the network is a {type(network).__name__}, whose forward calls "
        "every module it holds, and no module using the folded weights can hold them; "
        "nothing was written"
    )


def with_holder(record: dict[str, Any], holder: str) -> dict[str, Any]:
    """A bank's program record naming its holder (nothing added for the top module, so that a
    fold of any other network writes the very file earlier versions wrote)."""
    return {**record, HOLDER_KEY: holder} if holder else record


def read_holder(record: Mapping[str, Any]) -> str:
    """The holder a stored bank record names (``""``: the top module), checked to be a path."""
    holder = record.get(HOLDER_KEY, "")
    if not isinstance(holder, str) or len(holder) > 1000:
        raise CheckpointError("malformed traced-fold program: a bank's holder is not a path")
    return holder


def key_prefix(holder: str, attr: str) -> str:
    """The state-dict prefix of bank ``attr`` kept on ``holder`` (ends with a dot)."""
    return f"{holder}.{attr}." if holder else f"{attr}."


def register_banks(
    model: nn.Module, banks: Mapping[str, nn.Module], holders: Mapping[str, str]
) -> None:
    """Register every bank of ``banks`` on its holder (``holders``; absent: the top module)."""
    for attr, bank in banks.items():
        holder = holders.get(attr, "")
        try:
            module = model.get_submodule(holder) if holder else model
        except AttributeError:
            raise InputError(f"the network has no module {holder!r} (holder of {attr})") from None
        if is_container(module):
            raise InputError(
                f"bank {attr} cannot be kept on {holder or 'the network'}: it is a "
                f"{type(module).__name__}, whose forward would call it"
            )
        if hasattr(module, attr):
            raise InputError(f"{holder or 'the network'} already has an attribute {attr!r}")
        module.add_module(attr, bank)
