"""Tests of layer clustering: hand-built similarity matrices, the linkage guarantee, edge cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import AgglomerativeClustering

from soft_share_cli.analysis.clustering import (
    TOLERANCE,
    Linkage,
    cluster_labels,
    cluster_layers,
    merge_heights,
)
from soft_share_cli.analysis.defaults import DEFAULT_THRESHOLD


def blocks() -> np.ndarray:
    """Two groups of three layers: 0.99 within a group, 0.1 across."""
    s = np.full((6, 6), 0.1)
    s[:3, :3] = s[3:, 3:] = 0.99
    np.fill_diagonal(s, 1.0)
    return s


def chain() -> np.ndarray:
    """Four layers, neighbours at 0.96, everything else at 0.9: single linkage chains them."""
    s = np.full((4, 4), 0.9)
    for i in range(3):
        s[i, i + 1] = s[i + 1, i] = 0.96
    np.fill_diagonal(s, 1.0)
    return s


def symmetric(values: list[float], n: int) -> np.ndarray:
    s = np.eye(n)
    s[np.triu_indices(n, k=1)] = values
    return np.maximum(s, s.T)


def test_two_blocks_give_two_clusters() -> None:
    assert cluster_layers(blocks(), DEFAULT_THRESHOLD) == ((0, 1, 2), (3, 4, 5))


def test_clusters_ordered_by_first_member_whatever_the_layer_order() -> None:
    perm = [4, 0, 5, 2, 1, 3]  # new layer k is old layer perm[k]
    s = blocks()[np.ix_(perm, perm)]
    assert cluster_layers(s, 0.95) == ((0, 2, 5), (1, 3, 4))


def test_threshold_is_inclusive() -> None:
    assert cluster_layers(blocks(), 0.99) == ((0, 1, 2), (3, 4, 5))
    assert cluster_layers(blocks(), 0.1) == ((0, 1, 2, 3, 4, 5),)
    assert cluster_layers(blocks(), np.nextafter(0.99, 1.0) + 2 * TOLERANCE) == tuple(
        (i,) for i in range(6)
    )


def test_threshold_one_keeps_exactly_parallel_layers_together() -> None:
    # Cosines of parallel vectors land a few ulps either side of 1.
    s = np.full((4, 4), 0.5)
    s[0, 2] = s[2, 0] = 1.0 - 2e-16
    s[1, 3] = s[3, 1] = 1.0 + 2e-16
    np.fill_diagonal(s, 1.0)
    assert cluster_layers(s, 1.0) == ((0, 2), (1, 3))
    assert cluster_layers(np.ones((5, 5)), 1.0) == ((0, 1, 2, 3, 4),)


@pytest.mark.parametrize("linkage", list(Linkage))
def test_threshold_zero_gives_one_cluster(linkage: Linkage) -> None:
    s = np.zeros((4, 4))
    np.fill_diagonal(s, 1.0)
    assert cluster_layers(s, 0.0, linkage) == ((0, 1, 2, 3),)


def test_no_layers_and_one_layer() -> None:
    assert cluster_layers(np.zeros((0, 0)), 0.5) == ()
    assert cluster_layers(np.ones((1, 1)), 0.5) == ((0,),)
    assert merge_heights(np.zeros((0, 0))) == []
    assert merge_heights(np.ones((1, 1))) == []


def test_single_and_complete_linkage_differ_on_a_chain() -> None:
    assert cluster_layers(chain(), 0.95, Linkage.SINGLE) == ((0, 1, 2, 3),)
    assert cluster_layers(chain(), 0.95, Linkage.COMPLETE) == ((0, 1), (2, 3))
    assert cluster_layers(chain(), 0.95, "average") == ((0, 1), (2, 3))


@pytest.mark.parametrize("threshold", [-0.01, 1.01, float("nan")])
def test_threshold_outside_unit_interval_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        cluster_layers(blocks(), threshold)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.ones((2, 3)), "square"),
        (np.array([[1.0, 0.2], [0.3, 1.0]]), "symmetric"),
        (np.array([[1.0, -0.5], [-0.5, 1.0]]), r"\[0, 1\]"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN"),
    ],
)
def test_malformed_similarity_is_refused(matrix: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_layers(matrix, 0.5)


def test_merge_heights_of_the_examples() -> None:
    assert merge_heights(blocks()) == [0.99, 0.1]
    assert merge_heights(chain(), Linkage.COMPLETE) == [0.96, 0.9]
    assert merge_heights(chain(), Linkage.SINGLE) == [0.96]


@pytest.mark.parametrize("seed", range(20))
def test_agrees_with_sklearn_cut_away_from_the_threshold(seed: int) -> None:
    # Where no similarity sits near the threshold, our exact cut and sklearn's must coincide.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 10))
    s = symmetric(rng.uniform(0, 1, n * (n - 1) // 2).tolist(), n)
    threshold = float(rng.uniform(0.2, 0.9))
    if np.any(np.abs(s - threshold) < 1e-6):
        pytest.skip("a similarity sits on the threshold")
    for linkage in Linkage:
        model = AgglomerativeClustering(
            n_clusters=None,
            metric="precomputed",
            linkage=linkage.value,
            distance_threshold=1.0 - threshold,
        ).fit(1.0 - s)
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(model.labels_):
            groups.setdefault(int(label), []).append(i)
        expected = tuple(sorted(tuple(g) for g in groups.values()))
        assert cluster_layers(s, threshold, linkage) == expected


# Drawing from a few values as well as from [0, 1] produces ties and entries exactly at the
# threshold, where a strict comparison or rounding would break the guarantee.
VALUES = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 0.9, 0.95, 1.0 - 1e-16, 1.0]))


@st.composite
def similarity_and_threshold(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    n = draw(st.integers(0, 9))
    values = draw(st.lists(VALUES, min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2))
    threshold = draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from(values or [0.5])))
    return symmetric(values, n), threshold


@settings(max_examples=100, deadline=None)
@given(similarity_and_threshold())
def test_complete_linkage_guarantee(case: tuple[np.ndarray, float]) -> None:
    s, threshold = case
    clusters = cluster_layers(s, threshold)
    assert sorted(i for c in clusters for i in c) == list(range(len(s)))  # a partition
    assert [c[0] for c in clusters] == sorted(c[0] for c in clusters)
    for cluster in clusters:
        assert list(cluster) == sorted(cluster)
        for i, j in itertools.combinations(cluster, 2):
            assert s[i, j] >= threshold - TOLERANCE
    # Every merge height is a threshold where the clustering changes.
    for h in merge_heights(s):
        if h < 1.0 - 2 * TOLERANCE:
            assert len(cluster_layers(s, h)) < len(cluster_layers(s, h + 2 * TOLERANCE))


def test_cluster_labels() -> None:
    assert cluster_labels(((0, 2), (1,), (3, 4)), 5) == [0, 1, 0, 2, 2]
    with pytest.raises(ValueError, match="no cluster"):
        cluster_labels(((0,),), 2)
    with pytest.raises(ValueError, match="more than one"):
        cluster_labels(((0, 1), (1,)), 2)
    with pytest.raises(ValueError, match="out of range"):
        cluster_labels(((0, 2),), 2)
    with pytest.raises(ValueError, match="empty"):
        cluster_labels(((0, 1), ()), 2)
