"""The analysis commands on a file: ``ssc analyze`` and ``ssc plot-similarity``.

A file of any kind (a soft-shared checkpoint, or a folded network of any kind seen as the
soft-shared network it came from) goes through :func:`analyze_checkpoint`; the analysis itself is
:func:`soft_share_cli.analysis.analyze.analyze_state_dict`. With ``--model`` the user's network
is built, run once on a probe and analysed by what its calls share
(:func:`soft_share_cli.analysis.traced.analyze_traced`), with no naming assumption; its
``folded`` figure is what ``ssc fold --model`` at the same options would store, found by running
that fold (:class:`~soft_share_cli.pipeline.fold_source.FoldSource`, nothing written), or the
checkpoint's own count, with the reason, where the fold would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soft_share_cli.analysis.analyze import (
    Analysis,
    AnalysisOptions,
    analyze_state_dict,
    describe_unshared,
)
from soft_share_cli.errors import InputError, SscError

if TYPE_CHECKING:
    from soft_share_cli.checkpoints.load import LoadedCheckpoint

PROBE_SEED = 0


@dataclass(frozen=True)
class TracedReport(Analysis):
    """An :class:`Analysis` found by tracing the network (``--model``): each group a bank."""

    trace: dict[str, Any] = field(default_factory=dict)  # what the trace saw (calls, probe)
    # Why ``params.folded`` is the checkpoint's own count (``ssc fold`` would refuse), if it is.
    fold_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "discovery": "traced",
            "trace": self.trace,
            "fold_note": self.fold_note,
        }


def analyze_checkpoint(
    path: str | Path,
    options: AnalysisOptions | None = None,
    key: str | None = None,
    model: str | None = None,
    *,
    fold: bool = True,
) -> Analysis:
    """Load ``path`` safely and analyse it; works on any network built from template banks.

    ``key`` names the entry of a wrapped checkpoint that holds the state dict (``--key``);
    ``model`` (``--model MODULE:CALLABLE``) builds the user's network and traces it instead
    (``fold=False``: without running the fold for the ``folded`` figure, which stays the plan's
    estimate)."""
    options = AnalysisOptions() if options is None else options
    if model is not None:
        return analyze_model(path, model, options, key, fold=fold)
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.errors import ArchitectureError, CheckpointError
    from soft_share_cli.folding.kinds import folded_view
    from soft_share_cli.models.builder import architecture_of

    # Without torch where the file allows: the analysis reads coefficients, not the whole file.
    ckpt = load_checkpoint(path, arrays=True, key=key)
    state_dict = ckpt.state_dict
    stored: int | None = None  # what a folded file stores, where its view differs
    view = folded_view(ckpt)  # a folded file of any kind, seen as soft-shared
    architecture: str | None
    if view is not None:
        state_dict, stored, architecture = view.state_dict, view.stored, view.architecture
    else:
        try:
            architecture = architecture_of(ckpt).describe()
        except ArchitectureError:
            architecture = None  # analysis needs no architecture
    try:
        banks, issues, counts, graph = analyze_state_dict(
            state_dict, options, stored_parameters=stored
        )
    except CheckpointError as exc:  # a limit of soft_share_cli.limits: name the file
        raise CheckpointError(f"{path}: {exc}") from None
    assert graph is not None
    if not banks:
        from soft_share_cli.models.user import made_with

        made_by = made_with(ckpt.arch, ckpt.arch_kwargs)
        factory = f"{made_by} (the factory it was made with)" if made_by else "MODULE:CALLABLE"
        raise InputError(
            f"{path}: no template banks found ({describe_unshared(state_dict)}); "
            "to name the bank and coefficient tensors yourself use --bank-key/--coefficient-key "
            "PATTERN; to find sharing by running the network (a shared basis, a flat parameter "
            f"store, any names), pass --model {factory}"
        )
    return Analysis(_facts(path, ckpt, architecture), options, banks, issues, counts, graph)


def _facts(path: str | Path, ckpt: Any, architecture: str) -> dict[str, Any]:
    """What the report says of the file: its path, format, container and what loading did."""
    return {
        "path": str(path),
        "format": ckpt.format,
        "container": ckpt.container,
        "stripped_prefix": ckpt.stripped_prefix,
        "placeholders": list(ckpt.placeholders),
        "architecture": architecture,
    }


def analyze_model(
    path: str | Path,
    model: str,
    options: AnalysisOptions,
    key: str | None = None,
    *,
    fold: bool = True,
) -> TracedReport:
    """Build ``model`` with ``path``'s weights, run it once on a seeded probe and analyse the
    parameters its conv and linear calls share (exit 2 where nothing is shared)."""
    import torch

    from soft_share_cli.analysis.trace import probe_shape_for
    from soft_share_cli.analysis.traced import analyze_traced, describe_trace
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.folding.kinds import kind_of
    from soft_share_cli.models.user import build_user_model

    if options.bank_key is not None or options.coefficient_key is not None:
        raise InputError(
            "--bank-key and --coefficient-key name state-dict keys; --model finds what is "
            "shared by running the network, so they do not apply with it"
        )
    ckpt = load_checkpoint(path, key=key)
    if kind_of(ckpt) is not None:
        raise InputError(
            f"{path} is a folded network; --model traces a checkpoint of your own network "
            "(analyze a fold without --model)"
        )
    network = build_user_model(model, ckpt.state_dict, ckpt.metadata, str(path))
    try:
        shape = probe_shape_for(network, ckpt.metadata)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    generator = torch.Generator().manual_seed(PROBE_SEED)
    probe = torch.randn(2, *shape, generator=generator)
    traced = analyze_traced(network, probe, options)
    if not traced.groups:
        raise InputError(
            f"{path}: no parameters shared between conv/linear calls "
            f"({len(traced.trace.calls)} calls traced)"
        )
    facts = {**_facts(path, ckpt, f"your network ({model})"), "model": model}
    assert traced.graph is not None
    counts, note = traced.counts, None
    if fold:
        folded, note = fold_figure(ckpt, model, options)
        if folded is None:  # the fold would refuse: the checkpoint stays as it is
            folded = traced.counts.checkpoint_unique
        counts = replace(traced.counts, folded=folded)
    return TracedReport(
        facts,
        options,
        traced.results,
        traced.issues,
        counts,
        traced.graph,
        describe_trace(traced.trace),
        note,
    )


def fold_figure(
    ckpt: LoadedCheckpoint, model: str, options: AnalysisOptions
) -> tuple[int | None, str | None]:
    """What ``ssc fold CKPT --model MODEL`` at ``options`` would store, by the fold itself
    (nothing written): ``(count, None)``; where the fold refuses, ``(None, why)`` in one line."""
    from soft_share_cli.pipeline.fold_source import FoldSource

    try:
        return FoldSource(ckpt, model, options).fold(options).counts.folded, None
    except SscError as exc:  # every refusal of ``ssc fold`` is one (exit 2)
        why = str(exc).removeprefix(f"{ckpt.path}: ").removesuffix("; nothing was written")
        return None, f"folded = the checkpoint's count: ssc fold would refuse ({why})"


def plot_similarity(
    path: str | Path,
    output: str | Path,
    options: Any,
    graph_output: str | Path | None = None,
    key: str | None = None,
    model: str | None = None,
) -> list[str]:
    """Draw every bank's similarity heatmap (and optionally the recurrence graph); return paths."""
    from soft_share_cli.render.graph_plot import graph_figure
    from soft_share_cli.render.plots import (
        HeatmapInput,
        save_figure,
        similarity_figure,
    )

    analysis = analyze_checkpoint(path, options, key, model, fold=False)  # no counts drawn
    panels = [
        HeatmapInput(
            bank=b.bank.name,
            layers=[layer.name for layer in b.bank.layers],
            matrix=b.similarity.matrix,
            clusters=b.clusters,
        )
        for b in analysis.banks
    ]
    used = {b.similarity.metric.value for b in analysis.banks}  # a traced group may fall back
    metric = " / ".join(
        name
        for value, name in (("coefficients", "LSM"), ("weight", "weight similarity"))
        if value in used
    )
    title = f"{Path(path).name}: {metric}"
    save_figure(
        similarity_figure(panels, options.threshold, title=title, signed=options.signed), output
    )
    written = [str(output)]
    if graph_output is not None:
        save_figure(
            graph_figure(analysis.graph, title=f"{Path(path).name}: recurrence graph"), graph_output
        )
        written.append(str(graph_output))
    return written
