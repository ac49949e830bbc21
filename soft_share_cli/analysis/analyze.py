"""The analysis of a state dict: banks, similarity, clusters, loops and parameter counts

(a file of any kind goes through :func:`soft_share_cli.pipeline.analyze.analyze_checkpoint`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from soft_share_cli.analysis.banks import Bank, BankIssue, find_banks
from soft_share_cli.analysis.clustering import Clusters, Linkage, cluster_layers
from soft_share_cli.analysis.defaults import DEFAULT_THRESHOLD
from soft_share_cli.analysis.discovery import HARD_TIE
from soft_share_cli.analysis.loops import Loop, find_loops, layer_letters, recurrence_graph
from soft_share_cli.analysis.plan import BankFold, ParameterCounts, parameter_counts, plan_bank
from soft_share_cli.analysis.similarity import BankSimilarity, Metric, bank_similarity, gram_matrix
from soft_share_cli.errors import InputError
from soft_share_cli.models.params import count_state_dict_parameters, repeated_layer_parameters

if TYPE_CHECKING:
    import networkx as nx
    from torch import Tensor

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class AnalysisOptions:
    """How layers are compared and grouped; ``ssc analyze`` and ``ssc fold`` share these."""

    threshold: float = DEFAULT_THRESHOLD  # layers with similarity >= threshold may share a weight
    metric: Metric = Metric.COEFFICIENTS  # the paper's LSM, or the generated weights' similarity
    linkage: Linkage = Linkage.COMPLETE  # complete: every pair in a cluster meets the threshold
    signed: bool = False  # report the cosine's sign (clustering always uses its magnitude)
    # Glob patterns on whole keys replacing the naming rules of find_banks (--bank-key, ...).
    bank_key: str | None = None
    coefficient_key: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"--threshold must lie in [0, 1], got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        """The options; the key patterns only where given (so reports without them are as ever)."""
        patterns = {"bank_key": self.bank_key, "coefficient_key": self.coefficient_key}
        return {
            "threshold": self.threshold,
            "metric": Metric(self.metric).value,
            "linkage": Linkage(self.linkage).value,
            "signed": self.signed,
            **{name: value for name, value in patterns.items() if value is not None},
        }


@dataclass(frozen=True)
class BankAnalysis:
    """One bank: its layers' similarity, clusters, loops and fold plan."""

    bank: Bank = field(repr=False, compare=False)
    similarity: BankSimilarity
    clusters: Clusters
    loops: tuple[Loop, ...]
    fold: BankFold

    @property
    def hard_tie(self) -> bool:
        """One weight storage used by every layer (:mod:`soft_share_cli.analysis.discovery`)."""
        return self.bank.kind == HARD_TIE

    @property
    def distinct_before(self) -> int:
        """Distinct weights the checkpoint has for these layers: one per coefficient storage
        (layers sharing one are one weight), one for a hard tie."""
        if self.hard_tie and self.bank.layers:
            return 1
        return sum(layer.tied_to is None for layer in self.bank.layers)

    @property
    def letters(self) -> list[str]:
        return layer_letters(self.clusters, len(self.bank.layers))

    def to_dict(self) -> dict[str, Any]:
        letters = self.letters
        nearest = self.similarity.nearest()
        layers = []
        for i, layer in enumerate(self.bank.layers):
            j, s = nearest[i]
            layers.append(
                {
                    "index": i,
                    "name": layer.name,
                    "key": layer.key,
                    "cluster": letters[i],
                    "norm": float(self.similarity.norms[i]),
                    "nearest": None if j is None else self.bank.layers[j].name,
                    "nearest_similarity": s,
                    "scale": self.fold.layers[i].scale,
                    "residual": self.fold.layers[i].residual,
                }
            )
        return {
            "name": self.bank.name,
            "keys": list(self.bank.keys),
            "templates": self.bank.num_templates,
            "template_shape": list(self.bank.template_shape),
            **self.bank.discovery_dict(),  # rule, kind and weight shape, beyond the authors' naming
            "layers": layers,
            "lsm": [[float(x) for x in row] for row in self.similarity.matrix],
            "clusters": [list(c) for c in self.clusters],
            "loops": [loop.to_dict() for loop in self.loops],
            "distinct_weights": {"before": self.distinct_before, "after": len(self.clusters)},
            # a fold would store more than the checkpoint: it keeps the bank as it is (the loops
            # above are still what the layers are)
            **({"kept_as_is": True} if self.fold.kept_as_is else {}),
        }


@dataclass(frozen=True)
class Analysis:
    """Everything ``ssc analyze`` reports about one checkpoint."""

    checkpoint: dict[str, Any]  # path, format, container, prefix, placeholders, architecture
    options: AnalysisOptions
    banks: tuple[BankAnalysis, ...]
    issues: tuple[BankIssue, ...]
    params: ParameterCounts
    graph: nx.DiGraph = field(repr=False, compare=False)

    @property
    def loop_summary(self) -> list[str]:
        return [f"{loop.bank}: {loop.description}" for b in self.banks for loop in b.loops]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "checkpoint": self.checkpoint,
            **self.options.to_dict(),
            "banks": [b.to_dict() for b in self.banks],
            "loops": self.loop_summary,
            "issues": [i.to_dict() for i in self.issues],
            "params": self.params.to_dict(),
        }


_COEFFICIENT_LIKE = re.compile(r"coef|alpha|mix|lambda", re.IGNORECASE)


def describe_unshared(state_dict: Mapping[str, Any], shown: int = 3) -> str:
    """What a state dict with no usable template bank holds, in one line for an error message.

    For instance ``"12 tensors, 5 conv/linear weights (1 hard-tied: one tensor under 4 keys),
    coefficient-like tensors: a.alpha, b.alpha, no 5-d '...templates' bank"``.
    """
    from soft_share_cli.checkpoints import arrays
    from soft_share_cli.models.params import is_layer_weight, storage_id

    def listed(keys: list[str]) -> str:
        more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    weights = [(k, v) for k, v in state_dict.items() if is_layer_weight(k, v)]
    uses: dict[tuple[Any, ...], int] = {}
    for _, v in weights:
        uses[storage_id(v)] = uses.get(storage_id(v), 0) + 1
    parts = [f"{len(state_dict)} tensors", f"{len(uses)} conv/linear weights"]
    tied = [n for n in uses.values() if n > 1]
    if tied:
        one = f"one tensor under {tied[0]} keys" if len(tied) == 1 else f"{sum(tied)} keys in all"
        parts[-1] += f" ({len(tied)} hard-tied: {one})"
    like = [
        k
        for k, v in state_dict.items()
        if _COEFFICIENT_LIKE.search(k.rsplit(".", 1)[-1]) and arrays.is_tensor(v)
    ]
    if like:
        parts.append(f"coefficient-like tensors: {listed(like)}")
    five = [k for k, v in state_dict.items() if arrays.is_tensor(v) and len(arrays.shape(v)) == 5]
    if five:
        parts.append(f"5-d tensors: {listed(five)}")
    bank = find_banks(state_dict).banks
    parts.append(
        f"template banks no layer uses: {listed([b.name for b in bank])}"
        if bank
        else "no 5-d '...templates' bank"
    )
    return ", ".join(parts)


def _roots(bank: Bank) -> list[int]:
    """Per layer, the first layer of its coefficient storage (itself unless tied)."""
    return [i if layer.tied_to is None else layer.tied_to for i, layer in enumerate(bank.layers)]


def _tied_as_one(bank: Bank, similarity: BankSimilarity) -> BankSimilarity:
    """Layers tied to one coefficient storage are one layer: their similarity is exactly 1."""
    roots = _roots(bank)
    if roots == list(range(len(roots))):
        return similarity
    matrix = np.array(similarity.matrix)
    same = np.equal.outer(roots, roots)
    matrix[same] = 1.0
    matrix.flags.writeable = False
    return replace(similarity, matrix=matrix)


def _cluster(bank: Bank, magnitude: np.ndarray, options: AnalysisOptions) -> Clusters:
    """Cluster one point per coefficient storage; tied layers join their storage's cluster."""
    roots = _roots(bank)
    distinct = sorted(set(roots))
    grouped = cluster_layers(
        magnitude[np.ix_(distinct, distinct)], options.threshold, Linkage(options.linkage)
    )
    cluster_of = {distinct[j]: c for c, members in enumerate(grouped) for j in members}
    clusters: list[list[int]] = [[] for _ in grouped]
    for i, r in enumerate(roots):
        clusters[cluster_of[r]].append(i)
    return tuple(tuple(c) for c in clusters)  # ordered by smallest member, as cluster_layers


def analyze_state_dict(
    state_dict: Mapping[str, Tensor],
    options: AnalysisOptions = AnalysisOptions(),
    *,
    with_graph: bool = True,
    stored_parameters: int | None = None,
    hard_ties: bool | None = None,
) -> tuple[tuple[BankAnalysis, ...], tuple[BankIssue, ...], ParameterCounts, nx.DiGraph | None]:
    """Analyse the template banks of any state dict (no architecture needed).

    ``hard_ties`` adds a K = 1 bank per conv or linear weight storage under several keys
    (:func:`~soft_share_cli.analysis.banks.find_banks`): similarity 1, one cluster, a loop. Its
    tensor is already counted once by storage, and its uses by the unshared equivalent, so it
    adds nothing to the parameter figures. ``None`` (the default) means ``with_graph``: the
    analysis commands report hard ties, a fold (which has nothing to fold in them) leaves them out.

    ``with_graph=False`` leaves out the recurrence graph (``None``), and with it networkx's
    import: a fold needs the clusters, not the graph. ``stored_parameters`` is what the file
    really stores when ``state_dict`` is a soft-shared *view* of a folded network (whose one-hot
    coefficients the file does not hold): the checkpoint's count, where the view's own would
    mislead; the unshared and folded counts are the view's, which are exact.
    """
    discovery = find_banks(
        state_dict,
        bank_key=options.bank_key,
        coefficient_key=options.coefficient_key,
        hard_ties=with_graph if hard_ties is None else hard_ties,
    )
    metric = Metric(options.metric)
    results = []
    for bank in discovery.banks:
        similarity = _tied_as_one(bank, bank_similarity(bank, metric, options.signed))
        magnitude = abs(similarity.matrix) if options.signed else similarity.matrix
        clusters = _cluster(bank, magnitude, options)
        names = [layer.name for layer in bank.layers]
        gram = gram_matrix(bank.templates) if metric is Metric.WEIGHT else None
        fold = plan_bank(bank, clusters, gram=gram, state_dict=state_dict)
        loops = find_loops(bank.name, names, clusters)
        results.append(BankAnalysis(bank, similarity, clusters, loops, fold))
    used = [r for r in results if r.bank.layers]
    # execution order = state-dict order of the layers' coefficients, across banks
    position = {key: i for i, key in enumerate(state_dict)}
    order = sorted(
        ((r.bank.name, layer.index) for r in used for layer in r.bank.layers),
        key=lambda item: position[
            next(b for b in used if b.bank.name == item[0]).bank.layers[item[1]].key
        ],
    )
    graph = None
    if with_graph:
        banks = [(r.bank.name, [lay.name for lay in r.bank.layers], r.clusters) for r in used]
        graph = recurrence_graph(banks, order)
    counts = parameter_counts(
        count_state_dict_parameters(state_dict),
        tuple(r.fold for r in results if not r.hard_tie),  # a hard tie is counted by storage
        repeated_layer_parameters(state_dict),
    )
    if stored_parameters is not None:
        counts = replace(counts, checkpoint_unique=stored_parameters)
    return tuple(results), discovery.issues, counts, graph
