"""The epoch loop both trainers share: seeded batches, the alignment regulariser, resumable state.

:mod:`soft_share_cli.training.classification` (image classifiers, SGD, per-epoch schedule) and
:mod:`soft_share_cli.training.tasks` (per-pixel task networks, AdamW, per-step schedule) differ in
a :class:`Recipe`: how batches are cut, what the learning rate of a step is, how a batch is scored
and what an epoch's record holds. Everything else is here, once: the model, optimizer and
generator set up from the seed, the regulariser added to the loss, the divergence check, the test
evaluation after every epoch, and :class:`TrainState` after every epoch, so that an interrupted
run continued with ``resume`` ends with the weights an uninterrupted one gives, bit for bit on
the same device (:mod:`soft_share_cli.training.resume` keeps it on disk).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import torch
from torch import Tensor, nn

from soft_share_cli.errors import InputError

if TYPE_CHECKING:
    from typing_extensions import Unpack

from soft_share_cli.training.regularizers import (
    AlignMode,
    alignment_penalty,
    coefficient_groups,
    coefficient_names,
    recurrence_pairs,
)


@dataclass(frozen=True)
class TrainState:
    """A run after ``epoch`` finished epochs: everything needed to continue it bit-exactly.

    :func:`fit` hands one to ``on_state`` after every epoch and continues from one given as
    ``resume``; :mod:`soft_share_cli.training.resume` writes and reads them.
    """

    epoch: int  # epochs finished, counting from 1
    model: dict[str, Tensor] = field(repr=False)  # model.state_dict() (references, not copies)
    optimizer: dict[str, Any] = field(repr=False)  # optimizer.state_dict(): momentum buffers
    generator: Tensor = field(repr=False)  # state of the generator that shuffles and augments
    rng: Tensor = field(repr=False)  # torch's global CPU generator (unused after init; kept)
    history: tuple[Any, ...]  # the recipe's epoch records
    seconds: float  # training time spent so far


class Trained:
    """What a trainer's result (a dataclass with ``model`` and ``history``) shares: its plain
    form without the model, fields in order, epoch records as dicts."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-python form without the model."""
        from dataclasses import asdict, fields

        plain: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "history":
                plain[f.name] = [asdict(record) for record in value]
            elif f.name != "model":
                plain[f.name] = dict(value) if isinstance(value, dict) else value
        return plain


class FitHooks(TypedDict, total=False):
    """What a caller may hand a trainer (and :func:`fit`) to watch or continue a run."""

    progress: Callable[[str, int, int], None] | None  # each batch: ("epoch 3/30", done, total)
    on_epoch: Callable[[Any], None] | None  # each epoch's record, as soon as it is known
    on_state: Callable[[TrainState], None] | None  # after every epoch: the state to save
    resume: TrainState | None  # an interrupted run of the same config and data, to go on from


class Tally:
    """An epoch's running statistics, kept on the device (one sync per epoch).

    This base sums the loss (in ``dtype``) and counts samples; a recipe's tally adds its hits
    in :meth:`add` and calls :meth:`add_loss`.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.loss_sum = torch.zeros((), device=device, dtype=dtype)
        self.samples = 0

    def add_loss(self, loss: Tensor, samples: int) -> None:
        self.loss_sum += loss.to(self.loss_sum.dtype) * samples
        self.samples += samples

    def add(self, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        self.add_loss(loss, len(y))

    def mean_loss(self) -> float:
        return float(self.loss_sum) / self.samples


class RunConfig(Protocol):
    """What :func:`fit` reads of a trainer's config (both config dataclasses have these)."""

    @property
    def epochs(self) -> int: ...

    @property
    def align(self) -> float:
        """Weight of the alignment regulariser (0: none)."""
        ...

    @property
    def align_mode(self) -> AlignMode: ...


class Recipe(Protocol):
    """What one trainer does its own way; :func:`fit` does the rest."""

    @property
    def config(self) -> RunConfig: ...

    @property
    def flush_denormal(self) -> bool:
        """Set torch's flush-denormal mode for the run (restored afterwards)."""
        ...

    def steps_per_epoch(self, n: int) -> int:
        """How many batches :meth:`batches` cuts ``n`` samples into."""
        ...

    def batches(self, n: int, generator: torch.Generator) -> list[Tensor]:
        """A seeded shuffle of ``range(n)`` in batches (CPU indices)."""
        ...

    def lr(self, epoch: int, step: int, per_epoch: int) -> float:
        """The learning rate of optimizer step ``step`` (from 0), in epoch ``epoch`` (from 1),
        of a run of ``per_epoch`` steps an epoch."""
        ...

    def score(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``(logits, loss)`` of a training batch, without the regulariser."""
        ...

    def before_step(self, model: nn.Module) -> None:
        """After ``backward``, before the optimizer steps (gradient clipping)."""
        ...

    @property
    def test_data(self) -> Any:
        """The data the model is measured on after every epoch (None: not measured)."""
        ...

    def tally(self, device: torch.device) -> Tally: ...

    def test(self, model: nn.Module) -> Any:
        """The model (in train mode) measured on ``test_data`` (which is not None)."""
        ...

    def record(self, end: EpochEnd) -> Any:
        """The epoch's record (a frozen dataclass) from what :func:`fit` measured."""
        ...


@dataclass(frozen=True)
class EpochEnd:
    """What :func:`fit` knows when an epoch ends, for the recipe's record of it."""

    epoch: int  # from 1
    steps: int  # optimizer steps so far
    lr: float  # of the epoch's last step
    tally: Any  # the recipe's Tally of the epoch
    test: Any  # Recipe.test's measurement, None without test data
    penalty: float  # the alignment penalty after the epoch
    seconds: float  # the epoch's wall time


def fit(
    recipe: Recipe,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_all: Tensor,
    y_all: Tensor,
    *,
    seed: int,
    progress: Callable[[str, int, int], None] | None = None,
    on_epoch: Callable[[Any], None] | None = None,
    on_state: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
) -> tuple[tuple[Any, ...], float]:
    """Train ``model`` (built from the seed) for its epochs; return the history and the time.

    ``x_all`` and ``y_all`` sit on the model's device. ``progress`` is called after every batch
    as ``progress("epoch 3/30", done, total)``; ``on_state`` after every epoch (before
    ``on_epoch``) with the state to save; ``resume`` continues an interrupted run of the same
    recipe and data after its last finished epoch.

    Raises:
        InputError: a loss that diverged, or a ``resume`` state that does not fit.

    A ``KeyboardInterrupt`` propagates unchanged, so callers never save a half-trained model by
    accident. The model is left in eval mode.
    """
    device = x_all.device
    groups = coefficient_groups(model)
    pairs = [recurrence_pairs(names) for names in coefficient_names(model)]

    def penalty_of() -> Tensor:
        return alignment_penalty(groups, recipe.config.align_mode, pairs)

    generator = torch.Generator().manual_seed(seed)
    n = len(y_all)
    per_epoch = recipe.steps_per_epoch(n)
    history: list[Any] = []
    spent = 0.0  # seconds of earlier sessions, when resuming
    if resume is not None:
        _restore(resume, recipe.config.epochs, model, optimizer, generator)
        history, spent = list(resume.history), resume.seconds
    step = len(history) * per_epoch
    start = time.perf_counter()
    flush = flush_denormal_enabled() if recipe.flush_denormal else None
    if flush is not None:
        torch.set_flush_denormal(True)
    try:
        for epoch in range(len(history) + 1, recipe.config.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            tally = recipe.tally(device)
            stage = f"epoch {epoch}/{recipe.config.epochs}"
            lr = recipe.lr(epoch, step, per_epoch)
            batches = recipe.batches(n, generator)
            for done, index in enumerate(batches, start=1):
                lr = recipe.lr(epoch, step, per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                index = index.to(device)
                x, y = x_all[index], y_all[index]
                logits, loss = recipe.score(model, x, y, generator)
                objective = loss
                if recipe.config.align > 0:
                    objective = loss + recipe.config.align * penalty_of().to(device)
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                recipe.before_step(model)
                optimizer.step()
                step += 1
                with torch.no_grad():
                    tally.add(logits.detach(), y, loss.detach())
                if progress is not None:
                    progress(stage, done, len(batches))
            train_loss = tally.mean_loss()
            if not math.isfinite(train_loss):
                raise InputError(f"training diverged (loss {train_loss}) in {stage}; lower --lr")
            test = None if recipe.test_data is None else recipe.test(model)
            with torch.no_grad():
                penalty = float(penalty_of())
            seconds = time.perf_counter() - epoch_start
            record = recipe.record(EpochEnd(epoch, step, lr, tally, test, penalty, seconds))
            history.append(record)
            if on_state is not None:
                on_state(
                    TrainState(
                        epoch=epoch,
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        generator=generator.get_state(),
                        rng=torch.get_rng_state(),
                        history=tuple(history),
                        seconds=spent + time.perf_counter() - start,
                    )
                )
            if on_epoch is not None:
                on_epoch(record)
    finally:
        if flush is not None:
            torch.set_flush_denormal(flush)
    model.eval()
    return tuple(history), spent + time.perf_counter() - start


def _restore(
    state: TrainState,
    epochs: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """Put a freshly built run back where ``state`` left it (InputError if it cannot be)."""
    if not 1 <= state.epoch <= epochs or len(state.history) != state.epoch:
        raise InputError(
            f"cannot resume after epoch {state.epoch} with {len(state.history)} recorded "
            f"epoch(s) of a {epochs}-epoch run"
        )
    try:
        model.load_state_dict(state.model, strict=True)
        optimizer.load_state_dict(state.optimizer)
        generator.set_state(state.generator)
        torch.set_rng_state(state.rng)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise InputError(f"the saved state does not fit this run ({first.strip()})") from None


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: ``weight_decay`` on all but the coefficients.

    Coefficients are exempt as in the paper: decay would shrink every layer's scale towards 0,
    which the templates (decayed too) cannot compensate for. Shared templates appear once, as
    ``named_parameters`` deduplicates tensors.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("coefficients") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def flush_denormal_enabled() -> bool:
    """Whether the CPU flushes subnormal floats to zero now (``torch.set_flush_denormal``).

    torch offers a setter but no getter (the setter's return value says whether the CPU
    supports the mode), so the mode is read off a subnormal number: it survives arithmetic
    only while the mode is off.
    """
    tiny = torch.full((1,), 1e-39, dtype=torch.float32)  # below float32's smallest normal
    return float(tiny * 1.0) == 0.0


def train_new(
    recipe: Recipe,
    config: Any,
    arch_kwargs: dict[str, Any],
    make_optimizer: Callable[[nn.Module, Any], torch.optim.Optimizer],
    x: Tensor,
    y: Tensor,
    **hooks: Unpack[FitHooks],
) -> tuple[nn.Module, tuple[Any, ...], float]:
    """Build ``config.arch`` from ``config.seed`` on ``config.device`` and :func:`fit` it.

    What both trainers do once their config and data are checked: ``x`` goes to the device as
    float32, ``y`` as int64; ``hooks`` go to :func:`fit`. Returns the model, the epoch
    records and the seconds spent.
    """
    # Imported at call time so that importing training never risks a cycle through evaluation.
    from soft_share_cli.evaluation.loop import resolve_device
    from soft_share_cli.models.registry import build_model

    device = resolve_device(config.device)  # InputError for an unknown or absent device
    torch.manual_seed(config.seed)
    model = build_model(config.arch, **arch_kwargs).to(device)
    history, seconds = fit(
        recipe,
        model,
        make_optimizer(model, config),
        x.to(device=device, dtype=torch.float32),
        y.to(device=device, dtype=torch.long),
        seed=config.seed,
        **hooks,
    )
    return model, history, seconds


def bank_kwargs(arch: str, num_templates: int | None) -> dict[str, Any]:
    """``{"num_templates": K}`` for a soft-shared architecture (:data:`~soft_share_cli.models.\
names.SOFT_SHARED`), ``{}`` for a plain one; InputError when K is missing for the one or given
    to the other."""
    from soft_share_cli.models.names import SOFT_SHARED

    if arch in SOFT_SHARED:
        if num_templates is None:
            raise InputError(f"{arch} needs a number of templates per bank (--templates)")
        return {"num_templates": num_templates}
    if num_templates is not None:
        raise InputError(f"{arch} has no template banks; leave the number of templates unset")
    return {}


def provenance(config: Any, command: str | None, seconds: float) -> dict[str, Any]:
    """The part of a trained checkpoint's metadata that says how and when it was made."""
    from datetime import datetime, timezone

    from soft_share_cli._version import __version__

    return {
        "train_seconds": seconds,
        "config": config.to_dict(),
        "command": command,
        "ssc_version": __version__,
        "torch_version": str(torch.__version__),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
