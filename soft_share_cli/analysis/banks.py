"""Find the template banks of a state dict and the shared layers that draw from each.

Works on any state dict, not only SWRN. Under the authors' naming
(:mod:`~soft_share_cli.analysis.bank_rules`) a *bank* is a key whose last component is
``templates`` holding a 5-d floating tensor ``(K, O, I, k, k)``; a *layer* is a key whose last
component is ``coefficients`` holding K numbers shaped ``(K,)`` or ``(K, 1, 1, 1, 1)``. Other
names and shapes (``alpha``, ``mix``, ... beside a ``(K, O, I, k, k)`` or ``(K, O, I)`` tensor
under any name), glob overrides, and hard ties are :mod:`~soft_share_cli.analysis.discovery`'s;
:attr:`Bank.rule` says which rule found each bank (:data:`AUTHORS_RULE` for the authors').
Keys whose coefficients share one storage (one ``nn.Parameter`` given to several layers, or one
module reused) are one layer per key, each tied to the first (:attr:`Layer.tied_to`): one
vector, used several times.

One bank usually appears under several keys, because every module that holds it registers it
(``bank_1.templates``, ``stage_1.1.bank.templates``, ``stage_1.1.conv1.bank.templates``, ...).
Keys are grouped by storage first. State dicts whose aliases became separate *copies* (e.g.
each tensor was cloned) are handled too: a group whose keys all look like aliases
(``<m>.bank.templates``, or ``<layer>.<x>.templates`` below a module with ``coefficients``) joins
a group with the same shape, dtype and bit-identical values. Two primary banks (such as
``bank_1`` and ``bank_2``) are never merged, even when equal. Files that kept one key per bank
(safetensors ``save_model``) need the fallback rules of :func:`find_banks` to map layers.

A *hard tie* (``hard_ties=True``: one conv or linear weight storage under several keys) is a
:class:`Bank` of kind ``"hard-tie"``: K = 1, its one template the tied weight, one layer per key
with coefficient 1.0, every layer tied to the first. The similarity, clustering and loop code
then report it as what it is, one weight used several times; the analysis counts its tensor once.

Problems are reported as :class:`BankIssue` values, never raised: an analysis of a damaged or
unusual checkpoint should show what it can.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from soft_share_cli.analysis import bank_rules as rules
from soft_share_cli.analysis import discovery
from soft_share_cli.analysis.bank_rules import ISSUE_KINDS, BankIssue
from soft_share_cli.analysis.discovery import AUTHORS_RULE, HARD_TIE, SOFT
from soft_share_cli.checkpoints import arrays
from soft_share_cli.errors import InputError
from soft_share_cli.limits import MAX_LAYERS_PER_BANK, limit_error
from soft_share_cli.models.params import storage_id

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["AUTHORS_RULE", "ISSUE_KINDS", "Bank", "BankDiscovery", "BankIssue", "Layer"]


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
    rule: str = AUTHORS_RULE  # which rule found it, for the report
    kind: str = SOFT  # "soft", or "hard-tie": K = 1, the template is the tied weight

    @property
    def num_templates(self) -> int:
        return int(self.templates.shape[0])

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of one generated weight: ``(O, I, k, k)`` or, for a linear bank, ``(O, I)``."""
        return tuple(int(s) for s in self.templates.shape[1:])

    @property
    def template_shape(self) -> tuple[int, int, int, int]:
        """``(O, I, kh, kw)``; a linear bank's ``(O, I)`` as the 1×1 conv it equals."""
        o, i, kh, kw = (*self.weight_shape, 1, 1)[:4]
        return o, i, kh, kw

    @property
    def weight_numel(self) -> int:
        return int(np.prod(self.weight_shape, dtype=np.int64))

    def coefficient_matrix(self) -> np.ndarray:
        """The ``(L, K)`` float64 matrix of the layers' coefficients, one row per layer."""
        if not self.layers:
            return np.empty((0, self.num_templates), dtype=np.float64)
        return np.stack([layer.coefficients for layer in self.layers])

    def discovery_dict(self) -> dict[str, Any]:
        """``{"rule", "kind"}`` for a bank found by other than the authors' naming, else ``{}``
        (so the authors' layout reports exactly what it always did)."""
        if self.rule == AUTHORS_RULE and self.kind == SOFT:
            return {}
        return {"rule": self.rule, "kind": self.kind, "weight_shape": list(self.weight_shape)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no template values)."""
        return {
            "name": self.name,
            "keys": list(self.keys),
            "num_templates": self.num_templates,
            "template_shape": list(self.template_shape),
            "dtype": arrays.dtype_name(self.templates),
            **self.discovery_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }


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


def find_banks(
    state_dict: Mapping[str, Any],
    *,
    bank_key: str | None = None,
    coefficient_key: str | None = None,
    hard_ties: bool = False,
) -> BankDiscovery:
    """Find every template bank in ``state_dict`` and map each coefficient vector to one.

    Coefficients under the authors' naming (or matching the glob ``coefficient_key``) are mapped
    by :func:`~soft_share_cli.analysis.bank_rules.assign` to the authors' banks (or those
    matching the glob ``bank_key``), then, failing that, by the module-path and K rules of
    :func:`~soft_share_cli.analysis.discovery.match_bank` to any bank-shaped tensor; other
    coefficient-like vectors (``alpha``, ``mix``, ...) by the latter alone, and silently left
    alone when no bank has their K. ``hard_ties`` adds a bank of kind ``"hard-tie"`` per conv or
    linear weight storage under several keys.

    Issues (never exceptions): ``orphan-coefficients`` (no bank), ``ambiguous-bank`` (several),
    ``k-mismatch`` and ``non-finite`` (layer left out), ``zero-norm`` (layer kept: similarity
    handles it), ``bank-without-layers`` (bank kept with no layers), and ``non-finite`` templates.
    Banks come in the state-dict order of their first layer; banks without layers come last.
    Values may be torch tensors or :class:`~soft_share_cli.checkpoints.arrays.StoredArray`; only the
    coefficients are read, and the templates once, to check that they are finite.
    """
    _check_patterns(state_dict, bank_key, coefficient_key)
    keys = list(state_dict)
    position = {key: i for i, key in enumerate(keys)}
    if coefficient_key is None:
        declared = [k for k in keys if rules.is_coefficients(k, state_dict[k])]
    else:
        declared = [
            k for k in keys if discovery.is_coefficient_like(k, state_dict[k], coefficient_key)
        ]
    taken = set(declared)
    others = [
        k
        for k in keys
        if coefficient_key is None
        and k not in taken
        and discovery.is_coefficient_like(k, state_dict[k])
    ]
    undeclared = set(others)
    issues: list[BankIssue] = []

    def is_declared_bank(key: str, tensor: Any) -> bool:
        if bank_key is None:
            return rules.is_templates(key, tensor)
        return discovery.matches(key, bank_key) and discovery.is_bank_shaped(tensor)

    groups = rules.group_templates(state_dict, {rules.module(k) for k in declared}, issues,
                                   is_declared_bank)  # fmt: skip
    bank_of_key = {key: g for g, group in enumerate(groups) for key in group.keys}
    below = rules.children(bank_of_key)
    namer = rules.bank_name if bank_key is None else discovery.candidate_name
    names = [namer(group.keys, position) for group in groups]
    # Every bank-shaped tensor is a candidate for the other rules; the declared banks first.
    candidates = [
        discovery.Candidate(tuple(g.keys), g.tensor, int(g.tensor.shape[0]), True, True)
        for g in groups
    ]
    if bank_key is None:
        excluded = set(bank_of_key) | taken | undeclared
        candidates += discovery.bank_candidates(state_dict, excluded)
    names += [discovery.candidate_name(c.keys, position) for c in candidates[len(groups) :]]

    members: list[list[tuple[str, np.ndarray, str]]] = [[] for _ in candidates]
    for key in [k for k in keys if k in taken or k in undeclared]:
        raw, k = state_dict[key], arrays.numel(state_dict[key])
        found: int | BankIssue | None = None
        how = "authors"
        if key in taken:
            found = rules.assign(rules.module(key), k, groups, bank_of_key, below, names, key)
        if key not in taken or (not isinstance(found, int) and len(candidates) > len(groups)):
            match = discovery.match_bank(key, k, candidates)
            if isinstance(match, tuple):
                found, how = match
            elif isinstance(match, str) and found is None:
                found = BankIssue("ambiguous-bank", key, match)
        if found is None:
            continue  # a coefficient-like tensor no bank fits: some other parameter
        if isinstance(found, BankIssue):
            issues.append(found)
            continue
        vector = arrays.to_float64(raw)  # K numbers: all the analysis reads of a layer
        layer = rules.module(key)
        issue = _check_layer(layer, key, vector, names[found], candidates[found].k)
        if issue is not None:
            issues.append(issue)
            if issue.kind != "zero-norm":  # zero-norm layers stay: similarity handles them
                continue
        members[found].append((key, vector, how))
        if len(members[found]) > MAX_LAYERS_PER_BANK:  # similarity and clustering are quadratic
            raise limit_error(f"bank {names[found]}", f"more than {MAX_LAYERS_PER_BANK} layers",
                              MAX_LAYERS_PER_BANK, "MAX_LAYERS_PER_BANK")  # fmt: skip

    banks = []
    for c, candidate in enumerate(candidates):
        if c >= len(groups) and not members[c]:
            continue  # a bank-shaped tensor no layer draws from: not a bank
        first: dict[tuple[Any, ...], int] = {}  # coefficient storage -> its first layer
        layers = []
        for index, (key, vector, _) in enumerate(members[c]):
            tied = first.setdefault(storage_id(state_dict[key]), index)
            layers.append(
                Layer(rules.module(key), key, vector, index, None if tied == index else tied)
            )
        how = (
            ("authors" if bank_key is None else f"pattern '{bank_key}'")
            if c < len(groups)
            else "shape"
        )
        rule = discovery.soft_rule(names[c], how, [(key, h) for key, _, h in members[c]])
        ordered = tuple(
            sorted(candidate.keys, key=position.__getitem__)
        )  # merges append out of order
        banks.append(Bank(names[c], ordered, candidate.tensor, tuple(layers), rule))
        if not layers:
            message = f"bank {names[c]} has no layer using it; it is kept with no layers"
            issues.append(BankIssue("bank-without-layers", candidate.keys[0], message))
    if hard_ties:
        used = {key for bank in banks for key in bank.keys}
        banks += _hard_tie_banks(state_dict, used, {b.name for b in banks}, position)
    # Stable sort: banks without layers keep their own relative (templates key) order.
    banks.sort(key=lambda b: position[b.layers[0].key] if b.layers else len(keys))
    return BankDiscovery(tuple(banks), tuple(issues))


def _check_patterns(
    state_dict: Mapping[str, Any], bank_key: str | None, coefficient_key: str | None
) -> None:
    """Refuse a key pattern that names nothing it could mean (InputError): no silent fallback."""
    for flag, pattern, fits, wanted in (
        ("--bank-key", bank_key, discovery.is_bank_shaped, "a (K, O, I, k, k) or (K, O, I) bank"),
        ("--coefficient-key", coefficient_key, discovery.is_vector, "a vector of K numbers"),
    ):
        if pattern is None:
            continue
        named = [key for key in state_dict if discovery.matches(key, pattern)]
        if not named:
            hint = "" if pattern.startswith("*") else f"; '*.{pattern}' matches it in any module"
            raise InputError(
                f"{flag} {pattern!r} matches no key of the state dict (a glob on whole keys{hint})"
            )
        if not any(fits(state_dict[key]) for key in named):
            raise InputError(
                f"{flag} {pattern!r} matches {len(named)} key(s) ({named[0]}, ...), none of "
                f"them {wanted}"
            )


def _hard_tie_banks(
    state_dict: Mapping[str, Any], used: set[str], taken: set[str], position: dict[str, int]
) -> list[Bank]:
    """One K = 1 bank per weight storage under several keys: each key a use, coefficient 1."""
    banks = []
    for keys in discovery.hard_ties(state_dict, used):
        name = rules.bank_name(list(keys), position)
        name = name if name not in taken else min(keys, key=position.__getitem__)
        taken.add(name)
        one = np.ones(1, dtype=np.float64)
        layers = tuple(
            Layer(rules.module(key), key, one, i, None if i == 0 else 0)
            for i, key in enumerate(keys)
        )
        rule = f"hard tie: one weight storage under {len(keys)} keys"
        banks.append(Bank(name, keys, state_dict[keys[0]][None], layers, rule, HARD_TIE))
    return banks


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
