"""Checkpoints in the authors' training layout, made here: for tests, benchmarks and samples.

The authors' training script saves ``{epoch, arch, state_dict, recorder, optimizer}``: the
state-dict keys carry DataParallel's ``module.`` prefix, ``recorder`` is a pickled instance of
``utils.RecorderMeter`` (a class of their repository holding numpy arrays) and ``optimizer`` is an
SGD state with a momentum buffer per parameter (see ``shared/FIELD_NOTES.md``). Loading such a
file safely is what ssc must get right, so its tests need such files without the authors' code.

:func:`save_authors_checkpoint` writes one from any model, in the zip or the legacy format. The
recorder is an instance of *our* stand-in :data:`UTILS_SOURCE` (plain data, as theirs), made
importable as ``utils`` only while pickling (:func:`stand_in_utils`); :func:`write_utils_module`
writes it to a folder, for a naive ``torch.load(weights_only=False)`` that must import it.
"""

from __future__ import annotations

import contextlib
import sys
import textwrap
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# Our stand-in for the authors' utils.RecorderMeter: only data, as the real one.
UTILS_SOURCE = textwrap.dedent(
    """
    import numpy as np

    class RecorderMeter(object):
        def __init__(self, total_epoch):
            self.total_epoch = total_epoch
            self.current_epoch = 0
            self.epoch_losses = np.zeros((total_epoch, 2), dtype=np.float32) - 1
            self.epoch_accuracy = np.zeros((total_epoch, 2), dtype=np.float32)
    """
)


def write_utils_module(directory: Path) -> Path:
    """Write our stand-in as ``directory/utils.py``, for code that must import it to unpickle."""
    from soft_share_cli.files import atomic_write

    def write(tmp: Path) -> None:
        tmp.write_text(UTILS_SOURCE)

    path = directory / "utils.py"
    atomic_write(path, write)
    return path


@contextlib.contextmanager
def stand_in_utils() -> Iterator[types.ModuleType]:
    """Our ``utils`` module, importable while the block runs (pickle looks classes up by name).

    Nothing is written to disk; whatever ``sys.modules["utils"]`` held before is put back.
    """
    module = types.ModuleType("utils")
    exec(compile(UTILS_SOURCE, "<ssc stand-in utils>", "exec"), module.__dict__)  # our own text
    previous = sys.modules.get("utils")
    sys.modules["utils"] = module
    try:
        yield module
    finally:
        if previous is None:
            sys.modules.pop("utils", None)
        else:
            sys.modules["utils"] = previous


def save_authors_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    legacy: bool = False,
    history: Sequence[tuple[float, float, float | None]] | None = None,
    seed: int = 0,
) -> None:
    """Save ``model`` the way the authors' training script saves a run, in place of its weights.

    Args:
        model: any module (an SWRN for a faithful file); it is not changed.
        path: the file to write (``.pth.tar`` by the authors' habit).
        legacy: the pre-1.6 non-zip format (``_use_new_zipfile_serialization=False``).
        history: per epoch ``(train_loss, train_top1, test_top1)`` for the recorder; None gives a
            200-epoch run whose test accuracy climbs from 10 to 95 %.
        seed: seeds the gradient that fills the SGD momentum buffers.

    The optimizer is SGD with Nesterov momentum in two groups, coefficients without weight
    decay as in the paper; its buffers hold one seeded random gradient (the weights do not move).
    """
    import numpy as np
    import torch

    from soft_share_cli.files import atomic_write

    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    coefficients = [p for n, p in params.items() if n.endswith("coefficients")]
    others = [p for n, p in params.items() if not n.endswith("coefficients")]
    optimizer = torch.optim.SGD(
        [{"params": coefficients, "weight_decay": 0.0}, {"params": others, "weight_decay": 5e-4}],
        lr=0.0,
        momentum=0.9,
        nesterov=True,
    )
    saved_grads = {n: p.grad for n, p in params.items()}
    try:
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype) * 1e-3
        optimizer.step()  # lr 0: the weights stay, the momentum buffers fill
    finally:
        for n, p in params.items():
            p.grad = saved_grads[n]
    with stand_in_utils() as utils:
        if history is None:
            recorder = utils.RecorderMeter(200)
            recorder.epoch_accuracy[:, 1] = np.linspace(10, 95, 200)
            recorder.current_epoch = 200
        else:
            recorder = utils.RecorderMeter(len(history))
            for i, (loss, train_top1, test_top1) in enumerate(history):
                recorder.epoch_losses[i] = (loss, -1)
                recorder.epoch_accuracy[i] = (train_top1, -1 if test_top1 is None else test_top1)
            recorder.current_epoch = len(history)
        payload = {
            "epoch": recorder.current_epoch,
            "arch": "swrn",
            # DataParallel's keys: every name gets "module.", shared templates stay shared.
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "recorder": recorder,
            "optimizer": optimizer.state_dict(),
        }
        zipped = not legacy
        atomic_write(
            path, lambda tmp: torch.save(payload, tmp, _use_new_zipfile_serialization=zipped)
        )
