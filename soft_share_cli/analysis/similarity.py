"""Layer similarity within one template bank: the paper's LSM and the similarity of weights.

The paper's Layer Similarity Matrix compares coefficient vectors,
``LSM_ij = |<a_i, a_j>| / (||a_i|| ||a_j||)``. It ignores that templates are not orthogonal, so
we also offer the cosine of the generated weights ``W_i = sum_k a_ik T_k`` themselves,
``a_i^T G a_j / sqrt(a_i^T G a_i * a_j^T G a_j)`` with the Gram matrix ``G_kl = <T_k, T_l>``:
exact, and it never materialises a W (only the K x K Gram matrix, built in chunks).

Both are vectorised matrix products, so L in the hundreds and K in the hundreds are instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from soft_share_cli.analysis.banks import Bank
from soft_share_cli.analysis.defaults import Metric
from soft_share_cli.checkpoints import arrays

if TYPE_CHECKING:
    from torch import Tensor
from soft_share_cli.errors import InputError

#: float64 numbers per Gram chunk (32 MiB): large banks are never copied to float64 whole.
_CHUNK_ELEMENTS = 1 << 22


def gram_matrix(templates: Tensor | np.ndarray) -> np.ndarray:
    """The ``(K, K)`` float64 Gram matrix ``G_kl = <T_k, T_l>`` of a ``(K, ...)`` template tensor.

    Accumulated in float64 over column chunks of the flattened templates, so a 640x640x3x3 bank
    (possibly memory-mapped, possibly half precision) is never copied to float64 in full. A
    torch tensor or a :class:`~soft_share_cli.checkpoints.arrays.StoredArray`: the same numbers
    either way.
    """
    shape = arrays.shape(templates)
    if len(shape) < 1 or shape[0] < 1:
        raise ValueError(f"templates need a leading K >= 1 axis, got shape {shape}")
    k = shape[0]
    n = arrays.numel(templates) // k
    chunk = max(1, _CHUNK_ELEMENTS // k)
    gram = np.zeros((k, k), dtype=np.float64)
    for start in range(0, n, chunk):
        block = arrays.float64_rows(templates, start, start + chunk)
        gram += block @ block.T
    return (gram + gram.T) / 2  # exactly symmetric, whatever the summation order did


def layer_similarity(
    coefficients: np.ndarray | Tensor, *, gram: np.ndarray | None = None, signed: bool = False
) -> np.ndarray:
    """The ``(L, L)`` similarity of the layers whose coefficients are the rows of ``coefficients``.

    Args:
        coefficients: ``(L, K)``, one row per layer of one bank.
        gram: the bank's ``(K, K)`` Gram matrix (:func:`gram_matrix`) to compare generated
            weights; ``None`` gives the paper's LSM over the coefficient vectors.
        signed: keep the sign of the cosine (in ``[-1, 1]``) instead of its magnitude (``[0, 1]``).

    The result is exactly symmetric with an exact unit diagonal. A layer with zero coefficients
    (or a numerically zero weight) is similar to no other layer: its off-diagonal entries are 0.

    Raises:
        ValueError: wrong shapes, or NaN/infinite inputs.
    """
    matrix, _ = _similarity_and_norms(_as_matrix(coefficients), gram, signed)
    return matrix


@dataclass(frozen=True)
class BankSimilarity:
    """The similarity of the layers of one bank; the arrays are read-only."""

    bank: str
    metric: Metric
    signed: bool
    matrix: np.ndarray = field(compare=False, repr=False)  # (L, L)
    norms: np.ndarray = field(compare=False, repr=False)  # ||a_i|| or ||W_i||, by metric
    layers: tuple[str, ...] = ()  # layer names, one per row

    def nearest(self) -> list[tuple[int | None, float]]:
        """Per layer: its most similar *other* layer (largest ``|S|``, lowest index on ties)
        and that entry of the matrix; ``(None, 0.0)`` when the bank has a single layer."""
        size = self.matrix.shape[0]
        if size < 2:
            return [(None, 0.0)] * size
        magnitude = np.abs(self.matrix)
        np.fill_diagonal(magnitude, -np.inf)  # a copy: the layer itself never counts
        best = np.argmax(magnitude, axis=1)
        return [(int(j), float(self.matrix[i, j])) for i, j in enumerate(best)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: the matrix as rows of Python floats."""
        return {
            "bank": self.bank,
            "metric": self.metric.value,
            "signed": self.signed,
            "layers": list(self.layers),
            "matrix": [[float(x) for x in row] for row in self.matrix],
            "norms": [float(x) for x in self.norms],
            "nearest": [{"index": j, "similarity": s} for j, s in self.nearest()],
        }


def bank_similarity(
    bank: Bank, metric: Metric | str = Metric.COEFFICIENTS, signed: bool = False
) -> BankSimilarity:
    """The similarity matrix of ``bank``'s layers by ``metric``, with the per-layer norms.

    Raises:
        InputError: ``metric`` is unknown, or the weight metric meets non-finite templates.
    """
    try:
        metric = Metric(metric)
    except ValueError:
        choices = ", ".join(m.value for m in Metric)
        raise InputError(f"unknown similarity metric {metric!r}; choose {choices}") from None
    gram = None
    if metric is Metric.WEIGHT:
        gram = gram_matrix(bank.templates)
        if not np.isfinite(gram).all():
            raise InputError(
                f"bank {bank.name} has NaN or infinite templates (or their Gram matrix "
                "overflows); weight similarity is undefined, use the coefficients metric"
            )
    coefficients = bank.coefficient_matrix()
    matrix, norms = _similarity_and_norms(coefficients, gram, signed)
    for array in (matrix, norms):
        array.flags.writeable = False  # the result is frozen; so are its arrays
    names = tuple(layer.name for layer in bank.layers)
    return BankSimilarity(bank.name, metric, signed, matrix, norms, names)


def _as_matrix(coefficients: np.ndarray | Tensor) -> np.ndarray:
    if not isinstance(coefficients, np.ndarray):  # a torch tensor
        coefficients = coefficients.detach().to(device="cpu").double().numpy()
    array = np.asarray(coefficients, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"coefficients must be an (L, K) matrix, got shape {array.shape}")
    return array


def _similarity_and_norms(
    coefficients: np.ndarray, gram: np.ndarray | None, signed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(S, norms)``; norms are ``||a_i||`` without a Gram matrix and ``||W_i||`` with one."""
    a = np.asarray(coefficients, dtype=np.float64)
    k = a.shape[1]
    if not np.isfinite(a).all():
        raise ValueError("coefficients contain NaN or infinite values")
    if gram is not None:
        gram = np.asarray(gram, dtype=np.float64)
        if gram.shape != (k, k):
            raise ValueError(f"gram must be ({k}, {k}) for K = {k}, got shape {gram.shape}")
        if not np.isfinite(gram).all():
            raise ValueError("gram contains NaN or infinite values")

    # Normalise rows to unit length first (dividing by the largest entry before squaring), so
    # tiny or huge coefficients neither underflow nor overflow in the products below.
    peaks = np.abs(a).max(axis=1) if k else np.zeros(len(a))
    valid = peaks > 0
    unit = np.zeros_like(a)
    unit[valid] = a[valid] / peaks[valid, None]
    rescaled = np.sqrt(np.einsum("ij,ij->i", unit, unit))
    unit[valid] /= rescaled[valid, None]
    lengths = peaks * rescaled
    if gram is None:
        norms = lengths
        scaled = unit
        products = scaled @ scaled.T
    else:
        projected = unit @ gram
        energy = np.einsum("ij,ij->i", projected, unit)  # ||W(unit a_i)||^2
        # Below this, a_i^T G a_i is rounding noise: the weight is zero (a in G's null space).
        scale = float(np.abs(np.diag(gram)).max()) if k else 0.0
        tolerance = 8 * k * np.finfo(np.float64).eps * scale
        valid &= energy > tolerance
        weight_lengths = np.sqrt(np.where(valid, energy, 0.0))
        norms = lengths * weight_lengths
        scaled = np.zeros_like(a)
        scaled[valid] = unit[valid] / weight_lengths[valid, None]
        products = (scaled @ gram) @ scaled.T
    matrix = (products + products.T) / 2  # IEEE addition commutes: exactly symmetric
    if signed:
        np.clip(matrix, -1.0, 1.0, out=matrix)
    else:
        matrix = np.clip(np.abs(matrix), 0.0, 1.0)
    # Rows of invalid layers are already 0 (their scaled rows are zero); the diagonal is 1 by
    # definition, for every layer.
    np.fill_diagonal(matrix, 1.0)
    return matrix, norms
