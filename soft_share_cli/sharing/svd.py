"""Cross-layer truncated SVD: K templates and one coefficient vector per layer.

The L same-shape weights of a group are flattened into the rows of ``W`` (L x D). Its truncated
SVD ``W ~ U_K S_K V_K^T`` is the best rank-K fit in the Frobenius norm (Eckart-Young), exact when
K equals the number of layers (rank W <= L). ssc stores it in the paper's form ``w_i = sum_k
c_ik P_k``:

* templates ``P_k = s * v_k`` (the right singular vectors, reshaped to the weight's shape), all of
  the same norm ``s``, the root-mean-square norm of the group's weights, so that templates look
  like ordinary conv weights to the optimizer (weight decay, learning rate);
* coefficients ``c_i = u_i S_K / s``.

Because the templates are orthogonal and of equal norm, the cosine of two layers' coefficient
vectors is the cosine of their reconstructed weights: the Layer Similarity Matrix of the shared
network measures the layers themselves. Each component's sign is fixed so that its coefficients
sum to a positive number (the largest entry decides a tie), so the result does not depend on the
LAPACK build's sign choice.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from soft_share_cli.errors import InputError


@dataclass(frozen=True)
class TemplateFit:
    """The rank-K fit of one group of same-shape weights."""

    templates: Tensor = field(repr=False)  # (K, *weight shape), in the weights' dtype
    coefficients: Tensor = field(repr=False)  # (L, K)
    singular_values: tuple[float, ...]  # every singular value of the stacked weights, descending
    relative_error: float  # ||W - W_K||_F / ||W||_F (0 for an all-zero group)

    @property
    def num_templates(self) -> int:
        return int(self.templates.shape[0])

    def weights(self) -> Tensor:
        """The fitted weights ``(L, *weight shape)``: ``w_i = sum_k c_ik P_k``."""
        flat = self.coefficients @ self.templates.reshape(self.num_templates, -1)
        return flat.reshape(len(self.coefficients), *self.templates.shape[1:])

    def kept_energy(self) -> float:
        """The fraction of the group's squared Frobenius norm the fit keeps, ``1 - error^2``."""
        return 1.0 - self.relative_error**2


def _stack(weights: Sequence[Tensor]) -> Tensor:
    if len(weights) < 1:
        raise InputError("a template fit needs at least one weight")
    shape = tuple(weights[0].shape)
    for w in weights:
        if tuple(w.shape) != shape:
            raise InputError(
                f"weights of one group must share a shape, got {shape} and {tuple(w.shape)}"
            )
    return torch.stack([w.detach().to(torch.float64).reshape(-1) for w in weights])


def singular_values(weights: Sequence[Tensor]) -> tuple[float, ...]:
    """The singular values of the stacked (flattened) weights, descending."""
    return tuple(float(s) for s in torch.linalg.svdvals(_stack(weights)))


def rank_for_energy(values: Sequence[float], keep: float) -> int:
    """The smallest K whose rank-K fit keeps at least ``keep`` of the squared norm (>= 1)."""
    if not 0.0 < keep <= 1.0:
        raise InputError(f"the kept fraction must lie in (0, 1], got {keep}")
    energy = [v * v for v in values]
    total = sum(energy)
    if total == 0.0:
        return 1
    running = 0.0
    for k, e in enumerate(energy, start=1):
        running += e
        # a relative slack of 1e-12 absorbs the rounding of the sum itself
        if running >= keep * total * (1.0 - 1e-12):
            return k
    return len(energy)


def fit_templates(weights: Sequence[Tensor], num_templates: int) -> TemplateFit:
    """The best rank-``num_templates`` fit of ``weights`` as templates and coefficients.

    Computed in float64 and returned in the first weight's dtype.

    Raises:
        InputError: weights of different shapes or not finite, or K not an int in
            ``1 .. min(L, D)``.
    """
    w = _stack(weights)
    n, d = w.shape
    if not bool(torch.isfinite(w).all()):
        raise InputError("the weights to fit hold NaN or infinite values")
    try:  # an int (numpy's too), not a bool or a float
        k = -1 if isinstance(num_templates, bool) else operator.index(num_templates)
    except TypeError:
        k = -1
    if not 1 <= k <= min(n, d):
        raise InputError(
            f"--templates must lie in 1..{min(n, d)} for a group of {n} layers, "
            f"got {num_templates!r}"
        )
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    u, vh = u[:, :k].clone(), vh[:k].clone()
    for j in range(k):
        total = float(u[:, j].sum())
        if abs(total) <= 1e-12 * max(1.0, float(u[:, j].abs().sum())):
            total = float(u[int(u[:, j].abs().argmax()), j])
        if total < 0:
            u[:, j].neg_()
            vh[j].neg_()
    scale = math.sqrt(float(w.square().sum()) / n) or 1.0
    energy = float(s.square().sum())
    rest = float(s[k:].square().sum())
    error = math.sqrt(rest / energy) if energy > 0 else 0.0
    dtype = weights[0].dtype
    shape = tuple(weights[0].shape)
    return TemplateFit(
        templates=(vh * scale).reshape(k, *shape).to(dtype),
        coefficients=(u * s[:k] / scale).to(dtype),
        singular_values=tuple(float(x) for x in s),
        relative_error=error,
    )
