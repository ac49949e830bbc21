"""What ``ssc fold`` reports: the fold, its checks on data (scores, or output fidelity where a
network's outputs are not class scores) and the ``--threshold auto`` trade-off."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from soft_share_cli.analysis.analyze import SCHEMA_VERSION, AnalysisOptions
from soft_share_cli.analysis.plan import ParameterCounts
from soft_share_cli.evaluation.classification import EvalResult
from soft_share_cli.evaluation.fidelity import Fidelity
from soft_share_cli.evaluation.tasks import TaskEvalResult
from soft_share_cli.folding.verify import Probe

Scores = EvalResult | TaskEvalResult  # what an evaluation of either kind of data gives


@dataclass(frozen=True)
class DataCheck:
    """Both networks on the same samples."""

    spec: str
    original: Scores
    folded: Scores  # before any BN recalibration
    agreement: float  # percent of samples where both predict the same class
    recalibrated: Scores | None = None
    recalibrated_agreement: float | None = None

    @property
    def final(self) -> Scores:
        """The network that is written: recalibrated when asked for."""
        return self.recalibrated or self.folded

    @property
    def delta_top1(self) -> float:
        """Folded minus original, in points (negative: the fold costs accuracy)."""
        return self.final.headline - self.original.headline

    def to_dict(self) -> dict[str, Any]:
        def acc(r: Scores | None) -> dict[str, Any] | None:
            return None if r is None else r.summary()

        return {
            "spec": self.spec,
            "samples": self.original.samples,
            "original": acc(self.original),
            "folded": acc(self.folded),
            "agreement": self.agreement,
            "recalibrated": acc(self.recalibrated),
            "recalibrated_agreement": self.recalibrated_agreement,
            "delta_top1": self.delta_top1,
        }


@dataclass(frozen=True)
class FidelityCheck:
    """Both networks on the same samples, where outputs are not class scores: the folded
    network's outputs against the original's (:mod:`soft_share_cli.evaluation.fidelity`)."""

    spec: str
    folded: Fidelity  # before any BN recalibration
    recalibrated: Fidelity | None = None

    def to_dict(self) -> dict[str, Any]:
        def scores(f: Fidelity | None) -> dict[str, Any] | None:
            return None if f is None else f.scores()

        return {
            "spec": self.spec,
            "samples": self.folded.samples,
            "folded": scores(self.folded),
            "recalibrated": scores(self.recalibrated),
        }


@dataclass(frozen=True)
class Candidate:
    """One row of the ``--threshold auto`` trade-off table."""

    threshold: float
    distinct_weights: int
    parameters: int
    top1: float
    delta_top1: float
    within_budget: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FoldReport:
    """What ``ssc fold`` did, measured."""

    checkpoint: str
    output: str | None  # None when a gate failed and nothing was written
    materialized: str | None
    architecture: str
    options: AnalysisOptions
    params: ParameterCounts
    banks: tuple[dict[str, Any], ...]
    loops: tuple[str, ...]
    probe: Probe
    data: DataCheck | None
    candidates: tuple[Candidate, ...] = ()
    fidelity: FidelityCheck | None = None  # --data on a network whose outputs are not scores
    file_bytes: dict[str, int] = field(default_factory=dict)
    failures: tuple[str, ...] = ()  # gates that did not pass, in words
    seconds: float = 0.0  # wall time of the whole fold

    def to_dict(self) -> dict[str, Any]:
        """JSON form; wall time sits under ``timing``, the rest repeats exactly run to run."""
        return {
            "schema_version": SCHEMA_VERSION,
            "checkpoint": self.checkpoint,
            "output": self.output,
            "materialized": self.materialized,
            "architecture": self.architecture,
            **self.options.to_dict(),
            "params": self.params.to_dict(),
            "banks": list(self.banks),
            "loops": list(self.loops),
            "probe": self.probe.to_dict(),
            "data": None if self.data is None else self.data.to_dict(),
            "fidelity": None if self.fidelity is None else self.fidelity.to_dict(),
            "auto": [c.to_dict() for c in self.candidates],
            "file_bytes": self.file_bytes,
            "passed": not self.failures,
            "failures": list(self.failures),
            "timing": {"seconds": self.seconds},
        }
