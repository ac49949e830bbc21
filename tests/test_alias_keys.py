"""Keys that name one tensor of the network must hold one set of values in the file.

A template bank appears under every layer that uses it (``bank_1.templates``,
``stage_1.1.conv1.bank.templates``, ...); ``torch.save`` writes it once. A file that holds
different values under two of those keys is contradictory: ``load_state_dict`` would keep the
last copy silently, and ``ssc info`` would count both. Refused, one line, exit 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from soft_share_cli.checkpoints.load import load_checkpoint, save_checkpoint
from soft_share_cli.errors import CheckpointError
from soft_share_cli.models.builder import rebuild_model
from soft_share_cli.models.wrn import SWRN


def _swrn_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SWRN(16, 1, 2, num_classes=10, in_channels=1).eval().state_dict()


def _save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    save_checkpoint(
        path,
        arch="swrn",
        arch_kwargs={
            "depth": 16,
            "width": 1,
            "num_templates": 2,
            "num_classes": 10,
            "in_channels": 1,
        },
        state_dict=state,
        metadata={},
    )
    return path


@pytest.mark.parametrize(
    "which",
    ["bank_1.templates", "stage_1.1.conv1.bank.templates", "stage_1.1.conv2.bank.templates"],
)
def test_one_copy_of_a_bank_changed_is_refused(tmp_path: Path, which: str) -> None:
    state = {k: v.clone() for k, v in _swrn_state().items()}  # every key its own storage
    state[which] = state[which] + 0.5
    ckpt = load_checkpoint(_save(tmp_path / "forged.pt", state))
    with pytest.raises(CheckpointError, match="one tensor in the network") as err:
        rebuild_model(ckpt)
    assert len(str(err.value).splitlines()) == 1
    assert which in str(err.value)


def test_equal_copies_in_separate_storage_load(tmp_path: Path) -> None:
    original = _swrn_state()
    state = {k: v.clone() for k, v in original.items()}
    model, _ = rebuild_model(load_checkpoint(_save(tmp_path / "copies.pt", state)))
    probe = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = SWRN(16, 1, 2, num_classes=10, in_channels=1).eval()
    reference.load_state_dict(original)
    with torch.no_grad():
        assert torch.equal(model(probe), reference(probe))


def test_shared_storage_is_not_compared(tmp_path: Path) -> None:
    # what torch.save writes for a shared tensor: one storage under every key
    ckpt = load_checkpoint(_save(tmp_path / "shared.pt", _swrn_state()))
    bank = ckpt.state_dict["bank_1.templates"]
    alias = ckpt.state_dict["stage_1.1.conv1.bank.templates"]
    assert bank.data_ptr() == alias.data_ptr()
    rebuild_model(ckpt)  # loads


def test_cli_refuses_a_forged_alias_in_one_line(ssc, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in _swrn_state().items()}
    state["stage_2.1.conv2.bank.templates"] = torch.zeros_like(state["bank_2.templates"])
    path = _save(tmp_path / "forged.pt", state)
    run = ssc("eval", str(path), "--data", "digits")
    assert run.code == 2
    assert len(run.err.strip().splitlines()) == 1 and "different values" in run.err
