"""What ``ssc train``'s options mean per architecture: which arch takes which, and its defaults.

:func:`train_config` turns the options into the trainer's config: a
:class:`~soft_share_cli.training.classification.TrainConfig` for the image classifiers (swrn, wrn)
or a :class:`~soft_share_cli.training.tasks.TaskTrainConfig` for the fully convolutional networks
of the per-pixel tasks (sfcn, fcn). Importing this module loads no torch (``ssc --help`` does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soft_share_cli.training.classification import TrainConfig
    from soft_share_cli.training.tasks import TaskTrainConfig

CLASSIFIER_ARCHS = ("swrn", "wrn")  # image classifiers: depth, width; SGD
TASK_ARCHS = ("sfcn", "fcn")  # fully convolutional networks for the per-pixel tasks; Adam
ARCHS = (*CLASSIFIER_ARCHS, *TASK_ARCHS)
SHARED_ARCHS = ("swrn", "sfcn")  # soft-shared: these take a number of templates
DEFAULT_LR = {"classifier": 0.1, "task": 0.002}  # peak learning rate when --lr is not given


def train_config(
    *,
    arch: str,
    depth: int,
    width: int,
    templates: int,
    blocks: int,
    channels: int,
    supervise: int,
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

    Each family reads only its own options: depth and width for the classifiers; blocks,
    channels and supervise for the task networks; templates for the soft-shared ones. Task
    training refuses ``augment`` and any schedule but cosine (:class:`InputError`, exit 2).
    """
    from soft_share_cli.training.regularizers import AlignMode

    num_templates = templates if arch in SHARED_ARCHS else None
    if arch in TASK_ARCHS:
        from soft_share_cli.errors import InputError
        from soft_share_cli.training.tasks import TaskTrainConfig

        if augment or schedule != "cosine":
            raise InputError("task training takes no --augment and only the cosine schedule")
        return TaskTrainConfig(
            arch=arch,
            blocks=blocks,
            width=channels,
            num_templates=num_templates,
            epochs=epochs,
            batch_size=batch_size,
            lr=DEFAULT_LR["task"] if lr is None else lr,
            weight_decay=weight_decay,
            supervise=supervise,
            align=align,
            align_mode=AlignMode(align_mode),
            seed=seed,
            device=device,
        )
    from soft_share_cli.training.classification import Schedule, TrainConfig

    return TrainConfig(
        arch=arch,
        depth=depth,
        width=width,
        num_templates=num_templates,
        epochs=epochs,
        batch_size=batch_size,
        lr=DEFAULT_LR["classifier"] if lr is None else lr,
        weight_decay=weight_decay,
        schedule=Schedule(schedule),
        align=align,
        align_mode=AlignMode(align_mode),
        augment=augment,
        seed=seed,
        device=device,
    )
