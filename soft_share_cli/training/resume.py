"""Resumable ``ssc train``: the state after each epoch, kept next to the output until it is done.

``ssc train -o OUT`` writes ``OUT.partial`` atomically after every finished epoch: the weights,
the optimizer's momentum buffers, the state of the generator that shuffles (and augments), the
history, and the config and data spec it belongs to. A completed run writes ``OUT`` and removes
``OUT.partial``; an interrupted one leaves ``OUT`` as it was and ``OUT.partial`` behind, and
``ssc train ... --resume`` continues after the last finished epoch with the weights an
uninterrupted run would have produced, bit for bit on the same device.

The file is a torch zip loadable with ``weights_only=True``; it is read back through
:func:`~soft_share_cli.checkpoints.load.load_checkpoint`, so a tampered ``.partial`` gets the same
scrutiny as any downloaded checkpoint. ``ssc info`` and ``ssc eval`` read it like any other
checkpoint (its weights sit under ``model``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from soft_share_cli.checkpoints.train_state import FORMAT_NAME
from soft_share_cli.errors import CheckpointError, InputError
from soft_share_cli.training.fit import TrainState

if TYPE_CHECKING:
    from torch import nn

    from soft_share_cli.training.classification import TrainConfig
    from soft_share_cli.training.tasks import TaskTrainConfig

    AnyConfig = TrainConfig | TaskTrainConfig

FORMAT_VERSION = 1
SUFFIX = ".partial"
#: Config fields a resumed run may change: where it runs does not change what it computes.
MAY_DIFFER = ("device",)


def partial_path(output: str | os.PathLike[str]) -> Path:
    """Where ``ssc train -o output`` keeps the state of an unfinished run."""
    return Path(f"{os.fspath(output)}{SUFFIX}")


def save_state(
    path: str | os.PathLike[str], state: TrainState, config: AnyConfig, data_spec: str
) -> None:
    """Write ``state`` (with the config and data spec it belongs to) to ``path`` atomically."""
    from soft_share_cli._version import __version__
    from soft_share_cli.files import save_torch

    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": {key: tensor.detach() for key, tensor in state.model.items()},
        "optimizer": state.optimizer,
        "generator": state.generator,
        "rng": state.rng,
        "epoch": state.epoch,
        "history": [asdict(record) for record in state.history],
        "seconds": state.seconds,
        "config": config.to_dict(),
        "data": data_spec,
        "ssc_version": __version__,
    }
    save_torch(path, payload)  # atomically, and a failed write is an InputError


def load_state(path: str | os.PathLike[str], config: AnyConfig, data_spec: str) -> TrainState:
    """Read the state an interrupted run of ``config`` on ``data_spec`` left at ``path``.

    Raises:
        CheckpointError: the file is unreadable or not a saved ``ssc train`` state.
        UnsafeCheckpointError: the file references code (as any checkpoint could).
        InputError: it belongs to another configuration or data set.
    """
    import torch

    from soft_share_cli.checkpoints.load import load_checkpoint

    # Not memory-mapped: the file is replaced after the next epoch while these tensors live.
    ckpt = load_checkpoint(path, mmap=False)
    extras = ckpt.extras
    if ckpt.container != "wrapped:model" or extras.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not the saved state of an interrupted `ssc train` run")
    if extras.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: train state version {extras.get('format_version')!r}; this ssc reads "
            f"version {FORMAT_VERSION}"
        )
    _check_same_run(path, extras.get("config"), extras.get("data"), config, data_spec)
    epoch, history = extras.get("epoch"), extras.get("history")
    generator, rng = extras.get("generator"), extras.get("rng")
    optimizer, seconds = extras.get("optimizer"), extras.get("seconds")
    if not (
        isinstance(epoch, int)
        and isinstance(history, list)
        and isinstance(optimizer, dict)
        and isinstance(seconds, float)
        and isinstance(generator, torch.Tensor)
        and isinstance(rng, torch.Tensor)
        and generator.dtype == rng.dtype == torch.uint8
    ):
        raise CheckpointError(f"{path}: incomplete or damaged train state")
    return TrainState(
        epoch=epoch,
        model=ckpt.state_dict,
        optimizer=optimizer,
        generator=generator,
        rng=rng,
        history=tuple(_record(path, item, config) for item in history),
        seconds=seconds,
    )


def _record(path: str | os.PathLike[str], item: Any, config: AnyConfig) -> Any:
    """One epoch record of the history, of the type ``config``'s trainer writes."""
    from soft_share_cli.training.classification import EpochRecord
    from soft_share_cli.training.tasks import TaskEpochRecord, TaskTrainConfig

    record = TaskEpochRecord if isinstance(config, TaskTrainConfig) else EpochRecord
    names = {f.name for f in fields(record)}
    if not isinstance(item, dict) or set(item) != names:
        raise CheckpointError(f"{path}: damaged history in the train state")
    return record(**item)


def _check_same_run(
    path: str | os.PathLike[str],
    saved_config: Any,
    saved_data: Any,
    config: AnyConfig,
    data_spec: str,
) -> None:
    if not isinstance(saved_config, dict):
        raise CheckpointError(f"{path}: the train state lacks its configuration")
    wanted = config.to_dict()
    changed = [
        f"{key} {saved_config.get(key)!r} -> {value!r}"
        for key, value in wanted.items()
        if key not in MAY_DIFFER and saved_config.get(key) != value
    ]
    if saved_data != data_spec:
        changed.insert(0, f"data {saved_data!r} -> {data_spec!r}")
    if changed:
        raise InputError(
            f"{path} belongs to another run ({', '.join(changed)}); resume with the options it "
            "was started with, or delete it to start over"
        )


def starting_state(
    output: str | os.PathLike[str], config: AnyConfig, data_spec: str, resume: bool
) -> TrainState | None:
    """The state to continue from (``resume``), or None for a fresh run.

    A fresh run refuses to start over an existing ``OUTPUT.partial``: that would overwrite
    finished epochs after the first new one.
    """
    partial = partial_path(output)
    if resume:
        if not partial.is_file():
            raise InputError(
                f"nothing to resume: {partial} does not exist (ssc train -o {output} writes it "
                "after every epoch and removes it when the run completes)"
            )
        return load_state(partial, config, data_spec)
    if partial.exists():
        raise InputError(
            f"{partial} holds an interrupted run; pass --resume to continue it, or delete it "
            "to start over"
        )
    return None


def saved_epoch(path: str | os.PathLike[str]) -> int:
    """Finished epochs kept in ``path`` (0 when there is no readable state there).

    Read back rather than remembered: Ctrl-C may land between the rename that kept an epoch
    and the bookkeeping after it. Memory-mapped, so this costs little even for large networks.
    """
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.errors import SscError

    try:
        epoch = load_checkpoint(path).extras.get("epoch") if Path(path).is_file() else 0
    except SscError:
        return 0
    return epoch if isinstance(epoch, int) else 0


class Trained(Protocol):
    """What a trainer's result holds to be saved: ``TrainResult`` and ``TaskTrainResult``."""

    @property
    def arch(self) -> str: ...

    @property
    def arch_kwargs(self) -> dict[str, Any]: ...

    @property
    def model(self) -> nn.Module: ...


T = TypeVar("T", bound=Trained)


def train_resumably(
    output: str | os.PathLike[str],
    config: AnyConfig,
    data_spec: str,
    resume: bool,
    train: Callable[[Callable[[TrainState], None], TrainState | None], T],
    metadata: Callable[[T], dict[str, Any]],
) -> tuple[T, dict[str, Any], int]:
    """Train, keeping the state in ``OUTPUT.partial``, and save the checkpoint atomically.

    ``train(on_state, state)`` trains from ``state`` (None: from scratch) and hands every
    epoch's state to ``on_state``; its result (a ``TrainResult`` or ``TaskTrainResult``: arch,
    arch_kwargs, model) is saved to ``output`` with ``metadata(result)``. Returns the result,
    its metadata and the number of epochs resumed. Ctrl-C raises
    :class:`~soft_share_cli.errors.Interrupted` saying what was kept; ``output`` is then as it
    was. A completed run removes ``OUTPUT.partial``.
    """
    from soft_share_cli.checkpoints.load import save_checkpoint
    from soft_share_cli.errors import Interrupted
    from soft_share_cli.files import check_output

    partial = partial_path(output)
    check_output(partial)
    state = starting_state(output, config, data_spec, resume)
    try:
        result = train(lambda new: save_state(partial, new, config, data_spec), state)
        meta = metadata(result)
        save_checkpoint(
            output,
            arch=result.arch,
            arch_kwargs=result.arch_kwargs,
            state_dict=result.model.state_dict(),
            metadata=meta,
        )
    except KeyboardInterrupt:
        kept = saved_epoch(partial)
        if not kept:
            raise Interrupted(
                "interrupted before the first epoch finished; nothing was written"
            ) from None
        raise Interrupted(
            f"interrupted; {output} is untouched and the {kept} finished epoch(s) are kept in "
            f"{partial}: rerun the same command with --resume to continue"
        ) from None
    partial.unlink(missing_ok=True)
    return result, meta, state.epoch if state is not None else 0

