"""Sharing beyond the authors' naming, from the state dict alone: other names and shapes, hard ties.

**Soft sharing under any names.** A *bank candidate* is a floating tensor shaped like a stack of
K layer weights, ``(K, O, I, k, k)`` for convs or ``(K, O, I)`` for linear layers, under any
name; keys sharing one storage are one candidate. A *coefficient candidate* is a floating tensor
of K numbers shaped ``(K,)``, ``(K, 1, 1, 1, 1)``, ``(1, K)``, ``(K, 1)``, ... (at most one axis
other than 1) whose last key component is one of :data:`COEFFICIENT_NAMES` (``coefficients``,
``coeffs``, ``alpha``, ``mix``, ``weights_mix``, ``lambdas``, ...). Glob patterns on whole keys
(``bank_key``, ``coefficient_key``; the CLI's ``--bank-key`` and ``--coefficient-key``) replace
either rule. :func:`match_bank` maps a coefficient key of module ``M`` to the one candidate with
its K, by the first rule that names exactly one:

1. *module path*: a key of the candidate at ``M`` or one level below it (``M.bank``,
   ``M.bank.weight``: the layer's own registration of the bank, found through storage identity),
   then the same at each ancestor of ``M``, the parent first; where several meet a rule, those
   whose name hints at a bank (:data:`BANK_HINT`, or a ``bank_key`` match) are preferred;
2. *K*: the only candidate in the state dict with the layer's K (a hinted one first).

A candidate no coefficient maps to is just some other tensor (a Conv1d or Conv3d weight, say),
and is not a bank; a coefficient-like tensor that maps to nothing is not a layer. Which rule
matched is kept per bank as a short string (:func:`soft_rule`) for the report.

**Hard ties.** One conv or linear weight storage under several ``...weight`` keys (one module
reused by consecutive blocks that keep their own BatchNorms) is a loop already.
:func:`hard_ties` finds them; :mod:`~soft_share_cli.analysis.banks` represents each as a bank of
K = 1 whose one template is the tied weight, with one layer per key (every key a use, as
:func:`~soft_share_cli.models.params.repeated_layer_parameters` counts them), coefficient 1.0,
all tied to the first layer's coefficient storage: similarity exactly 1, one cluster, a loop.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from soft_share_cli.checkpoints import arrays
from soft_share_cli.models.params import is_layer_weight, storage_id

#: Last key components taken for per-layer coefficients (compared without case).
COEFFICIENT_NAMES = frozenset(
    {
        "coefficients",
        "coefficient",
        "coeffs",
        "coeff",
        "coefs",
        "coef",
        "alpha",
        "alphas",
        "mix",
        "mixing",
        "mixture",
        "weights_mix",
        "mix_weights",
        "mixing_weights",
        "lambdas",
        "lambda",
        "lam",
        "lams",
    }
)
#: A key component that hints at a bank: preferred where the module path names several.
BANK_HINT = re.compile(r"bank|templ|basis|filters|kernels|store", re.IGNORECASE)
AUTHORS_RULE = "5-d templates + coefficients (authors' naming)"
HARD_TIE = "hard-tie"
SOFT = "soft"


@dataclass(frozen=True)
class Candidate:
    """Bank-shaped keys sharing one storage."""

    keys: tuple[str, ...]
    tensor: Any
    k: int
    hinted: bool  # a key's name hints at a bank, or it matched the bank_key pattern
    declared: bool = False  # matched the bank_key pattern, or the authors' 5-d templates


def _module(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def is_vector(tensor: Any) -> bool:
    """K >= 1 floating numbers with at most one axis other than 1: ``(K,)``, ``(1, K)``, ..."""
    if not arrays.is_tensor(tensor) or not arrays.is_floating(tensor):
        return False
    shape = arrays.shape(tensor)
    return len(shape) >= 1 and arrays.numel(tensor) >= 1 and sum(s != 1 for s in shape) <= 1


def is_bank_shaped(tensor: Any) -> bool:
    """A floating stack of K >= 1 layer weights: ``(K, O, I, k, k)`` or ``(K, O, I)``."""
    return (
        arrays.is_tensor(tensor)
        and arrays.is_floating(tensor)
        and len(arrays.shape(tensor)) in (3, 5)
        and arrays.shape(tensor)[0] >= 1
    )


def matches(key: str, pattern: str) -> bool:
    """Whether the glob ``pattern`` matches the whole key (case-sensitive)."""
    return fnmatch.fnmatchcase(key, pattern)


def is_coefficient_like(key: str, tensor: Any, pattern: str | None = None) -> bool:
    """A coefficient candidate: a vector under a coefficient name (or matching ``pattern``)."""
    named = (
        matches(key, pattern) if pattern is not None else _leaf(key).lower() in COEFFICIENT_NAMES
    )
    return named and is_vector(tensor)


def bank_candidates(
    state_dict: Mapping[str, Any], excluded: set[str], pattern: str | None = None
) -> list[Candidate]:
    """Bank-shaped tensors grouped by storage, in state-dict order (``excluded`` keys left out).

    With ``pattern``, only keys it matches; they count as declared (hinted) banks.
    """
    by_storage: dict[tuple[Any, ...], list[str]] = {}
    tensors: dict[tuple[Any, ...], Any] = {}
    for key, tensor in state_dict.items():
        if key in excluded or not is_bank_shaped(tensor):
            continue
        if pattern is not None and not matches(key, pattern):
            continue
        storage = storage_id(tensor)
        by_storage.setdefault(storage, []).append(key)
        tensors.setdefault(storage, tensor)
    found = []
    for storage, keys in by_storage.items():
        tensor = tensors[storage]
        hinted = pattern is not None or any(BANK_HINT.search(_leaf(k)) for k in keys)
        k = int(arrays.shape(tensor)[0])
        found.append(Candidate(tuple(keys), tensor, k, hinted, pattern is not None))
    return found


def _near(candidate: Candidate, module: str) -> bool:
    """A key of ``candidate`` at ``module`` or one level below it."""
    return any(_module(k) == module or _module(_module(k)) == module for k in candidate.keys)


def match_bank(key: str, k: int, candidates: Sequence[Candidate]) -> tuple[int, str] | str | None:
    """``(candidate index, "module path" | "K")`` for coefficient ``key`` with ``k`` numbers;
    a message when several candidates are equally good; None when none has its K."""
    same_k = [c for c, cand in enumerate(candidates) if cand.k == k]
    if not same_k:
        return None
    level = _module(key)
    while True:
        near = [c for c in same_k if _near(candidates[c], level)]
        hinted = [c for c in near if candidates[c].hinted]
        best = hinted or near
        if len(best) == 1:
            return best[0], "module path"
        if len(best) > 1:
            listed = ", ".join(candidates[c].keys[0] for c in best)
            return (
                f"{key} could draw from any of the banks with {k} templates at "
                f"{level or 'the root'} ({listed}); the layer is left out (--bank-key decides)"
            )
        if not level:
            break
        level = _module(level)
    hinted = [c for c in same_k if candidates[c].hinted]
    best = hinted or same_k
    if len(best) == 1:
        return best[0], "K"
    listed = ", ".join(candidates[c].keys[0] for c in best)
    return (
        f"{key} could draw from any of the banks with {k} templates ({listed}); nothing in "
        "the key names decides, so the layer is left out (--bank-key decides)"
    )


def candidate_name(keys: Sequence[str], position: Mapping[str, int]) -> str:
    """A bank's name: its shortest key, less a last component ``templates``."""
    best = min(keys, key=lambda k: (k.count("."), len(k), position[k]))
    return (_module(best) or "<root>") if _leaf(best) == "templates" else best


def soft_rule(bank: str, bank_how: str, layer_rules: Sequence[tuple[str, str]]) -> str:
    """The rule string of a bank: how the bank was recognised, how its layers were matched.

    ``layer_rules`` holds ``(coefficient key, how)`` per layer; ``how`` ``"authors"`` for the
    authors' rules (:func:`~soft_share_cli.analysis.bank_rules.assign`).
    """
    if bank_how == "authors" and all(how == "authors" for _, how in layer_rules):
        return AUTHORS_RULE
    head = "5-d templates" if bank_how == "authors" else f"bank '{bank}' by {bank_how}"
    parts: list[str] = []
    for key, how in layer_rules:
        text = f"coefficients '{_leaf(key)}' by " + (
            "the authors' rules" if how == "authors" else how
        )
        if text not in parts:
            parts.append(text)
    return ", ".join([head, *parts])


def hard_ties(state_dict: Mapping[str, Any], excluded: set[str]) -> list[tuple[str, ...]]:
    """Keys of every conv or linear weight storage held under two or more ``...weight`` keys
    (``excluded`` keys, such as those of soft banks, left out), in state-dict order."""
    by_storage: dict[tuple[Any, ...], list[str]] = {}
    for key, tensor in state_dict.items():
        if key not in excluded and is_layer_weight(key, tensor) and arrays.numel(tensor):
            by_storage.setdefault(storage_id(tensor), []).append(key)
    return [tuple(keys) for keys in by_storage.values() if len(keys) > 1]
