"""The cross-layer SVD fit (sharing.svd) against numpy's truncated SVD and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soft_share_cli.errors import InputError
from soft_share_cli.sharing.svd import (
    TemplateFit,
    fit_templates,
    rank_for_energy,
    singular_values,
)

SHAPE = (4, 3, 3, 3)


def _weights(layers: int, seed: int = 0, shape: tuple[int, ...] = SHAPE) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(layers)]


def _numpy_fit(weights: list[torch.Tensor], k: int) -> tuple[np.ndarray, float, np.ndarray]:
    """numpy's rank-k reconstruction (float64), its relative error, and the spectrum."""
    w = np.stack([x.double().numpy().reshape(-1) for x in weights])
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    rec = (u[:, :k] * s[:k]) @ vh[:k]
    return rec, float(np.linalg.norm(w - rec) / np.linalg.norm(w)), s


@pytest.mark.parametrize(("layers", "k"), [(6, 1), (6, 3), (6, 5), (5, 2), (3, 3)])
def test_fit_equals_numpy_truncated_svd(layers: int, k: int) -> None:
    weights = [w.double() for w in _weights(layers, seed=layers + k)]
    fit = fit_templates(weights, k)
    rec, error, s = _numpy_fit(weights, k)
    got = fit.weights().numpy().reshape(layers, -1)
    np.testing.assert_allclose(got, rec, rtol=0, atol=1e-10)
    assert fit.relative_error == pytest.approx(error, rel=1e-10)
    assert fit.kept_energy() == pytest.approx(1 - error**2, rel=1e-12)
    np.testing.assert_allclose(fit.singular_values, s, rtol=1e-10)
    np.testing.assert_allclose(singular_values(weights), s, rtol=1e-10)
    assert fit.templates.shape == (k, *SHAPE)
    assert fit.coefficients.shape == (layers, k)
    assert fit.num_templates == k


def test_float32_weights_give_float32_fit_close_to_numpy() -> None:
    weights = _weights(6, seed=3)
    fit = fit_templates(weights, 4)
    assert fit.templates.dtype == torch.float32 and fit.coefficients.dtype == torch.float32
    rec, error, _ = _numpy_fit(weights, 4)
    np.testing.assert_allclose(fit.weights().double().numpy().reshape(6, -1), rec, atol=1e-5)
    assert fit.relative_error == pytest.approx(error, rel=1e-6)


def test_eckart_young_no_random_rank_k_fit_is_better() -> None:
    weights = [w.double() for w in _weights(6, seed=11)]
    w = torch.stack([x.reshape(-1) for x in weights])
    k = 3
    fit = fit_templates(weights, k)
    best = float((w - fit.weights().reshape(6, -1)).norm())
    optimal = fit.templates.reshape(k, -1).T  # (D, k), orthogonal columns
    g = torch.Generator().manual_seed(5)
    for trial in range(64):
        # the best fit of W within a rank-k subspace: random ones, and ones near the optimum
        noise = torch.randn(w.shape[1], k, generator=g, dtype=torch.float64)
        start = noise if trial % 2 else optimal + 1e-3 * noise * float(optimal.norm())
        basis, _ = torch.linalg.qr(start)
        other = (w @ basis) @ basis.T
        assert float((w - other).norm()) >= best - 1e-12
        c = torch.randn(6, k, generator=g, dtype=torch.float64)  # and random factors
        assert float((w - c @ basis.T).norm()) >= best


@pytest.mark.parametrize("layers", [2, 4, 6])
def test_exact_when_k_equals_group_size(layers: int) -> None:
    weights = _weights(layers, seed=layers)
    fit = fit_templates(weights, layers)
    for got, want in zip(fit.weights(), weights, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert fit.relative_error < 1e-6
    assert fit.kept_energy() == pytest.approx(1.0, abs=1e-10)


def test_templates_orthogonal_of_equal_rms_norm() -> None:
    weights = [w.double() * (i + 1) for i, w in enumerate(_weights(6, seed=2))]
    fit = fit_templates(weights, 4)
    flat = fit.templates.reshape(4, -1)
    gram = flat @ flat.T
    rms = math.sqrt(sum(float(w.square().sum()) for w in weights) / 6)
    torch.testing.assert_close(gram, torch.eye(4, dtype=torch.float64) * rms**2)


def test_coefficient_cosines_are_the_cosines_of_the_fitted_weights() -> None:
    weights = [w.double() for w in _weights(6, seed=4)]
    fit = fit_templates(weights, 3)
    c = fit.coefficients
    cos_c = (c @ c.T) / (c.norm(dim=1)[:, None] * c.norm(dim=1)[None, :])
    w = fit.weights().reshape(6, -1)
    cos_w = (w @ w.T) / (w.norm(dim=1)[:, None] * w.norm(dim=1)[None, :])
    torch.testing.assert_close(cos_c, cos_w, rtol=0, atol=1e-12)


def test_sign_rule_makes_the_fit_independent_of_flipping_a_singular_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    weights = [w.double() for w in _weights(5, seed=8)]
    reference = fit_templates(weights, 3)
    # each component's coefficients sum to a positive number
    assert bool((reference.coefficients.sum(dim=0) > 0).all())
    real_svd = torch.linalg.svd

    def flipped(a: torch.Tensor, full_matrices: bool = True) -> tuple[torch.Tensor, ...]:
        u, s, vh = real_svd(a, full_matrices=full_matrices)
        signs = torch.tensor([-1.0, 1.0, -1.0, -1.0, 1.0], dtype=a.dtype)[: len(s)]
        return u * signs, s, vh * signs[:, None]

    monkeypatch.setattr(torch.linalg, "svd", flipped)
    again = fit_templates(weights, 3)
    torch.testing.assert_close(again.templates, reference.templates, rtol=0, atol=0)
    torch.testing.assert_close(again.coefficients, reference.coefficients, rtol=0, atol=0)


def test_sign_rule_tie_is_decided_by_the_largest_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    # rows a and -a (plus an orthogonal row): the top component's coefficients sum to zero, and
    # its two entries of equal size: the first of them is made positive, whatever LAPACK chose
    a = torch.zeros(SHAPE, dtype=torch.float64)
    a[0, 0, 0, 0] = 3.0
    b = torch.zeros(SHAPE, dtype=torch.float64)
    b[1, 1, 1, 1] = 1.0
    fits = [fit_templates([a, -a, b], 1)]
    real_svd = torch.linalg.svd

    def flipped(x: torch.Tensor, full_matrices: bool = True) -> tuple[torch.Tensor, ...]:
        u, s, vh = real_svd(x, full_matrices=full_matrices)
        return -u, s, -vh

    monkeypatch.setattr(torch.linalg, "svd", flipped)
    fits.append(fit_templates([a, -a, b], 1))
    for fit in fits:
        assert float(fit.coefficients[0, 0]) > 0 > float(fit.coefficients[1, 0])
        torch.testing.assert_close(fit.weights(), torch.stack([a, -a, 0 * b]))
    torch.testing.assert_close(fits[0].templates, fits[1].templates, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("values", "keep", "k"),
    [
        ([3.0, 4.0], 0.36, 1),  # 9 / 25 = 0.36 exactly: one is enough
        ([4.0, 3.0], 0.64, 1),
        ([4.0, 3.0], 0.65, 2),
        ([4.0, 3.0], 1.0, 2),
        ([1.0, 1.0, 1.0, 1.0], 0.5, 2),
        ([1.0, 1.0, 1.0, 1.0], 0.5000001, 3),
        ([2.0, 0.0, 0.0], 1.0, 1),
        ([0.0, 0.0], 0.9, 1),  # an all-zero spectrum: one template
        ([10.0, 1.0, 0.1], 0.99, 1),  # 100 / 101.01 = 0.990001
        ([10.0, 1.0, 0.1], 0.9999, 2),  # 101 / 101.01 = 0.999901
        ([10.0, 1.0, 0.1], 0.99995, 3),
    ],
)
def test_rank_for_energy_on_known_spectra(values: list[float], keep: float, k: int) -> None:
    assert rank_for_energy(values, keep) == k


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, float("nan")])
def test_rank_for_energy_refuses_a_fraction_outside_0_1(keep: float) -> None:
    with pytest.raises(InputError, match="kept fraction"):
        rank_for_energy([1.0, 2.0], keep)


@pytest.mark.parametrize("k", [0, -1, 7, True, 2.0, "2", None])
def test_k_outside_1_to_l_or_not_an_int(k: object) -> None:
    with pytest.raises(InputError, match="--templates must lie in 1..6"):
        fit_templates(_weights(6), k)  # type: ignore[arg-type]


def test_k_may_be_a_numpy_int() -> None:
    assert fit_templates(_weights(4), np.int64(2)).num_templates == 2  # type: ignore[arg-type]


def test_k_cannot_exceed_the_weight_size() -> None:
    weights = _weights(4, shape=(1, 1, 1, 2))  # D = 2 < L = 4
    assert fit_templates(weights, 2).relative_error < 1e-6
    with pytest.raises(InputError, match="1..2"):
        fit_templates(weights, 3)


def test_mixed_shapes_no_weights_and_non_finite_weights() -> None:
    with pytest.raises(InputError, match="share a shape"):
        fit_templates([torch.zeros(SHAPE), torch.zeros(4, 3, 1, 1)], 1)
    with pytest.raises(InputError, match="at least one weight"):
        fit_templates([], 1)
    bad = _weights(3)
    bad[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or infinite"):
        fit_templates(bad, 2)


def test_an_all_zero_group() -> None:
    zeros = [torch.zeros(SHAPE) for _ in range(3)]
    fit = fit_templates(zeros, 2)
    assert isinstance(fit, TemplateFit)
    assert fit.relative_error == 0.0 and fit.kept_energy() == 1.0
    assert fit.singular_values == (0.0, 0.0, 0.0)
    assert bool(torch.isfinite(fit.templates).all())
    assert float(fit.weights().abs().max()) == 0.0
    assert rank_for_energy(fit.singular_values, 0.5) == 1
