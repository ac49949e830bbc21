"""The analysis commands on a file: ``ssc analyze`` and ``ssc plot-similarity``.

A file of any kind (a soft-shared checkpoint, or a folded network of any kind seen as the
soft-shared network it came from) goes through :func:`analyze_checkpoint`; the analysis itself is
:func:`soft_share_cli.analysis.analyze.analyze_state_dict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from soft_share_cli.analysis.analyze import (
    Analysis,
    AnalysisOptions,
    analyze_state_dict,
    describe_unshared,
)
from soft_share_cli.errors import InputError


def analyze_checkpoint(
    path: str | Path, options: AnalysisOptions | None = None, key: str | None = None
) -> Analysis:
    """Load ``path`` safely and analyse it; works on any network built from template banks.

    ``key`` names the entry of a wrapped checkpoint that holds the state dict (``--key``)."""
    options = AnalysisOptions() if options is None else options
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
        raise InputError(
            f"{path}: no template banks found ({describe_unshared(state_dict)}); "
            "is this a soft-shared network?"
        )
    facts = {
        "path": str(path),
        "format": ckpt.format,
        "container": ckpt.container,
        "stripped_prefix": ckpt.stripped_prefix,
        "placeholders": list(ckpt.placeholders),
        "architecture": architecture,
    }
    return Analysis(facts, options, banks, issues, counts, graph)


def plot_similarity(
    path: str | Path,
    output: str | Path,
    options: Any,
    graph_output: str | Path | None = None,
    key: str | None = None,
) -> list[str]:
    """Draw every bank's similarity heatmap (and optionally the recurrence graph); return paths."""
    from soft_share_cli.render.graph_plot import graph_figure
    from soft_share_cli.render.plots import (
        HeatmapInput,
        save_figure,
        similarity_figure,
    )

    analysis = analyze_checkpoint(path, options, key)
    panels = [
        HeatmapInput(
            bank=b.bank.name,
            layers=[layer.name for layer in b.bank.layers],
            matrix=b.similarity.matrix,
            clusters=b.clusters,
        )
        for b in analysis.banks
    ]
    metric = "LSM" if options.metric.value == "coefficients" else "weight similarity"
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
