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
from soft_share_cli.analysis.plan import BankFold, ParameterCounts
from soft_share_cli.checkpoints.load import LoadedCheckpoint
from soft_share_cli.errors import InputError
from soft_share_cli.models.params import count_state_dict_parameters


class NothingToFold(InputError):
    """No group of the network folds to fewer parameters (exit 2, nothing written)."""


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

    def __init__(
        self,
        ckpt: LoadedCheckpoint,
        model_spec: str | None,
        options: AnalysisOptions | None = None,  # only its --bank-key, --coefficient-key
    ):
        self.stored: int | None = None  # a folded input: the parameters it already stores
        self.ckpt = ckpt = self._refold_view(ckpt, model_spec)
        self.model_spec = model_spec
        if model_spec is not None:
            from soft_share_cli.models.user import build_user_model

            patterns = AnalysisOptions() if options is None else options
            if patterns.bank_key is not None or patterns.coefficient_key is not None:
                raise InputError(
                    "--bank-key and --coefficient-key name tensors of a state dict; with --model "
                    "the network is traced and no naming is used: drop them"
                )
            self.model = build_user_model(
                model_spec, ckpt.state_dict, ckpt.metadata, str(ckpt.path)
            )
            self._traced_probe()
            self.architecture = f"user network {model_spec}"
        else:
            from soft_share_cli.errors import ArchitectureError
            from soft_share_cli.models.builder import rebuild_model
            from soft_share_cli.models.names import SOFT_SHARED
            from soft_share_cli.models.user import refuse_without_model

            refuse_without_model(ckpt, ckpt.path, "fold")
            try:
                self.model, spec = rebuild_model(ckpt)
            except ArchitectureError as exc:
                # Not a network ssc builds itself: it can still be folded with the user's code.
                raise ArchitectureError(
                    f"{ckpt.path}: {exc}; to fold your own network pass --model MODULE:CALLABLE"
                ) from None
            if spec.arch == "rfcn":
                raise InputError(
                    f"{ckpt.path}: nothing to fold: {spec.describe()} is already one block in "
                    "a real loop; run it longer with `ssc eval --iterations N`"
                )
            if spec.arch not in SOFT_SHARED:
                raise InputError(
                    f"{ckpt.path}: nothing to fold: {spec.describe()} has no template banks "
                    f"({describe_unshared(ckpt.state_dict)}); for your own architecture pass "
                    "--model module:callable"
                )
            self.architecture = spec.describe()
        self.model.eval()

    def _traced_probe(self) -> None:
        """With --model: the probe the network is traced on (seeded), and nothing-to-fold."""
        import torch

        from soft_share_cli.analysis.trace import probe_shape_for
        from soft_share_cli.analysis.trace_groups import HARD_TIE, shared_groups

        shape = probe_shape_for(self.model, self.ckpt.metadata)
        generator = torch.Generator().manual_seed(0)
        self.probe = torch.randn(2, *shape, generator=generator)
        device = next(self.model.parameters(), self.probe).device
        self.probe = self.probe.to(device)
        from soft_share_cli.analysis.trace import trace_network

        trace = trace_network(self.model, self.probe)
        groups = shared_groups(trace)
        self._refuse_non_finite(trace, groups)
        if not any(g.kind != HARD_TIE for g in groups):
            ties = sum(g.kind == HARD_TIE for g in groups)
            seen = f"{ties} hard tie(s), already one tensor each" if ties else "no shared weights"
            raise NothingToFold(
                f"{self.ckpt.path}: nothing to fold: the traced network has {seen} (its state "
                f"dict: {describe_unshared(self.ckpt.state_dict)}); nothing was written"
            )

    def _refuse_non_finite(self, trace: Any, groups: Any) -> None:
        """A weight to fold with NaN or infinite values has no direction: refuse (exit 2)."""
        import torch

        from soft_share_cli.analysis.trace_groups import call_names

        names = call_names(trace)
        params = dict(self.model.named_parameters(remove_duplicate=False))
        for group in groups:
            for i in group.calls:
                call = trace.calls[i]
                if bool(torch.isfinite(call.weight).all()):
                    continue
                own = [k for k in call.sources if k not in group.shared and k in params]
                bad = [k for k in own if not bool(torch.isfinite(params[k]).all())]
                what = f"nan or infinite coefficients ({', '.join(bad)})" if bad else (
                    "a nan or infinite weight"
                )  # fmt: skip
                raise InputError(f"{self.ckpt.path}: cannot fold: {names[i]} has {what}")

    def probe_input(self, samples: int, seed: int) -> Any:
        """Seeded random inputs of the traced probe's shape (--model), else None."""
        if self.model_spec is None:
            return None
        import torch

        generator = torch.Generator().manual_seed(seed)
        shape = tuple(self.probe.shape[1:])
        return torch.randn(samples, *shape, generator=generator).to(self.probe.device)

    @property
    def sharing(self) -> Any:
        """The sharing record of a user network converted by ``ssc share`` (None: none)."""
        from soft_share_cli.sharing.convert import RECORD_KEY

        return self.ckpt.metadata.get(RECORD_KEY) if self.model_spec is not None else None

    def traced(self, options: AnalysisOptions) -> Any:
        """The traced analysis of the --model network at ``options``."""
        from soft_share_cli.analysis.traced import analyze_traced

        return analyze_traced(self.model, self.probe, options, with_graph=False)

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
        if self.model_spec is not None:
            return self._fold_traced(options)
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
        from soft_share_cli.folding.swrn import fold_swrn
        from soft_share_cli.models.wrn import SWRN

        assert isinstance(self.model, SWRN)
        plans = {r.bank.name: r.fold for r in results}
        return Fold(options, fold_swrn(self.model, plans), plans, counts, loops, None)

    def _fold_traced(self, options: AnalysisOptions) -> Fold:
        """--model: discovery is the trace; the one traced engine folds every kind."""
        from soft_share_cli.folding.traced import fold_traced

        analysis = self.traced(options)
        folded = fold_traced(self.model, analysis, self.probe, self.sharing)
        if not folded.plans:
            why = "; ".join(f"{name}: {reason}" for name, reason in folded.kept) or "no group"
            raise NothingToFold(f"{self.ckpt.path}: nothing to fold ({why}); nothing was written")
        loops = tuple(
            f"{r.bank.name}: {loop.description}"
            for r in analysis.results
            if r.bank.name in folded.plans or r.bank.kind == "hard-tie"
            for loop in r.loops
        )
        used = {r.similarity.metric for r in analysis.results if r.bank.name in folded.plans}
        if len(used) == 1:  # groups that are no bank are compared by weight: say what was used
            options = replace(options, metric=used.pop())
        return Fold(options, folded.network, folded.plans, analysis.counts, loops, folded.program)

    def write(self, fold: Fold, output: str | Path, report: dict[str, Any]) -> None:
        """Write ``fold`` in its kind's format (atomically), ``report`` in its header."""
        if self.is_sfcn:
            from soft_share_cli.folding.looped import save_looped

            save_looped(fold.network, output, report=report)  # type: ignore[arg-type]
        elif fold.program is None:
            from soft_share_cli.folding.swrn import save_folded

            save_folded(fold.network, output, report=report)  # type: ignore[arg-type]
        else:
            from soft_share_cli.folding.traced_program import save_traced

            assert self.model_spec is not None
            save_traced(fold.network, output, self.model_spec, fold.program, report)

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
