"""Find the template banks of a state dict and the shared layers that draw from each.

Works on any state dict, not only SWRN: a *bank* is a key whose last component is ``templates``
holding a 5-d floating tensor ``(K, O, I, k, k)``; a *layer* is a key whose last component is
``coefficients`` holding K numbers shaped ``(K,)`` or ``(K, 1, 1, 1, 1)``. Keys whose coefficients
share one storage (one ``nn.Parameter`` given to several layers, or one module reused) are one
layer per key, each tied to the first (:attr:`Layer.tied_to`): one vector, used several times.

One bank usually appears under several keys, because every module that holds it registers it
(``bank_1.templates``, ``stage_1.1.bank.templates``, ``stage_1.1.conv1.bank.templates``, ...).
Keys are grouped by storage first. State dicts whose aliases became separate *copies* (e.g.
each tensor was cloned) are handled too: a group whose keys all look like aliases
(``<m>.bank.templates``, or ``<layer>.<x>.templates`` below a module with ``coefficients``) joins
a group with the same shape, dtype and bit-identical values. Two primary banks (such as
``bank_1`` and ``bank_2``) are never merged, even when equal. Files that kept one key per bank
(safetensors ``save_model``) need the fallback rules of :func:`find_banks` to map layers.

Problems are reported as :class:`BankIssue` values, never raised: an analysis of a damaged or
unusual checkpoint should show what it can.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from soft_share_cli.checkpoints import arrays
from soft_share_cli.errors import InputError
from soft_share_cli.limits import MAX_BANKS, MAX_LAYERS_PER_BANK, limit_error
from soft_share_cli.models.params import storage_id

if TYPE_CHECKING:
    from torch import Tensor

TEMPLATES = "templates"
COEFFICIENTS = "coefficients"
ISSUE_KINDS = (
    "k-mismatch",
    "orphan-coefficients",
    "bank-without-layers",
    "zero-norm",
    "non-finite",
    "ambiguous-bank",
)
_STAGE = re.compile(r"stage_(\d+)")


@dataclass(frozen=True)
class Layer:
    """One shared conv: its coefficient vector and where it sits in its bank."""

    name: str  # module path, the key minus ".coefficients"
    key: str
    coefficients: np.ndarray = field(compare=False, repr=False)  # (K,) float64 copy: K numbers
    index: int = 0  # position in the bank, in state-dict order
    tied_to: int | None = None  # index of the earlier layer whose coefficient storage this uses

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "name": self.name,
            "key": self.key,
            "index": self.index,
            "coefficients": [float(x) for x in self.coefficients.tolist()],
        }


@dataclass(frozen=True)
class Bank:
    """A template bank and the layers using it."""

    name: str  # shortest templates key minus ".templates"
    keys: tuple[str, ...]  # every key holding this bank (shared storage or an identical alias copy)
    # The tensor itself (torch, or a StoredArray): may be mmap-backed, so read it only on need.
    templates: Tensor | np.ndarray = field(compare=False, repr=False)
    layers: tuple[Layer, ...] = ()

    @property
    def num_templates(self) -> int:
        return int(self.templates.shape[0])

    @property
    def template_shape(self) -> tuple[int, int, int, int]:
        o, i, kh, kw = (int(s) for s in self.templates.shape[1:])
        return o, i, kh, kw

    @property
    def weight_numel(self) -> int:
        o, i, kh, kw = self.template_shape
        return o * i * kh * kw

    def coefficient_matrix(self) -> np.ndarray:
        """The ``(L, K)`` float64 matrix of the layers' coefficients, one row per layer."""
        if not self.layers:
            return np.empty((0, self.num_templates), dtype=np.float64)
        return np.stack([layer.coefficients for layer in self.layers])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no template values)."""
        return {
            "name": self.name,
            "keys": list(self.keys),
            "num_templates": self.num_templates,
            "template_shape": list(self.template_shape),
            "dtype": arrays.dtype_name(self.templates),
            "layers": [layer.to_dict() for layer in self.layers],
        }


@dataclass(frozen=True)
class BankIssue:
    """Something in the state dict that kept a layer or bank from a clean analysis."""

    kind: str  # one of ISSUE_KINDS
    key: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready summary."""
        return {"kind": self.kind, "key": self.key, "message": self.message}


@dataclass(frozen=True)
class BankDiscovery:
    """Everything :func:`find_banks` found: banks (with their layers) and issues."""

    banks: tuple[Bank, ...]
    issues: tuple[BankIssue, ...]

    def bank(self, name: str) -> Bank:
        """The bank called ``name``; :class:`InputError` naming the known banks otherwise."""
        for bank in self.banks:
            if bank.name == name:
                return bank
        known = ", ".join(b.name for b in self.banks) or "none"
        raise InputError(f"no template bank named {name!r}; banks found: {known}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "banks": [bank.to_dict() for bank in self.banks],
            "issues": [issue.to_dict() for issue in self.issues],
        }


@dataclass
class _Group:
    """Template keys sharing one storage region (or merged as identical alias copies)."""

    keys: list[str]
    tensor: Any  # a torch tensor or a StoredArray
    alias_only: bool


def find_banks(state_dict: Mapping[str, Any]) -> BankDiscovery:
    """Find every template bank in ``state_dict`` and map each coefficient vector to one.

    A layer ``L`` is mapped to a bank by the first rule that names exactly one:

    1. a templates key one level below the layer, ``L.<x>.templates`` (SConv2d's ``L.bank``);
    2. walking up ``L``'s module path, a templates key one level below an ancestor ``P``:
       ``P.bank.templates`` wins, else the only one (or the only one with the layer's K);
    3. the SWRN convention: ``[prefix.]stage_<i>.…`` uses ``[prefix.]bank_<i>``;
    4. the only bank whose K equals the layer's.

    Issues (never exceptions): ``orphan-coefficients`` (no bank), ``ambiguous-bank`` (several),
    ``k-mismatch`` and ``non-finite`` (layer left out), ``zero-norm`` (layer kept: similarity
    handles it), ``bank-without-layers`` (bank kept with no layers), and ``non-finite`` templates.
    Banks come in the state-dict order of their first layer; banks without layers come last.
    Values may be torch tensors or :class:`~soft_share_cli.checkpoints.arrays.StoredArray`; only the
    coefficients are read, and the templates once, to check that they are finite.
    """
    keys = list(state_dict)
    position = {key: i for i, key in enumerate(keys)}
    coefficient_keys = [k for k in keys if _is_coefficients(k, state_dict[k])]
    layer_names = {_module(k) for k in coefficient_keys}
    issues: list[BankIssue] = []

    groups = _group_templates(state_dict, layer_names, issues)
    bank_of_key = {key: g for g, group in enumerate(groups) for key in group.keys}
    children = _children(bank_of_key)
    names = [_bank_name(group.keys, position) for group in groups]

    members: list[list[tuple[str, np.ndarray]]] = [[] for _ in groups]
    for key in coefficient_keys:
        name, raw = _module(key), state_dict[key]
        found = _assign(name, arrays.numel(raw), groups, bank_of_key, children, names)
        if isinstance(found, BankIssue):
            issues.append(found)
            continue
        vector = arrays.to_float64(raw)  # K numbers: all the analysis reads of a layer
        issue = _check_layer(name, key, vector, names[found], int(groups[found].tensor.shape[0]))
        if issue is not None:
            issues.append(issue)
            if issue.kind != "zero-norm":  # zero-norm layers stay: similarity handles them
                continue
        members[found].append((key, vector))
        if len(members[found]) > MAX_LAYERS_PER_BANK:  # similarity and clustering are quadratic
            raise limit_error(f"bank {names[found]}", f"more than {MAX_LAYERS_PER_BANK} layers",
                              MAX_LAYERS_PER_BANK, "MAX_LAYERS_PER_BANK")  # fmt: skip

    banks = []
    for g, group in enumerate(groups):
        first: dict[tuple[Any, ...], int] = {}  # coefficient storage -> its first layer
        layers = []
        for index, (key, vector) in enumerate(members[g]):
            tied = first.setdefault(storage_id(state_dict[key]), index)
            layers.append(Layer(_module(key), key, vector, index, None if tied == index else tied))
        ordered = tuple(sorted(group.keys, key=position.__getitem__))  # merges append out of order
        banks.append(Bank(names[g], ordered, group.tensor, tuple(layers)))
        if not layers:
            message = f"bank {names[g]} has no layer using it; it is kept with no layers"
            issues.append(BankIssue("bank-without-layers", group.keys[0], message))
    # Stable sort: banks without layers keep their own relative (templates key) order.
    banks.sort(key=lambda b: position[b.layers[0].key] if b.layers else len(keys))
    return BankDiscovery(tuple(banks), tuple(issues))


def _check_layer(
    name: str, key: str, values: np.ndarray, bank: str, bank_k: int
) -> BankIssue | None:
    """The issue with a mapped layer's coefficients, if any (all but zero-norm exclude it)."""
    k = values.size
    if k != bank_k:
        message = (
            f"{name} has {k} coefficients but its bank {bank} has {bank_k} templates; "
            "the layer is left out"
        )
        return BankIssue("k-mismatch", key, message)
    if not bool(np.isfinite(values).all()):
        message = f"{name} has NaN or infinite coefficients; the layer is left out"
        return BankIssue("non-finite", key, message)
    if not bool(values.any()):
        message = (
            f"{name} has all-zero coefficients, so its generated weight is zero; it is kept "
            "and counts as similar to no other layer"
        )
        return BankIssue("zero-norm", key, message)
    return None


def _is_coefficients(key: str, tensor: Any) -> bool:
    if key.rsplit(".", 1)[-1] != COEFFICIENTS or not arrays.is_tensor(tensor):
        return False
    # (K,) or (K, 1, 1, 1, 1): anything else is some other parameter that happens to share the name.
    shape = arrays.shape(tensor)
    return (
        arrays.is_floating(tensor) and len(shape) >= 1 and shape[0] >= 1 and set(shape[1:]) <= {1}
    )


def _is_templates(key: str, tensor: Any) -> bool:
    return (
        key.rsplit(".", 1)[-1] == TEMPLATES
        and arrays.is_tensor(tensor)
        and arrays.is_floating(tensor)
        and len(tensor.shape) == 5
        and tensor.shape[0] >= 1
    )


def _module(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _looks_like_alias(key: str, layer_names: set[str]) -> bool:
    # A registration of a bank held elsewhere: `<m>.bank.templates` (SConv2d, the authors' Block),
    # or any `<layer>.<x>.templates` one level below a module that owns coefficients.
    parts = key.split(".")
    return len(parts) >= 3 and (parts[-2] == "bank" or ".".join(parts[:-2]) in layer_names)


def _group_templates(
    state_dict: Mapping[str, Any], layer_names: set[str], issues: list[BankIssue]
) -> list[_Group]:
    by_storage: dict[tuple[Any, ...], _Group] = {}
    for key, tensor in state_dict.items():
        if not _is_templates(key, tensor):
            continue
        alias = _looks_like_alias(key, layer_names)
        storage = storage_id(tensor)  # empty tensors may share a null pointer: never the same
        if storage in by_storage:
            group = by_storage[storage]
            group.keys.append(key)
            group.alias_only = group.alias_only and alias
        else:
            by_storage[storage] = _Group([key], tensor, alias)

    if len(by_storage) > MAX_BANKS:  # the merge below compares banks pairwise
        raise limit_error("the state dict", f"{len(by_storage)} template banks", MAX_BANKS,
                          "MAX_BANKS")  # fmt: skip
    # Identical copies: merge only when one side is nothing but aliases, so two real banks that
    # happen to be equal (e.g. both freshly zeroed) stay apart.
    merged: list[_Group] = []
    for group in by_storage.values():
        matches = [
            other
            for other in merged
            if (group.alias_only or other.alias_only) and arrays.equal(other.tensor, group.tensor)
        ]
        if not matches:
            merged.append(group)
            continue
        target = matches[0]
        if len(matches) > 1:
            listed = ", ".join(m.keys[0] for m in matches)
            message = (
                f"{group.keys[0]} is a copy equal to several banks ({listed}); "
                "it was attributed to the first"
            )
            issues.append(BankIssue("ambiguous-bank", group.keys[0], message))
        target.keys.extend(group.keys)
        if target.alias_only and not group.alias_only:
            target.tensor = group.tensor  # represent the bank by its primary copy
        target.alias_only = target.alias_only and group.alias_only

    for group in merged:
        # Coefficients are checked per layer; a non-finite template poisons every weight.
        if not arrays.all_finite(group.tensor):  # chunked: a mapped bank is never held whole
            message = (
                f"template bank {group.keys[0]} holds NaN or infinite values; every weight "
                "generated from it is undefined"
            )
            issues.append(BankIssue("non-finite", group.keys[0], message))
    return merged


def _bank_name(keys: list[str], position: dict[str, int]) -> str:
    # Shortest key path (fewest components, then characters), ties by state-dict order.
    best = min(keys, key=lambda k: (k.count("."), len(k), position[k]))
    return _module(best) or "<root>"


def _children(bank_of_key: dict[str, int]) -> dict[str, dict[str, int]]:
    """``{module: {child: bank}}`` for every templates key ``module.child.templates``."""
    children: dict[str, dict[str, int]] = {}
    for key, g in bank_of_key.items():
        holder = _module(key)
        if holder:  # a bare root "templates" key is one level below nothing
            children.setdefault(_module(holder), {})[holder.rsplit(".", 1)[-1]] = g
    return children


def _assign(
    layer: str,
    k: int,
    groups: list[_Group],
    bank_of_key: dict[str, int],
    children: dict[str, dict[str, int]],
    names: list[str],
) -> int | BankIssue:
    """Index of the bank of ``layer`` (K = ``k``), or the issue explaining why there is none."""
    key = f"{layer}.{COEFFICIENTS}" if layer else COEFFICIENTS
    # Rule 1: the layer's own registration of its bank.
    own = set(children.get(layer, {}).values()) if layer else set()
    if len(own) == 1:
        return own.pop()
    # Rule 2: walk up the module path (the layer's parent first, the root last).
    parts = layer.split(".") if layer else []
    for depth in range(len(parts) - 1, -1, -1):
        candidates = children.get(".".join(parts[:depth]), {})
        if "bank" in candidates:
            return candidates["bank"]
        distinct = set(candidates.values())
        if len(distinct) > 1:
            distinct = {g for g in distinct if int(groups[g].tensor.shape[0]) == k}
        if len(distinct) == 1:
            return distinct.pop()
    # Rule 3: SWRN, `[prefix.]stage_<i>.…` -> `[prefix.]bank_<i>`.
    for j, part in enumerate(parts):
        match = _STAGE.fullmatch(part)
        if match:
            prefix = "".join(f"{p}." for p in parts[:j])
            g = bank_of_key.get(f"{prefix}bank_{match.group(1)}.{TEMPLATES}")
            if g is not None:
                return g
            break
    # Rule 4: the only bank with K templates.
    same_k = [g for g, group in enumerate(groups) if int(group.tensor.shape[0]) == k]
    if len(same_k) == 1:
        return same_k[0]
    if same_k:
        listed = ", ".join(names[g] for g in same_k)
        message = (
            f"{layer or key} could belong to any of the banks with {k} templates ({listed}); "
            "nothing in the key names decides, so the layer is left out"
        )
        return BankIssue("ambiguous-bank", key, message)
    reason = "there is no template bank" if not groups else f"no bank has {k} templates"
    message = f"{layer or key} has coefficients but {reason}; the layer is left out"
    return BankIssue("orphan-coefficients", key, message)
