"""``ssc fold``: plan, convert, verify and measure a fold, then write it (or refuse to).

The steps, each a function of its own: rebuild the original network; cluster its banks
(:mod:`analysis`); build the folded network with real loops (:mod:`folded`, or :mod:`surgery`
for user networks); check function preservation on a seeded random probe (no data needed);
measure top-1 of both networks on the same samples when data is given (optionally after
re-estimating BatchNorm statistics); write the folded file, and the plain-conv version on request.
Gates (``atol``, ``max_drop``) that fail are reported and nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.analysis.clustering import Linkage, merge_heights
from soft_share_cli.checkpoints.load import LoadedCheckpoint, load_checkpoint
from soft_share_cli.data.loaders import Dataset
from soft_share_cli.errors import InputError
from soft_share_cli.evaluation.classification import evaluate
from soft_share_cli.evaluation.fidelity import Fidelity, compare_outputs, scores_classes
from soft_share_cli.evaluation.tasks import check_data_dims, evaluate_task, is_task_data
from soft_share_cli.folding.verify import (
    compare_on_probe,
    probe_input,
    recalibrate_batchnorm,
)
from soft_share_cli.pipeline.fold_report import (
    Candidate,
    DataCheck,
    FidelityCheck,
    FoldReport,
    Scores,
)
from soft_share_cli.pipeline.fold_source import FoldSource, NothingToFold

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FoldOptions:
    """Everything ``ssc fold`` can be asked for, besides the paths."""

    analysis: AnalysisOptions = AnalysisOptions()
    auto_threshold: bool = False  # search the thresholds where the clustering changes
    data: str | None = None  # a --data spec: accuracy of both networks on its test split
    max_drop: float | None = None  # gate: original top-1 minus folded top-1, in points
    atol: float | None = None  # gate: max |logit difference| on the random probe
    recalibrate_bn: int = 0  # batches of the train split to re-estimate BatchNorm statistics
    batch_size: int = 256
    device: str = "cpu"
    model: str | None = None  # "module:callable" building a user network (bring your own)
    key: str | None = None  # the entry of a wrapped checkpoint that holds the state dict
    probe_samples: int = 16  # random inputs for the function-preservation check
    seed: int = 0


def _agreement(a: Scores, b: Scores) -> float:
    assert a.predictions is not None and b.predictions is not None
    return 100.0 * float((a.predictions == b.predictions).float().mean())


def _fidelity(
    source: FoldSource,
    fold: Any,
    test: Dataset,
    options: FoldOptions,
    data_spec: Any,
    progress: Progress | None,
) -> FidelityCheck:
    """The folded network's outputs against the original's on ``test`` (and again after a
    BatchNorm recalibration when asked for)."""
    from soft_share_cli.data.loaders import load_data

    def compare(stage: str) -> Fidelity:
        callback = (lambda done, total: progress(stage, done, total)) if progress else None
        return compare_outputs(
            fold.network,
            source.model,
            test,
            batch_size=options.batch_size,
            device=options.device,
            progress=callback,
        )

    folded = compare("folded")
    recalibrated = None
    if options.recalibrate_bn:
        train = load_data(data_spec, "train")
        recalibrate_batchnorm(fold.network, train, options.recalibrate_bn, options.batch_size)
        recalibrated = compare("recalibrated")
    return FidelityCheck(str(options.data), folded, recalibrated)


def _check_data_fits(source: FoldSource, data: Dataset, spec: str) -> None:
    """Refuse data the network cannot be measured on (DataError, exit 2), as ``ssc eval`` does."""
    from soft_share_cli.errors import DataError

    channels = getattr(source.model, "in_channels", None)
    if isinstance(channels, int) and data.in_channels != channels:
        raise DataError(
            f"{spec} has {data.in_channels} input channels but {source.architecture} expects "
            f"{channels}"
        )
    check_data_dims(source.model, data, spec, source.architecture)
    if source.model_spec is None and is_task_data(data) != source.is_sfcn:
        kind = "labels every pixel" if is_task_data(data) else "has one label per image"
        raise DataError(f"{source.architecture} cannot be measured on {spec}: it {kind}")


def _evaluate(
    model: nn.Module, data: Dataset, options: FoldOptions, stage: str, progress: Progress | None
) -> Scores:
    callback = (lambda done, total: progress(stage, done, total)) if progress else None
    run: Callable[..., Any] = evaluate_task if is_task_data(data) else evaluate
    return run(
        model,
        data,
        batch_size=options.batch_size,
        device=options.device,
        progress=callback,
        keep_predictions=True,
    )


def candidate_thresholds(
    ckpt: LoadedCheckpoint, options: AnalysisOptions, source: FoldSource | None = None
) -> list[float]:
    """Every threshold at which some bank's clustering changes (and 1.0), highest first; with
    --model, of the traced analysis' groups (hard ties, one cluster always, left out)."""
    if source is not None and source.model_spec is not None:
        results = tuple(r for r in source.traced(options).results if not r.hard_tie)
    else:
        results, _, _, _ = analyze_state_dict(ckpt.state_dict, options, with_graph=False)
    heights = {1.0}
    for r in results:
        matrix = abs(r.similarity.matrix)
        if len(matrix) >= 2:
            heights.update(round(h, 12) for h in merge_heights(matrix, Linkage(options.linkage)))
    return sorted((h for h in heights if 0.0 <= h <= 1.0), reverse=True)


def _check_names(output: str | Path, materialize: str | Path | None) -> None:
    """The file names must say what is written: a folded network is safetensors, the plain WRN
    of --materialize a torch checkpoint (a .pt name on a safetensors file misleads every tool)."""
    if Path(output).suffix.lower() != ".safetensors":
        raise InputError(f"-o {output}: ssc fold writes a safetensors file; name it *.safetensors")
    if materialize is not None and Path(materialize).suffix.lower() == ".safetensors":
        raise InputError(
            f"--materialize {materialize}: the plain network is written as a torch checkpoint; "
            "name it *.pt"
        )


def fold_checkpoint(
    path: str | Path,
    output: str | Path,
    options: FoldOptions = FoldOptions(),
    *,
    materialize: str | Path | None = None,
    progress: Progress | None = None,
) -> FoldReport:
    """Fold ``path`` and write the folded network to ``output`` (unless a gate fails)."""
    import time
    from dataclasses import replace

    start = time.perf_counter()

    from soft_share_cli.data.loaders import load_data
    from soft_share_cli.data.spec import parse_data_spec

    if options.auto_threshold and (options.data is None or options.max_drop is None):
        raise InputError("--threshold auto needs --data and --max-drop to choose a threshold")
    if materialize is not None and options.model is not None:
        raise InputError("--materialize writes a plain WRN; it is not available with --model")
    if options.recalibrate_bn and options.data is None:
        raise InputError("--recalibrate-bn needs --data (statistics come from its train split)")
    if options.max_drop is not None and options.data is None:
        raise InputError("--max-drop needs --data (it compares top-1 of both networks on it)")
    if options.device != "cpu" and options.data is None:
        raise InputError(
            f"--device {options.device} applies to the evaluation on --data; without --data the "
            "fold runs on the CPU (leave --device out)"
        )
    _check_names(output, materialize)
    source = FoldSource(load_checkpoint(path, key=options.key), options.model, options.analysis)
    ckpt = source.ckpt  # a folded input: its soft-shared view
    if materialize is not None and source.is_sfcn:
        raise InputError("--materialize writes a plain WRN; it is not available for an SFCN")
    data_spec = parse_data_spec(options.data) if options.data else None
    test = load_data(data_spec, "test") if data_spec else None
    if test is not None:
        _check_data_fits(source, test, str(options.data))
    fidelity_only = test is not None and not scores_classes(source.model, test)
    if fidelity_only and (options.max_drop is not None or options.auto_threshold):
        raise InputError(
            f"--max-drop and --threshold auto compare accuracy; {source.architecture}'s outputs "
            "are not class scores (the fold's output fidelity is measured instead)"
        )
    scored = test if not fidelity_only else None
    original_eval = (
        _evaluate(source.model, scored, options, "original", progress) if scored else None
    )

    candidates: list[Candidate] = []
    chosen = options.analysis
    if options.auto_threshold:
        assert test is not None and original_eval is not None and options.max_drop is not None
        best: tuple[int, float] | None = None
        for t in candidate_thresholds(ckpt, options.analysis, source):
            try:
                trial = source.fold(replace(options.analysis, threshold=t))
            except NothingToFold:
                continue  # at this threshold every group is kept as it is
            result = _evaluate(trial.network, test, options, f"τ = {t:.4f}", progress)
            delta = result.headline - original_eval.headline
            ok = -delta <= options.max_drop
            weights = sum(len(p.clusters) for p in trial.plans.values())
            folded = trial.counts.folded
            candidates.append(Candidate(t, weights, folded, result.headline, delta, ok))
            if ok and (best is None or trial.counts.folded < best[0]):
                best = (trial.counts.folded, t)
        if best is not None:
            chosen = replace(options.analysis, threshold=best[1])

    fold = source.fold(chosen)
    chosen = fold.options  # the metric a traced fold really used
    pointless = source.nothing_saved(fold)
    if pointless is not None:
        raise InputError(pointless)
    probe = compare_on_probe(
        source.model,
        fold.network,
        source.probe_input(options.probe_samples, options.seed)
        if options.model is not None
        else probe_input(ckpt, source.model, options.probe_samples, options.seed),
    )
    if not math.isfinite(probe.max_abs_diff):  # e.g. coefficients too extreme to refactor
        raise InputError(
            f"{path}: the original or folded network gives non-finite outputs on the probe "
            "inputs; nothing was written (ssc analyze shows the coefficients)"
        )
    data_check = fidelity = None
    if fidelity_only:
        assert test is not None
        fidelity = _fidelity(source, fold, test, options, data_spec, progress)
    if test is not None and original_eval is not None:
        folded_eval = _evaluate(fold.network, test, options, "folded", progress)
        recal = recal_agree = None
        if options.recalibrate_bn:
            recalibrate_batchnorm(
                fold.network,
                load_data(data_spec or "", "train"),
                options.recalibrate_bn,
                options.batch_size,
            )
            recal = _evaluate(fold.network, test, options, "recalibrated", progress)
            recal_agree = _agreement(original_eval, recal)
        data_check = DataCheck(
            options.data or "",
            original_eval,
            folded_eval,
            _agreement(original_eval, folded_eval),
            recal,
            recal_agree,
        )

    failures = []
    if options.atol is not None and probe.max_abs_diff > options.atol:
        failures.append(
            f"max logit difference {probe.max_abs_diff:.3g} exceeds --atol {options.atol:g}"
        )
    if (
        options.max_drop is not None
        and data_check is not None
        and -data_check.delta_top1 > options.max_drop
    ):
        failures.append(
            f"top-1 drops {-data_check.delta_top1:.2f} points, "
            f"more than --max-drop {options.max_drop:g}"
        )
    if options.auto_threshold and not any(c.within_budget for c in candidates):
        failures.append("no threshold keeps the drop within --max-drop")

    written = materialized = None
    sizes = {"checkpoint": Path(path).stat().st_size}
    if not failures:
        report_meta = {
            "source": str(path),
            **chosen.to_dict(),
            "loops": list(fold.loops),
            "data": None if data_check is None else data_check.to_dict(),
            "fidelity": None if fidelity is None else fidelity.to_dict(),
        }
        source.write(fold, output, report_meta)
        written = str(output)
        sizes["folded"] = Path(output).stat().st_size
        if materialize is not None:
            source.write_materialized(fold, materialize, report_meta)
            materialized = str(materialize)
            sizes["materialized"] = Path(materialize).stat().st_size
    banks = tuple(
        {
            "bank": name,
            "before": len(p.layers),
            "after": len(p.clusters),
            "storage": getattr(p, "storage", "weights" if p.stores_weights else "templates"),
            "gains": p.gains,
            "max_residual": max((layer.residual for layer in p.layers), default=0.0),
            **({"kept_as_is": True} if p.kept_as_is else {}),
        }
        for name, p in fold.plans.items()
    )
    return FoldReport(
        str(path),
        written,
        materialized,
        source.architecture,
        chosen,
        fold.counts,
        banks,
        fold.loops,
        probe,
        data_check,
        tuple(candidates),
        fidelity=fidelity,
        file_bytes=sizes,
        failures=tuple(failures),
        seconds=time.perf_counter() - start,
    )
