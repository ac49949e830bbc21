"""evaluate(): exact accuracies on a model with known outputs, mode restoring, progress, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from soft_share_cli.data.loaders import Dataset, load_data
from soft_share_cli.errors import DataError, InputError
from soft_share_cli.evaluation.classification import EvalResult, evaluate
from soft_share_cli.models.wrn import WRN


class TableModel(nn.Module):
    """Returns row ``i`` of a fixed logits table for an input image filled with the value ``i``."""

    def __init__(self, table: Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.head = nn.Linear(1, 1)  # a submodule whose mode the tests can inspect

    def forward(self, x: Tensor) -> Tensor:
        return self.table[x[:, 0, 0, 0].long()]


def _table_data(labels: list[int], num_classes: int) -> Dataset:
    n = len(labels)
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Dataset("fixture", "test", x, torch.tensor(labels), num_classes)


def _ranked_table(n: int, classes: int, ranks: list[int], labels: list[int]) -> Tensor:
    """Logits where sample ``i``'s label is the ``ranks[i]``-th best class (0 = top-1)."""
    table = torch.zeros(n, classes)
    for i, (rank, label) in enumerate(zip(ranks, labels, strict=True)):
        others = [c for c in range(classes) if c != label]
        order = others[:rank] + [label] + others[rank:]
        table[i, order] = torch.linspace(10, 0, classes)
    return table


LABELS = [3, 0, 11, 5, 7, 1, 2, 9, 4, 6]
RANKS = [0, 0, 0, 1, 4, 5, 9, 0, 2, 11]  # top-1: 4/10, top-5: 7/10


def test_known_top1_top5_and_loss() -> None:
    table = _ranked_table(10, 12, RANKS, LABELS)
    result = evaluate(TableModel(table), _table_data(LABELS, 12), batch_size=4)
    assert result.samples == 10
    assert result.top1 == pytest.approx(40.0) and result.top5 == pytest.approx(70.0)
    expected_loss = F.cross_entropy(table, torch.tensor(LABELS)).item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.throughput == pytest.approx(10 / result.seconds)
    assert result.predictions is None


def test_results_do_not_depend_on_batch_size_and_predictions_are_kept() -> None:
    table = _ranked_table(10, 12, RANKS, LABELS)
    data = _table_data(LABELS, 12)
    results = [
        evaluate(TableModel(table), data, batch_size=bs, keep_predictions=True) for bs in (1, 3, 64)
    ]
    assert len({(r.top1, r.top5) for r in results}) == 1
    for r in results:
        assert r.predictions is not None and r.predictions.tolist() == table.argmax(1).tolist()
        r.predictions.add_(1)  # an ordinary tensor, not a read-only inference tensor


def test_top5_only_from_ten_classes() -> None:
    labels = [0, 1, 2, 1]
    table = _ranked_table(4, 3, [0, 1, 0, 2], labels)
    result = evaluate(TableModel(table), _table_data(labels, 3))
    assert result.top5 is None and result.top1 == pytest.approx(50.0)
    as_dict = result.to_dict()
    assert "predictions" not in as_dict and as_dict["top5"] is None
    json.dumps(as_dict)


def test_modes_are_restored() -> None:
    table = _ranked_table(10, 12, RANKS, LABELS)
    model = TableModel(table).train()
    model.head.eval()  # a mixed state must come back exactly as it was
    seen: list[bool] = []
    evaluate(model, _table_data(LABELS, 12), progress=lambda d, t: seen.append(model.training))
    assert seen and not any(seen)  # eval mode during the pass
    assert model.training and not model.head.training


def test_progress_totals() -> None:
    calls: list[tuple[int, int]] = []
    table = _ranked_table(10, 12, RANKS, LABELS)
    evaluate(
        TableModel(table),
        _table_data(LABELS, 12),
        batch_size=3,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(3, 10), (6, 10), (9, 10), (10, 10)]


def test_too_few_model_classes() -> None:
    table = _ranked_table(10, 10, [0] * 10, [0] * 10)
    model = TableModel(table).train()
    with pytest.raises(DataError, match="model predicts 10 classes but labels go up to 12"):
        evaluate(model, _table_data(LABELS, 13))
    assert model.training  # restored on the error path too


def test_bad_arguments() -> None:
    model, data = TableModel(torch.zeros(10, 12)), _table_data(LABELS, 12)
    with pytest.raises(InputError, match="batch size"):
        evaluate(model, data, batch_size=0)
    with pytest.raises(InputError, match="unknown device"):
        evaluate(model, data, device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA requested but not available"):
            evaluate(model, data, device="cuda")


def test_wrn_on_digits_smoke() -> None:
    torch.manual_seed(0)
    model = WRN(10, 1, num_classes=10, in_channels=1)
    result = evaluate(model, load_data("digits?limit=64"), batch_size=32)
    assert isinstance(result, EvalResult) and result.samples == 64
    assert 0.0 <= result.top1 <= result.top5 <= 100.0  # type: ignore[operator]
    assert result.loss > 0 and result.throughput > 0
