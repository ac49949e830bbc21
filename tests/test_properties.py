"""Property tests (hypothesis, bounded) for what the analysis and the fold promise.

Already covered elsewhere and not repeated here: the LSM of the coefficients metric is symmetric
with a unit diagonal and entries in [0, 1] (test_similarity.py, hypothesis), fixed examples of
rescaling and template permutation (test_similarity.py), and the complete-linkage guarantee on
arbitrary similarity matrices, ties and thresholds included (test_clustering.py, hypothesis).
Added: the same for the weight metric; invariance to rescaling any layer and to permuting
templates as properties over random banks; the guarantee end to end from coefficient vectors;
and folding exactly parallel layers keeping the logits for random scales and signs, for an SWRN
(soft_share_cli.folding.swrn.fold_swrn) and for a user network (module surgery).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from soft_share_cli.analysis.analyze import AnalysisOptions, analyze_state_dict
from soft_share_cli.analysis.clustering import TOLERANCE, Linkage, cluster_layers
from soft_share_cli.analysis.plan import plan_bank
from soft_share_cli.analysis.similarity import gram_matrix, layer_similarity
from soft_share_cli.folding.surgery import fold_user_model
from soft_share_cli.folding.swrn import fold_swrn
from soft_share_cli.models.layers import SConv2d, TemplateBank
from soft_share_cli.models.wrn import SWRN

BOUNDED = settings(max_examples=60, deadline=None, derandomize=True, database=None)
FOLDS = settings(max_examples=10, deadline=None, derandomize=True, database=None)

FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def banks(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """(L, K) coefficients and a (K, K) Gram matrix of random float64 templates."""
    layers, k = draw(st.integers(1, 7)), draw(st.integers(1, 5))
    coefficients = draw(arrays(np.float64, (layers, k), elements=FINITE))
    seed = draw(st.integers(0, 2**16))
    templates = torch.randn(k, 3, 2, 3, 3, generator=torch.Generator().manual_seed(seed))
    return coefficients, gram_matrix(templates.double())


def _either_metric(bank: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray | None]:
    return [None, bank[1]]


@BOUNDED
@given(banks(), st.booleans())
def test_lsm_is_symmetric_with_unit_diagonal_in_range_for_both_metrics(bank, signed) -> None:
    for gram in _either_metric(bank):
        s = layer_similarity(bank[0], gram=gram, signed=signed)
        assert np.array_equal(s, s.T)
        assert np.array_equal(np.diag(s), np.ones(len(s)))
        low = -1.0 if signed else 0.0
        assert ((s >= low) & (s <= 1.0)).all()


SCALES = st.one_of(
    st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3), st.sampled_from([1e-150, -1e150, 2.0**-60])
)


@BOUNDED
@given(banks(), st.data())
def test_lsm_is_invariant_to_rescaling_any_layer(bank, data) -> None:
    coefficients, gram = bank
    row = data.draw(st.integers(0, len(coefficients) - 1))
    scale = data.draw(SCALES)
    scaled = coefficients.copy()
    scaled[row] *= scale
    for g in (None, gram):
        np.testing.assert_allclose(
            layer_similarity(scaled, gram=g), layer_similarity(coefficients, gram=g), atol=1e-9
        )
        # signed: row and column of the rescaled layer flip with the sign, the diagonal stays
        flip = np.ones(len(coefficients))
        flip[row] = np.sign(scale)
        expected = layer_similarity(coefficients, gram=g, signed=True) * np.outer(flip, flip)
        np.fill_diagonal(expected, 1.0)
        np.testing.assert_allclose(
            layer_similarity(scaled, gram=g, signed=True), expected, atol=1e-9
        )


@BOUNDED
@given(banks(), st.randoms(use_true_random=False))
def test_lsm_is_invariant_to_permuting_templates_consistently(bank, rng) -> None:
    coefficients, gram = bank
    order = list(range(coefficients.shape[1]))
    rng.shuffle(order)
    permuted_gram = gram[np.ix_(order, order)]  # the Gram matrix of the templates reordered
    for signed in (False, True):
        np.testing.assert_allclose(
            layer_similarity(coefficients[:, order], signed=signed),
            layer_similarity(coefficients, signed=signed),
            atol=1e-12,
        )
        np.testing.assert_allclose(
            layer_similarity(coefficients[:, order], gram=permuted_gram, signed=signed),
            layer_similarity(coefficients, gram=gram, signed=signed),
            atol=1e-9,
        )


@BOUNDED
@given(banks(), st.floats(0.0, 1.0), st.booleans())
def test_complete_linkage_from_coefficients_never_joins_dissimilar_layers(
    bank, threshold, weight_metric
) -> None:
    coefficients, gram = bank
    s = layer_similarity(coefficients, gram=gram if weight_metric else None)
    clusters = cluster_layers(s, threshold, Linkage.COMPLETE)
    assert sorted(i for c in clusters for i in c) == list(range(len(s)))
    for cluster in clusters:
        for i, j in itertools.combinations(cluster, 2):
            assert s[i, j] >= threshold - TOLERANCE


# --- folding exactly parallel layers keeps the function ------------------------------------------

# A signed scale: magnitudes from 1/20 to 20, either sign.
SIGNED_SCALES = st.tuples(st.floats(0.05, 20.0), st.sampled_from([1.0, -1.0])).map(
    lambda t: t[0] * t[1]
)
SHARED_PER_BANK = 4  # SWRN 22: blocks 1 and 2 of each stage share the bank, two convs each
# The same scales are put in all three banks, so the logits grow like the cube of a bank's growth
# prod max(|s_i|, 1): with every |s_i| free in [1/20, 20] most draws gave logits past 1e6 (4 in 5
# examples were discarded). Each magnitude still ranges over [1/20, 20]; the growth is kept <= 20.
LOG_SCALE = math.log10(20.0)


@st.composite
def bank_scales(draw: st.DrawFn, n: int = SHARED_PER_BANK) -> list[float]:
    """``n`` signed scales, each |s| in [1/20, 20], whose magnitudes above 1 multiply to <= 20.

    Drawn in log10 space one after the other, each within what the growth has left, then put in
    a random order: every draw meets the bound by construction (no example is thrown away).
    """
    logs: list[float] = []
    for _ in range(n):
        left = LOG_SCALE - sum(max(log, 0.0) for log in logs)
        logs.append(draw(st.floats(-LOG_SCALE, max(left, 0.0))))
    order = draw(st.permutations(range(n)))
    signs = draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=n, max_size=n))
    return [sign * 10.0 ** logs[i] for sign, i in zip(signs, order, strict=True)]


def _parallel_swrn(pattern: list[int], scales: list[float], seed: int) -> SWRN:
    """An SWRN 22-1-3 whose shared layers are ``scales[i] * u[pattern[i]]`` in every bank."""
    torch.manual_seed(seed)
    model = SWRN(22, 1, 3, num_classes=10, in_channels=1)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # trained-looking statistics, not the identity
                m.running_mean.normal_(0.0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
        for stage in (1, 2, 3):
            convs = [
                m for m in getattr(model, f"stage_{stage}").modules() if isinstance(m, SConv2d)
            ]
            assert len(convs) == SHARED_PER_BANK
            directions = torch.randn(2, 3, generator=g)
            for conv, cluster, scale in zip(convs, pattern, scales, strict=True):
                unit = directions[cluster] / directions[cluster].norm()
                conv.coefficients.copy_((scale * unit).view(3, 1, 1, 1, 1))
    return model.eval()


@FOLDS
@given(
    pattern=st.lists(st.integers(0, 1), min_size=SHARED_PER_BANK, max_size=SHARED_PER_BANK),
    scales=bank_scales(),
    seed=st.integers(0, 1000),
)
def test_folding_a_parallel_swrn_keeps_its_logits(pattern, scales, seed) -> None:
    model = _parallel_swrn(pattern, scales, seed)
    results, _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=0.999))
    plans = {r.bank.name: r.fold for r in results}
    assert all(len(p.clusters) == len(set(pattern)) for p in plans.values())
    folded = fold_swrn(model, plans)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x)
        got = folded(x)
    scale = float(expected.abs().max())
    assume(scale < 1e6)  # a network this far out of range says nothing about the fold
    torch.testing.assert_close(got, expected, atol=1e-4 * max(1.0, scale), rtol=1e-4)


class _UserNet(nn.Module):
    """The authors' README network: a stem, one bank, three shared convs, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bank = TemplateBank(3, 6, 6, 3)
        self.conv2 = SConv2d(self.bank)
        self.conv3 = SConv2d(self.bank)
        self.conv4 = SConv2d(self.bank)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        for conv in (self.conv2, self.conv3, self.conv4):
            x = torch.relu(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


@FOLDS
@given(
    pattern=st.lists(st.integers(0, 1), min_size=3, max_size=3),
    scales=st.lists(SIGNED_SCALES, min_size=3, max_size=3),
    seed=st.integers(0, 1000),
)
def test_folding_a_parallel_user_network_keeps_its_logits(pattern, scales, seed) -> None:
    torch.manual_seed(seed)
    model = _UserNet().eval()
    directions = torch.randn(2, 3, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        for conv, cluster, scale in zip(
            (model.conv2, model.conv3, model.conv4), pattern, scales, strict=True
        ):
            conv.coefficients.copy_((scale * directions[cluster]).view(3, 1, 1, 1, 1))
    results, _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=0.999))
    # User networks: no BatchNorm to absorb into, every scale stays an explicit gain.
    plans = {r.bank.name: plan_bank(r.bank, r.clusters, state_dict=None) for r in results}
    assert [len(p.clusters) for p in plans.values()] == [len(set(pattern))]
    folded = fold_user_model(model, plans, [r.bank for r in results]).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(
            folded(x), expected, atol=1e-5 * max(1.0, float(expected.abs().max())), rtol=1e-4
        )


@pytest.mark.parametrize("signs", [(1.0, -1.0, -1.0, 1.0), (-1.0, -1.0, -1.0, -1.0)])
def test_the_fold_property_fails_when_layers_are_not_parallel(signs) -> None:
    """Guard against a vacuous property: nudge one layer off its cluster and the logits move."""
    model = _parallel_swrn([0, 1, 0, 1], [2.0 * s for s in signs], seed=5)
    with torch.no_grad():
        conv = model.stage_2[1].conv1
        conv.coefficients.add_(
            0.3 * conv.coefficients.norm() * torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1, 1, 1)
        )
    results, _, _, _ = analyze_state_dict(model.state_dict(), AnalysisOptions(threshold=0.8))
    folded = fold_swrn(model, {r.bank.name: r.fold for r in results})
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() > 1e-3
