"""What ``ssc fold`` folds: the original network of a checkpoint (an SWRN, an SFCN, a user
network via ``--model``, or a folded file seen as its soft-shared view), one fold of it at a
threshold, and how each kind of fold is written."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from soft_share_cli.analysis.analyze import (
    AnalysisOptions,
    analyze_state_dict,
    describe_unshared,
)
from soft_share_cli.analysis.banks import find_banks
from soft_share_cli.analysis.plan import BankFold, ParameterCounts, plan_bank
from soft_share_cli.checkpoints.load import LoadedCheckpoint
from soft_share_cli.errors import InputError
from soft_share_cli.models.params import count_state_dict_parameters


@dataclass
class Fold:
    """One fold at one threshold (internal)."""

    options: AnalysisOptions
    network: nn.Module
    plans: dict[str, BankFold]
    counts: ParameterCounts
    loops: tuple[str, ...]
    program: dict[str, Any] | None  # user networks: the surgery program


class FoldSource:
    """The original network and how to fold it (SWRN, or a user network via --model)."""

    def __init__(self, ckpt: LoadedCheckpoint, model_spec: str | None):
        self.stored: int | None = None  # a folded input: the parameters it already stores
        self.ckpt = ckpt = self._refold_view(ckpt, model_spec)
        self.model_spec = model_spec
        if model_spec is not None:
            from soft_share_cli.models.user import build_user_model

            if not any(bank.layers for bank in find_banks(ckpt.state_dict).banks):
                # A fold of it would only untie what the network shares: refuse, write nothing.
                raise InputError(
                    f"{ckpt.path}: nothing to fold: no template bank with layers "
                    f"({describe_unshared(ckpt.state_dict)}); nothing was written"
                )
            self.model = build_user_model(model_spec, ckpt.state_dict)
            self.architecture = f"user network {model_spec}"
        else:
            from soft_share_cli.models.builder import rebuild_model
            from soft_share_cli.models.names import SOFT_SHARED

            self.model, spec = rebuild_model(ckpt)
            if spec.arch not in SOFT_SHARED:
                raise InputError(
                    f"{ckpt.path}: nothing to fold: {spec.describe()} has no template banks "
                    f"({describe_unshared(ckpt.state_dict)}); for your own architecture pass "
                    "--model module:callable"
                )
            self.architecture = spec.describe()
        self.model.eval()

    def _refold_view(self, ckpt: LoadedCheckpoint, model_spec: str | None) -> LoadedCheckpoint:
        """A folded input is folded again as its soft-shared view (an SWRN or SFCN again)."""
        import dataclasses

        from soft_share_cli.folding.kinds import folded_view

        view = folded_view(ckpt)
        if view is None:
            return ckpt
        if not view.refoldable:
            raise InputError(
                f"{ckpt.path}: a fold of your own network cannot be folded again; fold the "
                "original checkpoint with a lower --threshold instead"
            )
        if model_spec is not None:
            raise InputError(
                f"{ckpt.path} is a {view.architecture}, which ssc rebuilds itself: --model "
                "applies to checkpoints of your own network only"
            )
        self.stored = view.stored
        arch, kwargs = view.source if view.source is not None else (None, None)
        return dataclasses.replace(
            ckpt, state_dict=view.state_dict, container="state_dict", arch=arch, arch_kwargs=kwargs
        )

    def nothing_saved(self, fold: Fold) -> str | None:
        """Why a re-fold is pointless (it stores no fewer parameters than its input), if it is."""
        if self.stored is None or fold.counts.folded < self.stored:
            return None
        return (
            f"{self.ckpt.path}: already folded at this threshold: a re-fold would store "
            f"{fold.counts.folded:,} parameters, the file stores {self.stored:,}; nothing was "
            "written (a lower --threshold merges more; distinct weights that a bank stores as "
            "such merge only under --metric weight)"
        )

    @property
    def is_sfcn(self) -> bool:
        """An SFCN folds into a looped FCN (:mod:`soft_share_cli.folding.looped`), not an SWRN."""
        from soft_share_cli.models.recurrent import SFCN

        return self.model_spec is None and isinstance(self.model, SFCN)

    def fold(self, options: AnalysisOptions) -> Fold:
        """Fold at ``options``; ``counts.folded`` is what the network to be written stores."""
        fold = self._fold(options)
        stored = count_state_dict_parameters(fold.network.state_dict())  # by storage, as a file
        fold.counts = replace(fold.counts, folded=stored)
        return fold

    def _fold(self, options: AnalysisOptions) -> Fold:
        state = self.ckpt.state_dict
        results, issues, counts, _ = analyze_state_dict(
            state, options, with_graph=False, stored_parameters=self.stored
        )
        # The analysis leaves such layers out (or keeps undefined weights); a fold cannot.
        blocking = [
            i
            for i in issues
            if i.kind in ("non-finite", "k-mismatch")
            or (i.kind == "ambiguous-bank" and i.key.endswith("coefficients"))
        ]
        if blocking:
            more = f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else ""
            raise InputError(f"{self.ckpt.path}: cannot fold: {blocking[0].message}{more}")
        loops = tuple(f"{r.bank.name}: {loop.description}" for r in results for loop in r.loops)
        if self.is_sfcn:
            from soft_share_cli.folding.looped import fold_sfcn

            plans = {r.bank.name: r.fold for r in results}
            assert len(plans) == 1  # an SFCN has exactly one bank
            looped = fold_sfcn(self.model, next(iter(plans.values())))  # type: ignore[arg-type]
            return Fold(options, looped, plans, counts, loops, None)
        if self.model_spec is None:
            from soft_share_cli.folding.swrn import fold_swrn
            from soft_share_cli.models.wrn import SWRN

            assert isinstance(self.model, SWRN)
            plans = {r.bank.name: r.fold for r in results}
            return Fold(options, fold_swrn(self.model, plans), plans, counts, loops, None)
        from soft_share_cli.analysis.plan import parameter_counts
        from soft_share_cli.analysis.similarity import Metric, gram_matrix
        from soft_share_cli.folding.surgery import fold_user_model, user_fold_program
        from soft_share_cli.models.params import repeated_layer_parameters

        # Unknown network: no BatchNorm can be assumed, every scale stays an explicit gain.
        plans = {
            r.bank.name: plan_bank(
                r.bank,
                r.clusters,
                gram=gram_matrix(r.bank.templates) if options.metric == Metric.WEIGHT else None,
                state_dict=None,
            )
            for r in results
        }
        banks = [r.bank for r in results]
        counts = parameter_counts(
            count_state_dict_parameters(state),
            tuple(plans.values()),
            repeated_layer_parameters(state),
        )
        network = fold_user_model(self.model, plans, banks)
        return Fold(options, network, plans, counts, loops, user_fold_program(plans, banks))

    def write(self, fold: Fold, output: str | Path, report: dict[str, Any]) -> None:
        """Write ``fold`` in its kind's format (atomically), ``report`` in its header."""
        if self.is_sfcn:
            from soft_share_cli.folding.looped import save_looped

            save_looped(fold.network, output, report=report)  # type: ignore[arg-type]
        elif fold.program is None:
            from soft_share_cli.folding.swrn import save_folded

            save_folded(fold.network, output, report=report)  # type: ignore[arg-type]
        else:
            from soft_share_cli.folding.surgery import save_folded_user_model

            assert self.model_spec is not None
            save_folded_user_model(fold.network, output, self.model_spec, fold.program, report)

    def write_materialized(self, fold: Fold, path: str | Path, report: dict[str, Any]) -> None:
        """Write ``fold`` as a plain WRN checkpoint (every loop unrolled into convs)."""
        from soft_share_cli.checkpoints.load import save_checkpoint
        from soft_share_cli.folding.materialize import materialize

        plain = materialize(fold.network)  # type: ignore[arg-type]
        kwargs = {
            "depth": plain.depth,
            "width": plain.width,
            "num_classes": plain.num_classes,
            "in_channels": plain.in_channels,
        }
        meta = {"materialized_from": report["source"], "fold": report}
        meta.update({k: v for k, v in self.ckpt.metadata.items() if k in ("data", "preprocessing")})
        save_checkpoint(
            path, arch="wrn", arch_kwargs=kwargs, state_dict=plain.state_dict(), metadata=meta
        )
