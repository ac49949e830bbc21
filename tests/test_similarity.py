"""Tests of layer similarity: against naive loops, invariances, the weight metric, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from soft_share_cli.analysis import similarity
from soft_share_cli.analysis.banks import BankDiscovery, find_banks
from soft_share_cli.analysis.similarity import (
    BankSimilarity,
    Metric,
    bank_similarity,
    gram_matrix,
    layer_similarity,
)
from soft_share_cli.errors import InputError
from soft_share_cli.models.wrn import SWRN


def naive(a: np.ndarray, gram: np.ndarray | None = None, signed: bool = False) -> np.ndarray:
    """The definition, entry by entry, with no shared code."""
    size, k = a.shape
    g = np.eye(k) if gram is None else gram
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            inner = sum(a[i, p] * g[p, q] * a[j, q] for p in range(k) for q in range(k))
            ii = sum(a[i, p] * g[p, q] * a[i, q] for p in range(k) for q in range(k))
            jj = sum(a[j, p] * g[p, q] * a[j, q] for p in range(k) for q in range(k))
            value = inner / math.sqrt(ii * jj)
            out[i, j] = value if signed else abs(value)
    return out


def random_bank(seed: int, k: int = 5, shape: tuple[int, ...] = (4, 3, 3, 3)) -> torch.Tensor:
    return torch.randn(
        (k, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("signed", [False, True])
def test_matches_naive_loops(signed: bool) -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5))
    np.testing.assert_allclose(
        layer_similarity(a, signed=signed), naive(a, None, signed), atol=1e-12
    )
    gram = gram_matrix(random_bank(1))
    np.testing.assert_allclose(
        layer_similarity(a, gram=gram, signed=signed), naive(a, gram, signed), atol=1e-12
    )


def test_symmetric_unit_diagonal_in_range() -> None:
    a = np.random.default_rng(1).normal(size=(20, 6))
    gram = gram_matrix(random_bank(2, k=6))
    for g in (None, gram):
        unsigned = layer_similarity(a, gram=g)
        signed = layer_similarity(a, gram=g, signed=True)
        assert np.array_equal(unsigned, unsigned.T) and np.array_equal(signed, signed.T)
        assert np.array_equal(np.diag(unsigned), np.ones(20))
        assert np.array_equal(np.diag(signed), np.ones(20))
        assert unsigned.min() >= 0 and unsigned.max() <= 1
        assert signed.min() >= -1 and signed.max() <= 1 and signed.min() < 0


def test_k_equal_one_is_all_ones() -> None:
    a = np.array([[2.0], [-0.5], [3e-8], [1e8]])
    assert np.array_equal(layer_similarity(a), np.ones((4, 4)))
    assert np.array_equal(layer_similarity(a, gram=np.array([[2.5]])), np.ones((4, 4)))


def test_scaling_a_row() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 4))
    gram = gram_matrix(random_bank(3, k=4))
    scaled = a.copy()
    scaled[2] *= -3
    flip = np.ones(6)
    flip[2] = -1
    for g in (None, gram):
        np.testing.assert_allclose(
            layer_similarity(scaled, gram=g), layer_similarity(a, gram=g), atol=1e-14
        )
        expected = layer_similarity(a, gram=g, signed=True) * np.outer(flip, flip)
        np.fill_diagonal(expected, 1.0)
        np.testing.assert_allclose(
            layer_similarity(scaled, gram=g, signed=True), expected, atol=1e-14
        )


def test_permuting_templates_consistently() -> None:
    templates = random_bank(4, k=6)
    a = np.random.default_rng(3).normal(size=(5, 6))
    order = np.array([3, 0, 5, 1, 4, 2])
    before = layer_similarity(a, gram=gram_matrix(templates), signed=True)
    after = layer_similarity(a[:, order], gram=gram_matrix(templates[order]), signed=True)
    np.testing.assert_allclose(after, before, atol=1e-14)
    np.testing.assert_allclose(layer_similarity(a[:, order]), layer_similarity(a), atol=1e-14)


def test_weight_metric_is_cosine_of_materialised_weights() -> None:
    templates = random_bank(5, k=5)
    a = torch.randn(6, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    weights = torch.stack([torch.tensordot(row, templates, dims=1).flatten() for row in a])
    unit = weights / weights.norm(dim=1, keepdim=True)
    expected = (unit @ unit.T).numpy()
    got = layer_similarity(a, gram=gram_matrix(templates), signed=True)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # ...and it differs from the paper's LSM: these templates are not orthogonal.
    assert np.abs(got - layer_similarity(a, signed=True)).max() > 1e-3


def test_zero_row_gives_no_nan() -> None:
    a = np.random.default_rng(4).normal(size=(4, 3))
    a[1] = 0.0
    gram = gram_matrix(random_bank(7, k=3))
    for g in (None, gram):
        for signed in (False, True):
            s = layer_similarity(a, gram=g, signed=signed)
            assert np.isfinite(s).all()
            assert s[1, 1] == 1.0 and not s[1, [0, 2, 3]].any() and not s[[0, 2, 3], 1].any()


def test_extreme_scales() -> None:
    # Squaring 1e-200 underflows and 1e200 overflows; the similarity must not notice either.
    a = np.array([[1e-200, 2e-200], [3e200, 6e200], [1.0, -1.0]])
    expected = layer_similarity(np.array([[1.0, 2.0], [1.0, 2.0], [1.0, -1.0]]), signed=True)
    np.testing.assert_allclose(layer_similarity(a, signed=True), expected, atol=1e-15)
    gram = np.array([[2.0, 0.5], [0.5, 1.0]])
    moderate = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, -1.0]])
    np.testing.assert_allclose(layer_similarity(a, gram=gram), naive(moderate, gram), atol=1e-15)


def test_weight_in_gram_null_space_counts_as_zero() -> None:
    # T_2 = T_0 + T_1, so a = (1, 1, -1) generates an exactly zero weight.
    base = random_bank(8, k=2)
    templates = torch.cat([base, (base[0] + base[1])[None]])
    a = np.array([[1.0, 1.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    s = layer_similarity(a, gram=gram_matrix(templates))
    assert np.isfinite(s).all() and s[0, 1] == 0.0 and s[0, 2] == 0.0 and s[1, 2] > 0


def test_gram_chunks_equal_the_direct_product(monkeypatch: pytest.MonkeyPatch) -> None:
    templates = random_bank(9, k=4, shape=(8, 5, 3, 3))
    flat = templates.flatten(1)
    direct = (flat @ flat.T).numpy()
    monkeypatch.setattr(similarity, "_CHUNK_ELEMENTS", 4 * 7)  # 7 columns a chunk, a ragged tail
    chunked = gram_matrix(templates)
    np.testing.assert_allclose(chunked, direct, rtol=1e-12)
    assert np.array_equal(chunked, chunked.T) and chunked.dtype == np.float64
    # Half precision in, float64 accumulation out.
    half = templates.to(torch.float16)
    flat64 = half.double().flatten(1)
    np.testing.assert_allclose(gram_matrix(half), (flat64 @ flat64.T).numpy(), rtol=1e-12)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"\(L, K\)"):
        layer_similarity(np.ones(3))
    with pytest.raises(ValueError, match="gram must be"):
        layer_similarity(np.ones((2, 3)), gram=np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        layer_similarity(np.array([[1.0, np.nan]]))


@pytest.fixture(scope="module")
def swrn_banks() -> BankDiscovery:
    torch.manual_seed(0)
    return find_banks(SWRN(22, 1, 3, in_channels=1).state_dict())


def test_bank_similarity(swrn_banks: BankDiscovery) -> None:
    bank = swrn_banks.bank("bank_1")
    coefficients = bank.coefficient_matrix()
    result = bank_similarity(bank)
    assert (result.bank, result.metric, result.signed) == ("bank_1", Metric.COEFFICIENTS, False)
    assert result.layers == tuple(layer.name for layer in bank.layers)
    np.testing.assert_allclose(result.matrix, layer_similarity(coefficients), atol=0)
    np.testing.assert_allclose(result.norms, np.linalg.norm(coefficients, axis=1), rtol=1e-12)
    with pytest.raises(ValueError):
        result.matrix[0, 0] = 0.5  # frozen result, read-only arrays

    weight = bank_similarity(bank, "weight", signed=True)
    assert weight.metric is Metric.WEIGHT and weight.signed
    generated = torch.stack(
        [
            torch.tensordot(torch.from_numpy(row), bank.templates.double(), dims=1).flatten()
            for row in coefficients
        ]
    )
    np.testing.assert_allclose(weight.norms, generated.norm(dim=1).numpy(), rtol=1e-9)
    summary = weight.to_dict()
    json.dumps(summary)
    assert summary["metric"] == "weight" and len(summary["matrix"]) == len(bank.layers)
    assert all(type(x) is float for row in summary["matrix"] for x in row)
    with pytest.raises(InputError, match="unknown similarity metric"):
        bank_similarity(bank, "cosine")


def test_nearest() -> None:
    matrix = np.array([[1.0, 0.2, -0.9], [0.2, 1.0, 0.1], [-0.9, 0.1, 1.0]])
    result = BankSimilarity("b", Metric.COEFFICIENTS, True, matrix, np.ones(3))
    assert result.nearest() == [(2, -0.9), (0, 0.2), (0, -0.9)]
    single = BankSimilarity("b", Metric.COEFFICIENTS, False, np.ones((1, 1)), np.ones(1))
    assert single.nearest() == [(None, 0.0)]
    assert BankSimilarity("b", Metric.WEIGHT, False, np.ones((0, 0)), np.ones(0)).nearest() == []


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 8), st.integers(1, 6)),
        elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    )
)
def test_property_symmetric_unit_diagonal_unit_range(a: np.ndarray) -> None:
    s = layer_similarity(a)
    assert np.array_equal(s, s.T)
    assert np.array_equal(np.diag(s), np.ones(len(a)))
    assert ((s >= 0) & (s <= 1)).all()


def test_large_bank_runs() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(300, 200))
    gram = rng.normal(size=(200, 200))
    s = layer_similarity(a, gram=gram @ gram.T)
    assert s.shape == (300, 300) and np.isfinite(s).all()
