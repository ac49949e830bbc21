"""ssc's own agglomerative tree must be SciPy's, tie for tie (scikit-learn calls SciPy for it)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform
from sklearn.cluster import AgglomerativeClustering

from soft_share_cli.analysis.clustering import Linkage, linkage_tree


def distances(seed: int, n: int, ties: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.random((n, n))
    if ties == "thirds":
        a = np.round(a * 3) / 3
    elif ties == "binary":
        a = (a < 0.5) * 0.25
    d = (a + a.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


@pytest.mark.parametrize("ties", ["none", "thirds", "binary"])
@pytest.mark.parametrize("method", [m.value for m in Linkage])
def test_identical_to_scipy(method: str, ties: str) -> None:
    for seed in range(60):
        d = distances(seed, 2 + seed % 25, ties)
        expected = linkage(squareform(d, checks=False), method=method)
        np.testing.assert_array_equal(linkage_tree(d, method), expected)


@pytest.mark.parametrize("method", [m.value for m in Linkage])
def test_children_as_scikit_learn_had_them(method: str) -> None:
    d = distances(7, 12, "thirds")
    model = AgglomerativeClustering(
        n_clusters=1, metric="precomputed", linkage=method, compute_full_tree=True
    ).fit(d)
    np.testing.assert_array_equal(linkage_tree(d, method)[:, :2], model.children_)


def test_small_and_bad_inputs() -> None:
    assert linkage_tree(np.zeros((1, 1)), "complete").shape == (0, 4)
    np.testing.assert_array_equal(linkage_tree(np.array([[0, 0.5], [0.5, 0]]), "single"),
                                  [[0, 1, 0.5, 2]])  # fmt: skip
    with pytest.raises(ValueError):
        linkage_tree(np.zeros((2, 3)), "average")
    with pytest.raises(ValueError):
        linkage_tree(np.array([[0, np.nan], [np.nan, 0]]), "complete")
