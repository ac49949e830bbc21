"""Fine-tune a shared network with the ``ssc train`` recipe (SGD + Nesterov, weight decay on all
but the coefficients, the alignment regulariser when ``config.align > 0``), starting from the
weights it has instead of a fresh initialisation.

The config is a :class:`~soft_share_cli.training.classification.TrainConfig`; its architecture
fields (``arch``, ``depth``, ``width``, ``num_templates``) are not read. The run is seeded and
resumable exactly as ``ssc train`` is (the hooks of :class:`~soft_share_cli.training.fit.\
FitHooks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from soft_share_cli.data.loaders import Dataset
from soft_share_cli.training.classification import (
    TrainConfig,
    _check,
    _ClassifierRecipe,
    make_optimizer,
)
from soft_share_cli.training.fit import FitHooks, fit

if TYPE_CHECKING:
    from typing_extensions import Unpack


def finetune(
    model: nn.Module,
    config: TrainConfig,
    train_data: Dataset,
    test_data: Dataset | None = None,
    **hooks: Unpack[FitHooks],
) -> tuple[tuple[Any, ...], float]:
    """Train ``model`` in place for ``config.epochs``; returns the epoch records and seconds.

    The model is moved to ``config.device`` and left there, in eval mode.

    Raises:
        InputError: a config or data set that cannot be trained (see ``ssc train``).
        DataError: data whose labels or images do not fit.
    """
    from soft_share_cli.evaluation.loop import resolve_device

    _check(config, train_data, test_data)
    device = resolve_device(config.device)
    model.to(device)
    torch.manual_seed(config.seed)
    return fit(
        _ClassifierRecipe(config, test_data),
        model,
        make_optimizer(model, config),
        train_data.x.to(device=device, dtype=torch.float32),
        train_data.y.to(device=device, dtype=torch.long),
        seed=config.seed,
        **hooks,
    )
