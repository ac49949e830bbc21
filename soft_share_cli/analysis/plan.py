"""Plan a fold: one representative weight per cluster, a least-squares scale per layer.

For a cluster of layers with coefficient vectors ``a_i`` the representative direction ``u`` is
the best rank-one fit of the members, ``argmin_u sum_i min_s ||a_i - s u||^2``: the leading right
singular vector of the members' matrix (unit norm). Each member becomes ``s_i W(u)`` with the
least-squares scale ``s_i = <a_i, u> / <u, u>``, sign kept. When the members are exactly parallel
(LSM = 1) the fit has zero residual and the fold is lossless; otherwise the relative residual
``||a_i - s_i u|| / ||a_i||`` is reported per layer. With ``Metric.WEIGHT`` the same fit is done
in the inner product of the generated weights, ``<a, b>_G = a^T G b`` with the templates' Gram
matrix, so it minimises the error of the weights themselves.

Where a scale goes (``Absorb``), for the pre-activation blocks of an SWRN
(``relu(bn1) -> conv1 -> bn2 -> relu -> conv2 -> + residual``):

* conv1 feeds only bn2, so its scale folds into bn2's running statistics exactly (eval mode);
* conv2 feeds the residual sum; a positive scale folds into bn2's affine parameters exactly,
  because ``s * conv(relu(y)) = conv(relu(s * y))`` for ``s > 0``; a negative scale stays an
  explicit per-iteration gain;
* in networks ssc does not know, every scale stays an explicit gain.

The sign of ``u`` is free; it is chosen so that as few scales as possible need a gain.

**A fold never grows.** A cluster of one distinct coefficient storage (a layer alone, or layers
tied to one vector) whose scale would be an explicit gain keeps its own coefficients as its
direction, unnormalised, with scale 1 and nothing stored for it (``Absorb.UNIT``): exactly its
original weight, and one gain fewer. And where a plan would still store more than the checkpoint
does for its bank (a K = 1 bank whose clusters each need a gain per storage, say), the bank is
kept as it is (:func:`as_is_plan`: each distinct storage its own cluster, every layer ``UNIT``),
which costs exactly what the checkpoint stores, or less where its C weights are smaller.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soft_share_cli.analysis.banks import Bank
from soft_share_cli.analysis.clustering import Clusters


class Absorb(str, enum.Enum):
    """Where a layer's scale ends up in the folded network."""

    BN_STATS = "bn-stats"  # into the following BatchNorm's running statistics (conv1)
    BN_AFFINE = "bn-affine"  # into the preceding BatchNorm's weight and bias (conv2, s > 0)
    GAIN = "gain"  # an explicit per-iteration scalar (a parameter of the folded network)
    UNIT = "unit"  # scale 1: the direction is the layer's own coefficients; nothing is stored


@dataclass(frozen=True)
class LayerFold:
    """How one layer is served after folding."""

    name: str
    cluster: int  # index into BankFold.clusters
    scale: float  # s_i, sign kept
    residual: float  # ||a_i - s_i u|| / ||a_i|| in the fit's inner product (0 when exact)
    absorb: Absorb
    tied_to: int | None = None  # the layer whose coefficient storage (and gain) this one shares

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cluster": self.cluster,
            "scale": self.scale,
            "residual": self.residual,
            "absorb": self.absorb.value,
        }


@dataclass(frozen=True)
class BankFold:
    """The fold of one bank: its clusters, their directions and every layer's scale."""

    bank: str
    num_templates: int
    weight_numel: int  # O * I * k * k
    clusters: Clusters
    # (C, K): unit norm in the fit; a UNIT cluster's own (unnormalised) coefficients
    directions: np.ndarray = field(compare=False, repr=False)
    layers: tuple[LayerFold, ...] = ()
    # The plan would have stored more than the checkpoint: the bank is kept as it is instead.
    kept_as_is: bool = False

    @property
    def stores_weights(self) -> bool:
        """Store C distinct weights, or the templates plus C direction vectors: the smaller."""
        c, k, d = len(self.clusters), self.num_templates, self.weight_numel
        return c * d <= k * d + c * k

    @property
    def gains(self) -> int:
        """Explicit gains stored: layers tied to one coefficient storage share one."""
        return sum(
            layer.absorb is Absorb.GAIN
            and (layer.tied_to is None or self.layers[layer.tied_to].absorb is not Absorb.GAIN)
            for layer in self.layers
        )

    @property
    def parameters(self) -> int:
        """Numbers the folded network stores for this bank (weights or templates, and gains)."""
        c, k, d = len(self.clusters), self.num_templates, self.weight_numel
        if c == 0:
            return 0  # a bank no layer uses is dropped
        return (c * d if self.stores_weights else k * d + c * k) + self.gains

    @property
    def shared_parameters(self) -> int:
        """What the soft-shared checkpoint stores for this bank: K templates, and K numbers per
        coefficient storage (layers tied to one storage count once)."""
        k = self.num_templates
        storages = sum(layer.tied_to is None for layer in self.layers)
        return k * self.weight_numel + storages * k

    @property
    def unshared_parameters(self) -> int:
        """One full weight per layer (per use: tied layers each count), as in the plain CNN."""
        return len(self.layers) * self.weight_numel

    def to_dict(self) -> dict[str, Any]:
        return {
            "bank": self.bank,
            "clusters": [list(c) for c in self.clusters],
            "storage": "weights" if self.stores_weights else "templates",
            "parameters": self.parameters,
            "gains": self.gains,
            "max_residual": max((layer.residual for layer in self.layers), default=0.0),
            **({"kept_as_is": True} if self.kept_as_is else {}),
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _absorb_rule(state_dict: Mapping[str, Any] | None) -> Callable[[str, float], Absorb]:
    """Where the scale of layer ``name`` can go, given the network's other tensors."""

    def rule(name: str, scale: float) -> Absorb:
        if state_dict is None or scale == 0.0:
            return Absorb.GAIN  # unknown network, or nothing to divide a statistic by
        parent, _, role = name.rpartition(".")
        if f"{parent}.bn2.running_var" not in state_dict:
            return Absorb.GAIN
        if role == "conv1":
            return Absorb.BN_STATS
        if role == "conv2" and scale > 0:
            return Absorb.BN_AFFINE
        return Absorb.GAIN

    return rule


def _fit_direction(members: np.ndarray, metric_root: np.ndarray | None) -> np.ndarray:
    """Unit direction u minimising sum_i min_s ||a_i - s u||^2 (in the G-metric if given)."""
    # The direction does not depend on the points' overall scale: divided by their largest
    # magnitude, coefficients near the float64 limit (a damaged file) cannot overflow in the SVD.
    peak = float(np.max(np.abs(members))) if members.size else 0.0
    if math.isfinite(peak) and peak > 0:
        members = members / peak
    points = members if metric_root is None else members @ metric_root.T
    try:
        _, _, vt = np.linalg.svd(points, full_matrices=False)
    except np.linalg.LinAlgError:  # non-finite points: no direction fits them better than another
        vt = np.eye(points.shape[1])
    v = vt[0]
    if metric_root is None:
        return v / np.linalg.norm(v)
    # back from the whitened space: u = R^+ v, normalised so that u^T G u = 1
    u = np.linalg.lstsq(metric_root, v, rcond=None)[0]
    norm = np.sqrt(max(float((metric_root @ u) @ (metric_root @ u)), 1e-300))
    return u / norm


def _metric_root(gram: np.ndarray | None) -> np.ndarray | None:
    """R with R^T R = G (G symmetric PSD), so that <a, b>_G = (R a) . (R b)."""
    if gram is None:
        return None
    values, vectors = np.linalg.eigh(gram)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))).T


def plan_bank(
    bank: Bank,
    clusters: Clusters,
    *,
    gram: np.ndarray | None = None,
    state_dict: Mapping[str, Any] | None = None,
) -> BankFold:
    """Fold ``bank``'s layers into ``clusters``: directions, scales, residuals, absorption.

    Args:
        bank: the bank (its layers' coefficients are used).
        clusters: a partition of ``range(len(bank.layers))``.
        gram: the bank's Gram matrix to fit in weight space (``Metric.WEIGHT``); None fits the
            coefficient vectors (the paper's LSM space).
        state_dict: the network's tensors, to decide where scales can be absorbed exactly;
            None keeps every scale as an explicit gain (networks ssc does not know).
    """
    a = bank.coefficient_matrix()
    root = _metric_root(gram)
    rule = _absorb_rule(state_dict)
    inner = (lambda x, y: float(x @ y)) if gram is None else (lambda x, y: float(x @ gram @ y))
    directions = np.zeros((len(clusters), bank.num_templates))
    folds: dict[int, LayerFold] = {}
    tied = [layer.tied_to for layer in bank.layers]
    for c, members in enumerate(clusters):
        # Layers tied to one coefficient storage are one point of the fit, not several.
        distinct = [i for i in members if tied[i] is None or tied[i] not in members]
        u = _fit_direction(a[distinct], root)
        scales = np.array([inner(a[i], u) / inner(u, u) for i in members])
        names = [bank.layers[i].name for i in members]
        # The sign of u is free: take the one that leaves the fewest explicit gains.
        if sum(rule(n, -s) is Absorb.GAIN for n, s in zip(names, scales, strict=True)) < sum(
            rule(n, s) is Absorb.GAIN for n, s in zip(names, scales, strict=True)
        ):
            u, scales = -u, -scales
        absorbs = [rule(n, float(s)) for n, s in zip(names, scales, strict=True)]
        if len(distinct) == 1 and Absorb.GAIN in absorbs:
            # One vector alone: it is its own direction, and needs no gain (Absorb.UNIT).
            directions[c] = a[distinct[0]]
            for i, name in zip(members, names, strict=True):
                folds[i] = LayerFold(name, c, 1.0, 0.0, Absorb.UNIT, tied[i])
            continue
        directions[c] = u
        for i, name, s, absorb in zip(members, names, scales, absorbs, strict=True):
            residual_vec = a[i] - s * u
            norm = np.sqrt(max(inner(a[i], a[i]), 0.0))
            residual = np.sqrt(max(inner(residual_vec, residual_vec), 0.0)) / norm if norm else 0.0
            residual = residual if residual > 1e-12 else 0.0  # rounding noise of an exact fit
            folds[i] = LayerFold(name, c, float(s), float(residual), absorb, tied[i])
    layers = tuple(folds[i] for i in range(len(bank.layers)))
    plan = BankFold(bank.name, bank.num_templates, bank.weight_numel, clusters, directions, layers)
    if plan.layers and plan.parameters > plan.shared_parameters:
        return as_is_plan(bank)  # a fold never stores more than the checkpoint
    return plan


def as_is_plan(bank: Bank) -> BankFold:
    """``bank`` kept as it is: each distinct coefficient storage its own cluster, its own
    coefficients as the direction, every layer ``Absorb.UNIT``. It stores C weights or the K
    templates and C directions, whichever is smaller: never more than the checkpoint."""
    a = bank.coefficient_matrix()
    roots = [i if layer.tied_to is None else layer.tied_to for i, layer in enumerate(bank.layers)]
    order = sorted(set(roots))
    cluster_of = {root: c for c, root in enumerate(order)}
    clusters = tuple(tuple(i for i, r in enumerate(roots) if r == root) for root in order)
    directions = np.array([a[root] for root in order], dtype=np.float64).reshape(
        len(order), bank.num_templates
    )
    layers = tuple(
        LayerFold(layer.name, cluster_of[roots[i]], 1.0, 0.0, Absorb.UNIT, layer.tied_to)
        for i, layer in enumerate(bank.layers)
    )
    return BankFold(
        bank.name,
        bank.num_templates,
        bank.weight_numel,
        clusters,
        directions,
        layers,
        kept_as_is=True,
    )


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of the checkpoint, of its unshared equivalent, and after folding.

    * ``checkpoint_unique``: counted by storage, each tensor once however many keys name it
      (BatchNorm running statistics excluded), as ``ssc info`` counts ``unique_parameters``;
    * ``unshared_equivalent``: the plain network in which every conv or linear call has a weight
      of its own: each shared layer a full weight, a hard-tied layer once per use;
    * ``folded``: exactly what the folded file stores (distinct weights or templates and
      directions, explicit gains, everything else by storage).
    """

    checkpoint_unique: int
    unshared_equivalent: int
    folded: int

    @property
    def savings_vs_checkpoint_pct(self) -> float:
        return 100.0 * (1 - self.folded / self.checkpoint_unique) if self.checkpoint_unique else 0.0

    @property
    def savings_vs_unshared_pct(self) -> float:
        u = self.unshared_equivalent
        return 100.0 * (1 - self.folded / u) if u else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_unique": self.checkpoint_unique,
            "unshared_equivalent": self.unshared_equivalent,
            "folded": self.folded,
            "savings_vs_checkpoint_pct": round(self.savings_vs_checkpoint_pct, 4),
            "savings_vs_unshared_pct": round(self.savings_vs_unshared_pct, 4),
        }


def parameter_counts(
    checkpoint_unique: int, banks: tuple[BankFold, ...], repeated: int = 0
) -> ParameterCounts:
    """Counts for a network of ``checkpoint_unique`` parameters whose banks fold as planned.

    ``repeated`` is what the uses of hard-tied layers after the first add to the unshared
    equivalent (:func:`soft_share_cli.models.params.repeated_layer_parameters`).
    """
    rest = checkpoint_unique - sum(b.shared_parameters for b in banks)
    return ParameterCounts(
        checkpoint_unique=checkpoint_unique,
        unshared_equivalent=rest + sum(b.unshared_parameters for b in banks) + repeated,
        folded=rest + sum(b.parameters for b in banks),
    )
