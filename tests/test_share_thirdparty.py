"""``ssc share`` on a network someone else wrote: pytorchcv's CIFAR ResNet-20, end to end.

pytorchcv (installed with ``--no-deps``: its metadata lists torchvision, which ``resnet_cifar``
never imports) builds ``resnet20_cifar10``; the test trains it for a few steps on digits
upsampled to 3x32x32, saves a bare state dict, and runs the commands a user would:
``ssc share --model`` (with a fine-tune), ``ssc fold --model``, ``ssc eval --model``, ``ssc info``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

resnet_cifar = pytest.importorskip("pytorchcv.models.resnet_cifar")

FACTORY = "pytorchcv.models.resnet_cifar:resnet20_cifar10"


def _digits_32(n_train: int, n_test: int) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target, dtype=torch.int64)
    return {
        "x_train": x[:n_train].numpy(),
        "y_train": y[:n_train].numpy(),
        "x_test": x[-n_test:].numpy(),
        "y_test": y[-n_test:].numpy(),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pytorchcv")
    arrays = _digits_32(192, 96)
    data = root / "digits32.npz"
    np.savez(data, **arrays)
    torch.manual_seed(0)
    model = resnet_cifar.resnet20_cifar10()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.tensor(arrays["x_train"]), torch.tensor(arrays["y_train"])
    model.train()
    for step in range(12):  # a few steps: enough for BN statistics and weights to move
        batch = slice(16 * (step % 12), 16 * (step % 12) + 16)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    ckpt = root / "resnet20.pt"
    torch.save(model.state_dict(), ckpt)
    return ckpt, data, model


def _unique_parameters(state_dict: dict[str, torch.Tensor]) -> int:
    """Parameters of a state dict counted once per storage, BN statistics left out."""
    seen, total = set(), 0
    for key, tensor in state_dict.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident not in seen:
            seen.add(ident)
            total += tensor.numel()
    return total


def test_share_exact_at_full_rank_keeps_the_logits(ssc, trained, tmp_path: Path) -> None:
    ckpt, _, model = trained
    out = tmp_path / "full.pt"
    # the three stage runs have 6, 5 and 5 layers: K=5 is full rank for two of them only,
    # so name the groups to make every group full rank
    groups = [
        "features.stage2.unit1.body.conv2.conv,features.stage2.unit[23].body.conv*.conv",
        "features.stage3.unit1.body.conv2.conv,features.stage3.unit[23].body.conv*.conv",
    ]
    args = ["share", str(ckpt), "-o", str(out), "--model", FACTORY, "--templates", "5"]
    for g in groups:
        args += ["--groups", g]
    run = ssc(*args, "--json")
    assert run.code == 0, run.err
    report = run.json()
    assert [len(g["layers"]) for g in report["groups"]] == [5, 5]
    assert all(g["relative_error"] < 1e-6 for g in report["groups"])
    from soft_share_cli.checkpoints.load import load_checkpoint
    from soft_share_cli.models.user import build_user_model

    loaded = load_checkpoint(out)
    shared = build_user_model(FACTORY, loaded.state_dict, loaded.metadata)
    probe = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(probe), shared(probe)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    # stage 1 and everything outside the two groups is the trained network's, tensor for tensor
    original = model.state_dict()
    for key, value in shared.state_dict().items():
        if ".stage2." in key or ".stage3." in key:
            continue
        assert torch.equal(value, original[key]), key
    assert report["params"]["shared"] == _unique_parameters(loaded.state_dict)


def test_share_finetune_fold_eval_end_to_end(ssc, trained, tmp_path: Path) -> None:
    ckpt, data, _ = trained
    spec = f"npz:{data}"
    out = tmp_path / "shared.pt"
    run = ssc(
        "share", str(ckpt), "-o", str(out), "--model", FACTORY, "--templates", "2",
        "--data", spec, "--finetune-epochs", "1", "--json",
    )  # fmt: skip
    assert run.code == 0, run.err
    report = run.json()
    assert [len(g["layers"]) for g in report["groups"]] == [6, 5, 5]
    assert report["params"]["shared"] < 0.5 * report["params"]["original"]
    figures = report["data"]
    assert figures["delta_top1"] == pytest.approx(figures["shared"] - figures["original"])
    # what the file holds is what the report says, and what ssc info counts
    info = ssc("info", str(out), "--json")
    assert info.code == 0, info.err
    assert report["params"]["shared"] == info.json()["unique_parameters"]
    # the shared network's top-1 as ssc eval measures it is the report's
    evaluated = ssc("eval", str(out), "--model", FACTORY, "--data", spec, "--json")
    assert evaluated.code == 0, evaluated.err
    assert evaluated.json()["top1"] == pytest.approx(figures["shared"])
    folded = tmp_path / "shared.safetensors"
    run = ssc("fold", str(out), "--model", FACTORY, "-o", str(folded), "--json")
    # Two templates per stage after one epoch without --align: no two layers are alike, and a
    # fold would store as many numbers as it frees; ssc fold says so in one line and writes
    # nothing (tests/test_share_user.py folds shared user networks that do have loops).
    assert run.code == 2, run.out
    assert len(run.err.strip().splitlines()) == 1
    assert "nothing to fold" in run.err and "kept as it is" in run.err
    assert not folded.exists()
