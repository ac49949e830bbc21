"""The program of a folded user network: what the surgery of :mod:`soft_share_cli.folding.surgery`
did, as stored in the file's header, read back with every count and index checked.

A program lists, per bank, its storage, clusters, the modules that held its TemplateBank and each
layer's cluster and gain; ``aliases`` maps every tied key the file leaves out (a tensor used by
several modules is stored once) to the key that holds its tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from soft_share_cli import limits
from soft_share_cli.errors import ArchitectureError, CheckpointError
from soft_share_cli.models.params import storage_id
from soft_share_cli.models.user import _first_line

if TYPE_CHECKING:
    from torch import Tensor

PROGRAM_FORMAT = "ssc-user-fold"
PROGRAM_VERSION = 1
SHARED_PREFIX = "ssc_folded_"


@dataclass(frozen=True)
class Skeleton:
    """What the surgery needs for one bank, from a plan or from a stored program."""

    name: str
    stores_weights: bool
    num_clusters: int
    modules: tuple[str, ...]  # module paths holding the TemplateBank (to find a layer-less bank)
    layers: tuple[tuple[str, int, float], ...]  # (module path, cluster, scale)

    @property
    def attribute(self) -> str:
        return SHARED_PREFIX + re.sub(r"\W", "_", self.name)


def skeletons_from_program(program: Mapping[str, Any]) -> list[Skeleton]:
    """The program's banks, every count and index checked before anything is built from it.

    A program comes from a file: bank, layer and cluster counts are bounded (``limits``), each
    layer's cluster must be one of its bank's, each scale a finite number, and a bank's module
    the attribute its name gives, so that nothing the file declares picks what is allocated.
    """
    if program.get("format") != PROGRAM_FORMAT or program.get("version") != PROGRAM_VERSION:
        raise CheckpointError(
            f"not an ssc user-fold program (format {program.get('format')!r}, "
            f"version {program.get('version')!r})"
        )
    try:
        banks = program["banks"]
        if not isinstance(banks, list):
            raise TypeError("'banks' is not a list")
        limits.count(len(banks), "user-fold program", limit=limits.MAX_BANKS, name="MAX_BANKS")
        return [_skeleton_from_spec(b) for b in banks]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"malformed user-fold program: {_first_line(exc)}") from None


def _skeleton_from_spec(b: Mapping[str, Any]) -> Skeleton:
    name = b["name"]
    if not isinstance(name, str):
        raise TypeError("a bank name is not a string")
    where = f"user-fold program, bank {name}"
    clusters, layers, modules = b["clusters"], b["layers"], b["bank_modules"]
    if not all(isinstance(x, list) for x in (clusters, layers, modules)):
        raise TypeError(f"bank {name}: clusters, layers and bank_modules must be lists")
    c = limits.count(len(clusters), where, limit=limits.MAX_CLUSTERS, name="MAX_CLUSTERS")
    for items in (layers, modules):
        limits.count(
            len(items), where, limit=limits.MAX_LAYERS_PER_BANK, name="MAX_LAYERS_PER_BANK"
        )
    sk = Skeleton(
        name,
        {"weights": True, "templates": False}[b["storage"]],
        c,
        tuple(_text(m, "bank module") for m in modules),
        tuple(_layer_spec(x, c, name) for x in layers),
    )
    if b["module"] != sk.attribute:
        raise ValueError(f"bank {name}: module {b['module']!r} is not {sk.attribute!r}")
    return sk


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a {what} is not a string")
    return value


def _layer_spec(x: Mapping[str, Any], clusters: int, bank: str) -> tuple[str, int, float]:
    cluster, scale = x["cluster"], x["scale"]
    if type(cluster) is not int or not 0 <= cluster < clusters:
        raise ValueError(f"bank {bank}: cluster {cluster!r} is not one of its {clusters}")
    if type(scale) not in (int, float) or not math.isfinite(scale):
        raise ValueError(f"bank {bank}: scale {scale!r} is not a finite number")
    return _text(x["name"], "layer name"), cluster, float(scale)


def stored_rows(
    state_dict: Mapping[str, Tensor], sk: Skeleton, templates: Tensor | None = None
) -> None:
    """Refuse a bank whose stored tensors do not hold the clusters (and templates) declared."""
    key = f"{sk.attribute}.{'weights' if sk.stores_weights else 'directions'}"
    stored = state_dict.get(key)
    if stored is None:
        raise ArchitectureError(f"the folded state dict is missing {key} (bank {sk.name})")
    rows = stored.shape[0] if stored.dim() else None
    if rows != sk.num_clusters:
        raise CheckpointError(
            f"bank {sk.name}: the program declares {sk.num_clusters} clusters but {key} holds "
            f"{rows if rows is not None else 'a scalar'}"
        )
    if (
        templates is not None
        and not sk.stores_weights
        and stored.shape[1:] != (templates.shape[0],)
    ):
        raise CheckpointError(
            f"bank {sk.name}: {key} is {tuple(stored.shape)}, not ({sk.num_clusters}, "
            f"{templates.shape[0]})"
        )


def untied_keys(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Each tensor once, under its first key, and ``{other key: first key}`` for the ties.

    safetensors refuses tensors sharing memory, and a clone would store a tie twice: the file
    holds one tensor and the program the map of who else uses it (:func:`with_aliases`).
    """
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple[Any, ...], str] = {}
    buffers: set[int | None] = set()  # storages written so far (None: empty tensors)
    for key, value in state_dict.items():
        owner = first.setdefault(storage_id(value), key)
        if owner != key:
            aliases[key] = owner
            continue
        # Another view of memory already stored (a slice of it) is a tensor of its own: a copy.
        ptr = value.untyped_storage().data_ptr() if value.numel() else None
        tensors[key] = value.detach().clone() if ptr in buffers else value.detach().contiguous()
        buffers.add(ptr)
    return tensors, aliases


def with_aliases(program: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> dict:
    """``state_dict`` with the tied keys of the program's ``aliases`` map back (same tensors)."""
    aliases = program.get("aliases", {})
    if not isinstance(aliases, dict):
        raise CheckpointError("malformed user-fold program: 'aliases' is not a map")
    limits.count(len(aliases), "user-fold program aliases", limit=limits.MAX_KEYS, name="MAX_KEYS")
    full = dict(state_dict)
    for alias, owner in aliases.items():
        if not isinstance(owner, str) or owner not in state_dict or alias in state_dict:
            raise CheckpointError(
                f"malformed user-fold program: alias {alias!r} of {owner!r} does not name a "
                "missing key and a stored tensor"
            )
        full[alias] = state_dict[owner]
    return full
