"""Cluster the layers of one template bank by their similarity (the LSM).

Two layers whose similarity is 1 use the same filter up to a scale, so a cluster is a set of
layers that folding can serve with one weight tensor. The tree is the agglomerative clustering of
the distance ``1 - S``, built by :func:`linkage_tree`: the algorithms SciPy's ``linkage`` (and so
scikit-learn's ``AgglomerativeClustering``) use, with the same tie-breaking, in a few lines of
numpy — importing scikit-learn alone would cost ``ssc analyze`` most of a second. The cut is done
here, on ``S`` itself, so the guarantee is exact and inclusive: with complete linkage every pair
in a cluster has ``S >= threshold - TOLERANCE``, and exactly parallel layers (``S == 1`` up to
rounding) stay together even at ``threshold = 1``. scikit-learn's own ``distance_threshold`` cut
compares with a strict ``<`` on ``1 - S`` computed in floats, which gets both of those edge cases
wrong.
"""

from __future__ import annotations

import math

import numpy as np

from soft_share_cli.analysis.defaults import Linkage

# Similarities within this of the threshold count as meeting it. Cosines of exactly parallel
# vectors come out as 1 +- a few ulps (~1e-16); 1e-12 absorbs that with a wide margin while
# staying far below any difference between layers that a user could mean.
TOLERANCE = 1e-12


Clusters = tuple[tuple[int, ...], ...]


def _as_similarity(similarity: np.ndarray) -> np.ndarray:
    """Validate an LSM and return it as a clean float64 copy (clipped, unit diagonal)."""
    s = np.array(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"similarity must be a square (L, L) matrix, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("similarity contains NaN or infinite values")
    # Loose bounds: rounding may push |cos| a few ulps past [0, 1]; anything further is a bug
    # upstream (a signed cosine, a distance passed as a similarity) and must not be clipped away.
    if s.size and (s.min() < -1e-9 or s.max() > 1 + 1e-9):
        raise ValueError(f"similarity entries must lie in [0, 1], got [{s.min():g}, {s.max():g}]")
    if not np.allclose(s, s.T, rtol=0.0, atol=1e-9):
        raise ValueError("similarity must be symmetric")
    s = np.clip((s + s.T) / 2.0, 0.0, 1.0)
    np.fill_diagonal(s, 1.0)
    return s


def _check_threshold(threshold: float) -> float:
    value = float(threshold)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return value


def _dendrogram(s: np.ndarray, linkage: Linkage) -> tuple[np.ndarray, np.ndarray]:
    """Merge tree of the layers: ``children`` (L-1, 2) as in scikit-learn, and ``heights`` (L-1,).

    A height is the linkage similarity of the merge, recomputed on ``S`` from the members (not
    taken as ``1 - distance``, which rounds), then capped by the children's heights so that it
    never increases along the tree. Cutting at ``t`` then means: apply the merges with
    ``height >= t``, and those always form whole subtrees.
    """
    n = s.shape[0]
    distance = np.clip(1.0 - s, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    children = linkage_tree(distance, linkage)[:, :2].astype(np.int64)

    members: list[list[int]] = [[i] for i in range(n)]
    node_height: list[float] = [math.inf] * n  # a leaf never limits its parent
    heights = np.empty(n - 1, dtype=np.float64)
    for k, (a, b) in enumerate(children):
        cross = s[np.ix_(members[a], members[b])]
        if linkage is Linkage.COMPLETE:
            h = float(cross.min())
        elif linkage is Linkage.SINGLE:
            h = float(cross.max())
        else:
            h = float(cross.mean())
        # Complete and single linkage are monotone exactly; the mean can wobble by an ulp.
        h = min(h, node_height[a], node_height[b])
        heights[k] = h
        node_height.append(h)
        members.append(members[a] + members[b])
    return children, heights


def linkage_tree(distance: np.ndarray, linkage: Linkage | str) -> np.ndarray:
    """The ``(n - 1, 4)`` linkage matrix of a square distance matrix, exactly as SciPy's.

    Row ``k`` merges clusters ``Z[k, 0] < Z[k, 1]`` (leaves ``0..n-1``, merge ``k`` makes
    ``n + k``) at distance ``Z[k, 2]`` into ``Z[k, 3]`` leaves. Complete and average linkage
    follow SciPy's nearest-neighbour chain, single linkage its minimum spanning tree; both then
    sort the merges by distance (stably) and relabel them, so ties resolve as in
    ``scipy.cluster.hierarchy.linkage(squareform(distance), method)`` — which is what
    scikit-learn's ``AgglomerativeClustering(metric="precomputed")`` calls. Only the upper
    triangle of ``distance`` is read. O(n^2) time and memory; fine for the hundreds of layers a
    bank has.
    """
    linkage = Linkage(linkage)
    d = np.array(distance, dtype=np.float64)
    n = d.shape[0]
    if d.ndim != 2 or d.shape[1] != n:
        raise ValueError(f"distance must be a square matrix, got shape {d.shape}")
    upper = np.triu(d, 1)
    d = upper + upper.T
    if not np.isfinite(d).all():
        raise ValueError("distance contains NaN or infinite values")
    z = np.empty((max(n - 1, 0), 4))
    if linkage is Linkage.SINGLE:
        _minimum_spanning_tree(d, z)
    else:
        _nearest_neighbour_chain(d, z, average=linkage is Linkage.AVERAGE)
    z = z[np.argsort(z[:, 2], kind="mergesort")]
    _relabel(z, n)
    return z


def _nearest_neighbour_chain(d: np.ndarray, z: np.ndarray, *, average: bool) -> None:
    # SciPy's nn_chain: follow nearest neighbours until two are mutual, merge them into the
    # larger index. A scan keeps the first index on ties, which argmin reproduces.
    n = d.shape[0]
    size = np.ones(n, dtype=np.int64)
    chain: list[int] = []
    for k in range(n - 1):
        if not chain:
            chain.append(int(np.flatnonzero(size > 0)[0]))
        while True:
            x = chain[-1]
            y = chain[-2] if len(chain) > 1 else -1
            best = d[x, y] if y >= 0 else math.inf
            row = np.where(size > 0, d[x], math.inf)
            row[x] = math.inf
            i = int(np.argmin(row))
            if row[i] < best:
                y, best = i, float(row[i])
            if len(chain) > 1 and y == chain[-2]:
                break
            chain.append(y)
        del chain[-2:]
        x, y = min(x, y), max(x, y)
        nx, ny = int(size[x]), int(size[y])
        z[k] = (x, y, best, nx + ny)
        size[x], size[y] = 0, nx + ny
        others = size > 0
        others[y] = False
        if average:
            merged = (nx * d[x, others] + ny * d[y, others]) / (nx + ny)
        else:
            merged = np.maximum(d[x, others], d[y, others])
        d[y, others] = merged
        d[others, y] = merged


def _minimum_spanning_tree(d: np.ndarray, z: np.ndarray) -> None:
    # SciPy's mst_single_linkage (Prim): grow from leaf 0, always to the nearest new leaf.
    n = d.shape[0]
    merged = np.zeros(n, dtype=bool)
    nearest = np.full(n, math.inf)
    x = 0
    for k in range(n - 1):
        merged[x] = True
        np.minimum(nearest, d[x], out=nearest, where=~merged)
        candidates = np.where(merged, math.inf, nearest)
        y = int(np.argmin(candidates))
        z[k] = (x, y, candidates[y], 0)
        x = y


def _relabel(z: np.ndarray, n: int) -> None:
    # SciPy's label(): merges in sorted order get the ids n, n + 1, ... via union-find.
    parent = list(range(2 * n - 1))
    size = [1] * (2 * n - 1)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for k in range(n - 1):
        a, b = find(int(z[k, 0])), find(int(z[k, 1]))
        z[k, 0], z[k, 1] = min(a, b), max(a, b)
        parent[a] = parent[b] = n + k
        size[n + k] = size[a] + size[b]
        z[k, 3] = size[n + k]


def _canonical(groups: list[list[int]]) -> Clusters:
    """Sorted members, clusters ordered by their smallest member: one spelling per partition."""
    return tuple(sorted((tuple(sorted(g)) for g in groups), key=lambda c: c[0]))


def cluster_layers(
    similarity: np.ndarray, threshold: float, linkage: Linkage | str = Linkage.COMPLETE
) -> Clusters:
    """Group the L layers of one bank so that, with complete linkage, all pairs meet ``threshold``.

    ``similarity`` is the bank's (L, L) LSM (entries in [0, 1], symmetric). A merge happens when
    its linkage similarity is ``>= threshold`` (inclusive, within :data:`TOLERANCE`). Returns the
    clusters as sorted tuples of layer indices, ordered by their smallest member, so the result is
    deterministic and the cluster of layer 0 comes first. ``threshold = 0`` gives one cluster,
    ``threshold = 1`` groups only exactly parallel layers. Raises ``ValueError`` for a threshold
    outside [0, 1] or a malformed matrix.
    """
    t = _check_threshold(threshold)
    linkage = Linkage(linkage)
    s = _as_similarity(similarity)
    n = s.shape[0]
    if n <= 1:
        return ((0,),) if n == 1 else ()
    children, heights = _dendrogram(s, linkage)

    # Heights never increase along the tree, so the accepted merges form whole subtrees and a
    # plain union-find over them yields the cut.
    parent = list(range(2 * n - 1))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k, (a, b) in enumerate(children):
        if heights[k] >= t - TOLERANCE:
            parent[root(int(a))] = n + k
            parent[root(int(b))] = n + k
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return _canonical(list(groups.values()))


def merge_heights(similarity: np.ndarray, linkage: Linkage | str = Linkage.COMPLETE) -> list[float]:
    """The thresholds at which the clustering changes, highest first (for choosing a threshold).

    Each value is the similarity at which the dendrogram merges two clusters: at a threshold
    equal to it the merge happens, just above it it does not. Values closer than
    :data:`TOLERANCE` to a larger one are dropped, since :func:`cluster_layers` treats them as
    equal. Empty for fewer than two layers.
    """
    linkage = Linkage(linkage)
    s = _as_similarity(similarity)
    if s.shape[0] <= 1:
        return []
    _, heights = _dendrogram(s, linkage)
    result: list[float] = []
    for h in sorted(heights.tolist(), reverse=True):
        if not result or result[-1] - h > TOLERANCE:
            result.append(h)
    return result


def cluster_labels(clusters: Clusters, n: int) -> list[int]:
    """Label of each of ``n`` layers: the position of its cluster in ``clusters``.

    Raises ``ValueError`` unless ``clusters`` is a partition of ``range(n)``.
    """
    labels = [-1] * n
    for label, cluster in enumerate(clusters):
        if not cluster:
            raise ValueError(f"cluster {label} is empty")
        for i in cluster:
            if not 0 <= i < n:
                raise ValueError(f"layer index {i} out of range for {n} layers")
            if labels[i] != -1:
                raise ValueError(f"layer {i} appears in more than one cluster")
            labels[i] = label
    missing = [i for i, label in enumerate(labels) if label == -1]
    if missing:
        raise ValueError(f"layers {missing} are in no cluster")
    return labels
