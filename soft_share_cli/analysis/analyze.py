"""The analysis of a state dict: banks, similarity, clusters, loops and parameter counts

(a file of any kind goes through :func:`soft_share_cli.pipeline.analyze.analyze_checkpoint`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from soft_share_cli.analysis.banks import Bank, BankIssue, find_banks
from soft_share_cli.analysis.clustering import Clusters, Linkage, cluster_layers
from soft_share_cli.analysis.defaults import DEFAULT_THRESHOLD
from soft_share_cli.analysis.loops import Loop, find_loops, layer_letters, recurrence_graph
from soft_share_cli.analysis.plan import BankFold, ParameterCounts, parameter_counts, plan_bank
from soft_share_cli.analysis.similarity import BankSimilarity, Metric, bank_similarity, gram_matrix
from soft_share_cli.errors import InputError
from soft_share_cli.models.params import count_state_dict_parameters

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

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"--threshold must lie in [0, 1], got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "metric": Metric(self.metric).value,
            "linkage": Linkage(self.linkage).value,
            "signed": self.signed,
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
            "layers": layers,
            "lsm": [[float(x) for x in row] for row in self.similarity.matrix],
            "clusters": [list(c) for c in self.clusters],
            "loops": [loop.to_dict() for loop in self.loops],
            "distinct_weights": {"before": len(self.bank.layers), "after": len(self.clusters)},
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


def analyze_state_dict(
    state_dict: Mapping[str, Tensor],
    options: AnalysisOptions = AnalysisOptions(),
    *,
    with_graph: bool = True,
    stored_parameters: int | None = None,
) -> tuple[tuple[BankAnalysis, ...], tuple[BankIssue, ...], ParameterCounts, nx.DiGraph | None]:
    """Analyse the template banks of any state dict (no architecture needed).

    ``with_graph=False`` leaves out the recurrence graph (``None``), and with it networkx's
    import: a fold needs the clusters, not the graph. ``stored_parameters`` is what the file
    really stores when ``state_dict`` is a soft-shared *view* of a folded network (whose one-hot
    coefficients the file does not hold): the checkpoint's count, where the view's own would
    mislead; the unshared and folded counts are the view's, which are exact.
    """
    discovery = find_banks(state_dict)
    metric = Metric(options.metric)
    results = []
    for bank in discovery.banks:
        similarity = bank_similarity(bank, metric, options.signed)
        magnitude = abs(similarity.matrix) if options.signed else similarity.matrix
        clusters = cluster_layers(magnitude, options.threshold, Linkage(options.linkage))
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
        count_state_dict_parameters(state_dict), tuple(r.fold for r in results)
    )
    if stored_parameters is not None:
        counts = replace(counts, checkpoint_unique=stored_parameters)
    return tuple(results), discovery.issues, counts, graph
