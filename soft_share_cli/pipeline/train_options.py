"""What ``ssc train``'s options mean per architecture: which arch takes which, and its defaults.

:func:`train_config` turns the options into the trainer's config: a
:class:`~soft_share_cli.training.classification.TrainConfig` for the image classifiers (swrn, wrn)
or a :class:`~soft_share_cli.training.tasks.TaskTrainConfig` for the fully convolutional networks
of the per-pixel tasks (sfcn, fcn, rfcn). Importing this module loads no torch (``ssc --help``
does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soft_share_cli.training.classification import TrainConfig
    from soft_share_cli.training.tasks import TaskTrainConfig

from soft_share_cli.models.names import CLASSIFIERS, SOFT_SHARED, TASK_NETWORKS

ARCHS = (*CLASSIFIERS, *TASK_NETWORKS)  # classifiers: depth, width, SGD; task networks: Adam
DEFAULT_LR = {"classifier": 0.1, "task": 0.002}  # peak learning rate when --lr is not given

# The options only some architectures read: given for another, they would do nothing.
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "depth": CLASSIFIERS,
    "width": CLASSIFIERS,
    "augment": CLASSIFIERS,
    "schedule": CLASSIFIERS,
    "templates": SOFT_SHARED,
    "align": SOFT_SHARED,
    "align_mode": SOFT_SHARED,
    "blocks": TASK_NETWORKS,
    "channels": TASK_NETWORKS,
    "supervise": TASK_NETWORKS,
    "progressive": TASK_NETWORKS,  # rfcn's loop, or fcn/sfcn's blocks in order
    "block": ("rfcn",),
}


def inapplicable(arch: str, given: set[str]) -> str | None:
    """Why the options ``given`` on the command line cannot apply to ``arch`` (None: all do)."""
    unused = sorted(name for name in given if arch not in APPLIES_TO.get(name, (arch,)))
    if not unused:
        return None
    by_takers: dict[tuple[str, ...], list[str]] = {}
    for name in unused:
        by_takers.setdefault(tuple(sorted(APPLIES_TO[name])), []).append(
            "--" + name.replace("_", "-")
        )
    flags = ", ".join(flag for group in by_takers.values() for flag in group)
    only = "; ".join(
        f"{', '.join(group) + ' only to ' if len(by_takers) > 1 else 'only to '}{', '.join(t)}"
        for t, group in by_takers.items()
    )
    return (
        f"{flags} {'does' if len(unused) == 1 else 'do'} not apply to --arch {arch} "
        f"({only}); leave {'it' if len(unused) == 1 else 'them'} out"
    )


def train_config(
    *,
    arch: str,
    depth: int,
    width: int,
    templates: int,
    blocks: int,
    channels: int,
    supervise: int,
    progressive: float,
    block: str,
    epochs: int,
    batch_size: int,
    lr: float | None,
    weight_decay: float,
    schedule: str,
    align: float,
    align_mode: str,
    augment: bool,
    seed: int,
    device: str,
) -> TrainConfig | TaskTrainConfig:
    """The config of a training run of ``arch``, from ``ssc train``'s options.

    Each family reads only its own options: depth and width for the classifiers; blocks (an
    rfcn's iterations), channels, supervise and progressive for the task networks; templates
    for the soft-shared ones. Task
    training refuses ``augment`` and any schedule but cosine (:class:`InputError`, exit 2).
    """
    from soft_share_cli.training.regularizers import AlignMode

    common: dict[str, Any] = {
        "arch": arch,
        "num_templates": templates if arch in SOFT_SHARED else None,
        "epochs": epochs,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "align": align,
        "align_mode": AlignMode(align_mode),
        "seed": seed,
        "device": device,
    }
    if arch in TASK_NETWORKS:
        from soft_share_cli.errors import InputError
        from soft_share_cli.training.tasks import TaskTrainConfig

        if augment or schedule != "cosine":
            raise InputError("task training takes no --augment and only the cosine schedule")
        lr = DEFAULT_LR["task"] if lr is None else lr
        return TaskTrainConfig(
            blocks=blocks,
            width=channels,
            lr=lr,
            supervise=supervise,
            progressive=progressive,
            block=block,
            **common,
        )
    from soft_share_cli.training.classification import Schedule, TrainConfig

    if arch in SOFT_SHARED and depth in (4, 10):
        from soft_share_cli.errors import InputError

        raise InputError(
            f"--depth {depth} gives {'one block' if depth == 10 else 'no block'} per stage, and "
            "an SWRN shares only the blocks after a stage's first: no layer would use a template "
            "bank; use --depth 16 or more (or --arch wrn for a plain network)"
        )
    lr = DEFAULT_LR["classifier"] if lr is None else lr
    return TrainConfig(
        depth=depth, width=width, lr=lr, schedule=Schedule(schedule), augment=augment, **common
    )
