"""The authors' naming rules of :func:`~soft_share_cli.analysis.banks.find_banks`, and its issues.

A *bank* is a key whose last component is ``templates`` holding a 5-d floating tensor
``(K, O, I, k, k)``; a *layer* is a key whose last component is ``coefficients`` holding K
numbers. Template keys are grouped by storage (one bank registered by every module that holds
it), and identical *copies* whose keys all look like aliases join the bank they copy
(:func:`group_templates`); each layer is then mapped to one bank by :func:`assign`. Other names
and shapes, and hard ties, are :mod:`soft_share_cli.analysis.discovery`'s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from soft_share_cli.checkpoints import arrays
from soft_share_cli.limits import MAX_BANKS, limit_error
from soft_share_cli.models.params import storage_id

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
class BankIssue:
    """Something in the state dict that kept a layer or bank from a clean analysis."""

    kind: str  # one of ISSUE_KINDS
    key: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready summary."""
        return {"kind": self.kind, "key": self.key, "message": self.message}


@dataclass
class Group:
    """Template keys sharing one storage region (or merged as identical alias copies)."""

    keys: list[str]
    tensor: Any  # a torch tensor or a StoredArray
    alias_only: bool


def module(key: str) -> str:
    """The module path of a state-dict key (``""`` for a root key)."""
    return key.rsplit(".", 1)[0] if "." in key else ""


def is_coefficients(key: str, tensor: Any) -> bool:
    """The authors' coefficient vector: ``...coefficients`` holding K numbers."""
    if key.rsplit(".", 1)[-1] != COEFFICIENTS or not arrays.is_tensor(tensor):
        return False
    # (K,) or (K, 1, 1, 1, 1): anything else is some other parameter that happens to share the name.
    shape = arrays.shape(tensor)
    return (
        arrays.is_floating(tensor) and len(shape) >= 1 and shape[0] >= 1 and set(shape[1:]) <= {1}
    )


def is_templates(key: str, tensor: Any) -> bool:
    """The authors' bank: ``...templates`` holding a 5-d floating ``(K, O, I, k, k)`` (or a
    bank of 1-d kernels, 4-d ``(K, O, I, k)``)."""
    return (
        key.rsplit(".", 1)[-1] == TEMPLATES
        and arrays.is_tensor(tensor)
        and arrays.is_floating(tensor)
        and len(tensor.shape) in (4, 5)
        and tensor.shape[0] >= 1
    )


def _looks_like_alias(key: str, layer_names: set[str]) -> bool:
    # A registration of a bank held elsewhere: `<m>.bank.templates` (SConv2d, the authors' Block),
    # or any `<layer>.<x>.templates` one level below a module that owns coefficients.
    parts = key.split(".")
    return len(parts) >= 3 and (parts[-2] == "bank" or ".".join(parts[:-2]) in layer_names)


def group_templates(
    state_dict: Mapping[str, Any],
    layer_names: set[str],
    issues: list[BankIssue],
    is_bank: Callable[[str, Any], bool] = is_templates,
) -> list[Group]:
    """The banks among the keys ``is_bank`` accepts: grouped by storage, alias copies merged."""
    by_storage: dict[tuple[Any, ...], Group] = {}
    for key, tensor in state_dict.items():
        if not is_bank(key, tensor):
            continue
        alias = _looks_like_alias(key, layer_names)
        storage = storage_id(tensor)  # empty tensors may share a null pointer: never the same
        if storage in by_storage:
            group = by_storage[storage]
            group.keys.append(key)
            group.alias_only = group.alias_only and alias
        else:
            by_storage[storage] = Group([key], tensor, alias)

    if len(by_storage) > MAX_BANKS:  # the merge below compares banks pairwise
        raise limit_error("the state dict", f"{len(by_storage)} template banks", MAX_BANKS,
                          "MAX_BANKS")  # fmt: skip
    # Identical copies: merge only when one side is nothing but aliases, so two real banks that
    # happen to be equal (e.g. both freshly zeroed) stay apart.
    merged: list[Group] = []
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


def bank_name(keys: list[str], position: dict[str, int]) -> str:
    """The shortest key's module (fewest components, then characters; ties by position)."""
    best = min(keys, key=lambda k: (k.count("."), len(k), position[k]))
    return module(best) or "<root>"


def children(bank_of_key: dict[str, int]) -> dict[str, dict[str, int]]:
    """``{module: {child: bank}}`` for every templates key ``module.child.templates``."""
    found: dict[str, dict[str, int]] = {}
    for key, g in bank_of_key.items():
        holder = module(key)
        if holder:  # a bare root "templates" key is one level below nothing
            found.setdefault(module(holder), {})[holder.rsplit(".", 1)[-1]] = g
    return found


def assign(
    layer: str,
    k: int,
    groups: list[Group],
    bank_of_key: dict[str, int],
    below: dict[str, dict[str, int]],
    names: list[str],
    key: str | None = None,
) -> int | BankIssue:
    """Index of the bank of ``layer`` (K = ``k``), or the issue explaining why there is none.

    The first rule that names exactly one bank wins:

    1. a templates key one level below the layer, ``L.<x>.templates`` (SConv2d's ``L.bank``);
    2. walking up ``L``'s module path, a templates key one level below an ancestor ``P``:
       ``P.bank.templates`` wins, else the only one (or the only one with the layer's K);
    3. the SWRN convention: ``[prefix.]stage_<i>.…`` uses ``[prefix.]bank_<i>``;
    4. the only bank whose K equals the layer's.

    ``below`` is :func:`children` of ``bank_of_key``; ``key`` is the layer's coefficient key
    (``L.coefficients`` unless given).
    """
    if key is None:
        key = f"{layer}.{COEFFICIENTS}" if layer else COEFFICIENTS
    # Rule 1: the layer's own registration of its bank.
    own = set(below.get(layer, {}).values()) if layer else set()
    if len(own) == 1:
        return own.pop()
    # Rule 2: walk up the module path (the layer's parent first, the root last).
    parts = layer.split(".") if layer else []
    for depth in range(len(parts) - 1, -1, -1):
        candidates = below.get(".".join(parts[:depth]), {})
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
