"""``ssc share``: turn a trained plain CNN into template banks, optionally fine-tune, write it.

The steps: open the source (:mod:`.share_source`: ssc's WRN, or the user's own network with
``--model``), find its groups of same-shape layers, choose K per group (``--templates`` or
``--keep``), fit each group by a cross-layer truncated SVD (:mod:`soft_share_cli.sharing`), check
the shared network against the original on a seeded random probe, and with ``--data`` measure
top-1 before and right after the conversion, fine-tune with the ``ssc train`` recipe (resumable
through ``OUTPUT.partial`` exactly as ``ssc train`` is) and measure again. The output is written
atomically: an ordinary SWRN checkpoint for a WRN (every ssc command reads it), the user's network
with its sharing record otherwise (rebuilt with ``--model``, so it must build twice to the same
network: :func:`~.share_source.second_build`). Every tensor is written in the source's dtype, and
the probe and top-1 are measured on the values as written (computed in float32).
"""

from __future__ import annotations

import contextlib
import hashlib
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from soft_share_cli.errors import InputError, SscError
from soft_share_cli.pipeline.share_options import (
    ShareOptions,
    ShareRun,
    check_options,
    train_config,
)
from soft_share_cli.pipeline.share_report import DataFigures, GroupFit, ProbeCheck, ShareReport

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class _Shared:
    """The fine-tuned network as :func:`~soft_share_cli.training.resume.train_resumably` saves
    it (arch, arch_kwargs, model)."""

    model: nn.Module = field(repr=False)
    arch: str
    arch_kwargs: dict[str, Any]
    history: tuple[Any, ...]
    seconds: float


class _Stored(nn.Module):
    """The state dict as written (the source's dtypes), for
    :func:`~soft_share_cli.training.resume.train_resumably`, which saves ``model.state_dict()``."""

    def __init__(self, state: dict[str, Any]):
        super().__init__()
        self.stored = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return dict(self.stored)


def _stored(conv: _Conversion, model: nn.Module) -> dict[str, Any]:
    from soft_share_cli.pipeline.share_source import stored_state

    return stored_state(model.state_dict(), conv.ckpt.state_dict, conv.dtypes)


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _users_code(model_spec: str | None) -> Iterator[None]:
    """A failure inside the user's own network (``--model``) is one line (exit 2)."""
    if model_spec is None:
        yield
        return
    try:
        yield
    except (SscError, KeyboardInterrupt):
        raise
    except Exception as exc:
        from soft_share_cli.models.user import _first_line

        raise InputError(
            f"the network built by {model_spec} failed on the data: {_first_line(exc)}"
        ) from exc


def _plain_copy(value: Any) -> Any:
    """``value`` when a checkpoint may store it (plain Python only), else None."""
    from soft_share_cli.checkpoints.containers import check_plain

    try:
        check_plain(value, "metadata")
    except TypeError:
        return None
    return value


@dataclass
class _Conversion:
    """The source, its groups and their fits, and the shared network (internal)."""

    path: str
    ckpt: Any  # the source's LoadedCheckpoint
    source: Any  # share_source.Source
    groups: list[Any]  # sharing.groups.ShareGroup
    ks: list[int]
    rows: tuple[GroupFit, ...]
    note: str | None
    fits: list[Any] = field(default_factory=list)
    shared: nn.Module | None = None
    arch: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    probe: ProbeCheck | None = None
    dtypes: dict[str, Any] = field(default_factory=dict)  # the stored dtype of each float key
    sha256: str = ""
    parameters: int = 0  # unique parameters of the source file


def share_checkpoint(
    path: str | Path,
    output: str | Path,
    options: ShareOptions,
    *,
    command: str | None = None,
    progress: Progress | None = None,
    on_epoch: Callable[[Any], None] | None = None,
) -> ShareReport:
    """Share the plain network of ``path`` and write it to ``output`` (see the module doc).

    ``progress(stage, done, total)`` follows evaluations and fine-tune batches; ``on_epoch``
    gets each fine-tune epoch's record as soon as it is known.

    Raises:
        InputError: an input that cannot be shared (already shared, no group, K out of range),
            options that do not fit, or a resume of another run (exit 2).
        DataError: data the network cannot take.
        Interrupted: Ctrl-C during the fine-tune (the finished epochs stay in OUTPUT.partial).
    """
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.models.params import count_state_dict_parameters
    from soft_share_cli.pipeline import share_source as src

    start = time.perf_counter()
    check_options(path, output, options)
    ckpt = load_checkpoint(path)
    source = src.open_source(ckpt, options.model)
    groups = src.find_share_groups(source, options.groups)
    ks, needed, note = src.choose_templates(source, groups, options.templates, options.keep)
    splits = None
    if options.data is not None:  # refused now if it does not fit, not after the conversion
        from soft_share_cli.pipeline.reports import training_splits

        splits = training_splits(options.data, output)
        src.check_data_fits(source, splits[1], options.data)
    conv = _Conversion(str(path), ckpt, source, groups, ks, (), note)
    probe, basis = src.probe_inputs(ckpt, source, None if splits is None else splits[1])
    copy = src.second_build(source, probe)
    conv.shared, conv.fits, conv.arch, conv.arch_kwargs = src.convert(source, groups, ks, copy)
    conv.dtypes = src.stored_dtypes(ckpt.state_dict, conv.shared.state_dict(), groups)
    src.round_to_stored(conv.shared, conv.dtypes)  # measured as written: in the source's dtypes
    errors = src.stored_errors(source, conv.shared, groups, conv.dtypes)
    conv.rows = src.group_fits(groups, ks, needed, conv.fits, errors)
    conv.probe = src.compare(source.model, conv.shared, probe, basis)
    conv.sha256, conv.parameters = _sha256(path), count_state_dict_parameters(ckpt.state_dict)
    figures: dict[str, float] = {}
    if splits is not None:
        figures["original"] = _top1(source.model, splits[1], options, "original", progress)
        figures["converted"] = _top1(conv.shared, splits[1], options, "converted", progress)
    result, resumed = _write(conv, output, options, splits, figures, command, progress, on_epoch)
    written = load_checkpoint(output, arrays=True)  # what the file holds, counted as ssc info does
    data = None
    if splits is not None:
        data = DataFigures(str(options.data), len(splits[1]), **figures)
    return ShareReport(
        checkpoint=str(path),
        architecture=source.architecture,
        shared_architecture=_describe(conv.arch, conv.arch_kwargs),
        output=str(output),
        templates=options.templates,
        keep=options.keep,
        note=note,
        original_parameters=conv.parameters,
        shared_parameters=count_state_dict_parameters(written.state_dict),
        groups=conv.rows,
        probe=conv.probe,
        data=data,
        finetune_epochs=len(result.history),
        history=result.history,
        resumed_epochs=resumed,
        fold_command=fold_command(output, options.model),
        file_bytes={"original": Path(path).stat().st_size, "shared": Path(output).stat().st_size},
        seconds=time.perf_counter() - start,
    )


def _top1(
    model: nn.Module, test: Any, options: ShareOptions, stage: str, progress: Progress | None
) -> float:
    """Top-1 (%) of ``model`` on the test split."""
    from soft_share_cli.evaluation.classification import evaluate

    callback = (lambda done, total: progress(stage, done, total)) if progress else None
    with _users_code(options.model):
        result = evaluate(
            model, test, batch_size=256, device=options.finetune.device, progress=callback
        )
    return result.top1


def _write(
    conv: _Conversion,
    output: str | Path,
    options: ShareOptions,
    splits: tuple[Any, Any] | None,
    figures: dict[str, float],
    command: str | None,
    progress: Progress | None,
    on_epoch: Callable[[Any], None] | None,
) -> tuple[_Shared, int]:
    """Fine-tune (resumably, when there is data and epochs) and write the output atomically;
    ``figures`` gets the top-1 of the network written. Returns it and the epochs resumed."""
    from soft_share_cli.checkpoints.load import save_checkpoint

    assert conv.shared is not None
    shared = conv.shared
    tune = options.finetune
    config = train_config(tune) if splits is not None and tune.epochs > 0 else None
    run = ShareRun(
        config,
        conv.path,
        conv.sha256,
        options.templates,
        options.keep,
        tuple(options.groups),
        options.model,
    )

    def metadata(result: _Shared) -> dict[str, Any]:
        data = None
        if splits is not None:
            tuned = bool(result.history)
            figures["shared"] = (
                _top1(shared, splits[1], options, "shared", progress)
                if tuned
                else figures["converted"]
            )
            data = DataFigures(str(options.data), len(splits[1]), **figures)
        return _metadata(conv, data, splits, result, run, command)

    if config is None:
        result = _Shared(shared, conv.arch, conv.arch_kwargs, (), 0.0)
        save_checkpoint(
            output,
            arch=conv.arch,
            arch_kwargs=conv.arch_kwargs,
            state_dict=_stored(conv, shared),
            metadata=metadata(result),
        )
        return result, 0
    from soft_share_cli.pipeline import share_source as src
    from soft_share_cli.sharing.finetune import finetune
    from soft_share_cli.training.resume import train_resumably

    assert splits is not None
    train_split, test_split = splits

    def train(on_state: Any, state: Any) -> _Shared:
        with _users_code(options.model):
            history, seconds = finetune(
                shared,
                config,
                train_split,
                test_split,
                progress=progress,
                on_state=on_state,
                on_epoch=on_epoch,
                resume=state,
            )
        src.round_to_stored(shared, conv.dtypes)  # what is measured next is what is written
        stored = _Stored(_stored(conv, shared))  # train_resumably writes its state_dict()
        return _Shared(stored, conv.arch, conv.arch_kwargs, tuple(history), seconds)

    # ``run`` stands in for the TrainConfig: the state file keeps and compares its to_dict()
    result, _, resumed = train_resumably(
        output,
        run,  # type: ignore[arg-type]
        str(options.data),
        options.resume,
        train,
        metadata,
    )
    return result, resumed


def _metadata(
    conv: _Conversion,
    data: DataFigures | None,
    splits: tuple[Any, Any] | None,
    result: _Shared,
    run: ShareRun,
    command: str | None,
) -> dict[str, Any]:
    """What the output records: its source, the groups and fits, the figures, the provenance."""
    from soft_share_cli.sharing.convert import RECORD_KEY, sharing_record
    from soft_share_cli.training.fit import provenance

    assert conv.probe is not None
    meta: dict[str, Any] = {
        "shared_from": {
            "path": conv.path,
            "sha256": conv.sha256,
            "architecture": conv.source.architecture,
            "parameters": conv.parameters,
        },
        "share": {
            "templates": run.templates,
            "keep": run.keep,
            "note": conv.note,
            "groups": [row.to_dict() for row in conv.rows],
            "probe": conv.probe.to_dict(),
            "data": None if data is None else data.to_dict(),
            "history": [asdict(record) for record in result.history],
        },
    }
    if conv.arch == "user":  # what rebuilds the banks on the user's freshly built network
        pairs = zip(conv.fits, conv.rows, strict=True)  # the errors as stored
        fits = [replace(f, relative_error=r.relative_error) for f, r in pairs]
        meta[RECORD_KEY] = sharing_record(conv.groups, conv.ks, fits)
    for key in ("preprocessing", "num_classes"):  # what the probes of analyze and fold read
        value = _plain_copy(conv.ckpt.metadata.get(key))
        if value is not None:
            meta[key] = value
    if data is not None and splits is not None:  # the keys `ssc eval` compares against
        meta["data"] = data.spec
        meta["test_top1"] = data.shared
        meta.setdefault("preprocessing", dict(splits[0].preprocessing))
    meta.update(provenance(run, command, result.seconds))
    return meta


def _describe(arch: str, kwargs: dict[str, Any]) -> str:
    if arch == "user":
        return f"user network {kwargs['model']} with template banks"
    from soft_share_cli.models.builder import ArchSpec

    return ArchSpec(arch, kwargs).describe()


def fold_command(output: str | Path, model_spec: str | None) -> str:
    """The command that folds what ``ssc share`` wrote to ``output``."""
    folded = Path(output).with_suffix(".safetensors")
    words = ["ssc", "fold", str(output), "-o", str(folded)]
    if model_spec is not None:
        words += ["--model", model_spec]
    return shlex.join(words)
