"""Every kind of folded file ssc writes, behind one door.

A folded file is safetensors weights plus a JSON *program* in its header (container
``ssc-folded``); the program's ``format`` says which kind it is:

* ``ssc-swrn-loops``: a folded SWRN (:mod:`soft_share_cli.folding.swrn`);
* ``ssc-fcn-loops``: a looped FCN folded from an SFCN (:mod:`soft_share_cli.folding.looped`);
* ``ssc-traced-fold``: a user network folded from its trace (``ssc fold --model``,
  :mod:`soft_share_cli.folding.traced`, files in :mod:`soft_share_cli.folding.traced_program`);
* ``ssc-user-fold``: an older fold of a user network by module surgery
  (:mod:`soft_share_cli.folding.surgery`); still loads.

Folds of a user network rebuild only with the same ``module:callable`` given again (a file never
chooses code to run).

:func:`load_folded` loads any of them, :func:`folded_view` shows any of them as a soft-shared
state dict (what ``analyze`` and ``plot-similarity`` read, and what a re-fold folds), and
:func:`folded_name` names one without building it where it can. Adding a kind means adding one
:class:`FoldedKind` to :data:`KINDS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from soft_share_cli.errors import CheckpointError, InputError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from soft_share_cli.checkpoints.load import LoadedCheckpoint


@dataclass(frozen=True)
class FoldedView:
    """A folded network seen as soft-shared (its distinct weights are the templates)."""

    state_dict: dict[str, Tensor]
    stored: int  # parameters the folded network really has
    architecture: str
    refoldable: bool  # the view rebuilds as the network it was folded from (SWRN, SFCN)
    # (architecture, constructor arguments) the view loads into, where its shapes do not say
    source: tuple[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class FoldedKind:
    """One kind of folded file: how to load it, view it and name it."""

    program_format: str
    needs_model: bool
    load: Callable[[str | os.PathLike[str], Any], nn.Module]
    view: Callable[[LoadedCheckpoint, dict[str, Any]], FoldedView]


def _load_swrn(path: str | os.PathLike[str], model: str | None) -> nn.Module:
    from soft_share_cli.folding.swrn import load_folded as load

    return load(path)


def _swrn_view(network: nn.Module) -> dict[str, Tensor]:
    from soft_share_cli.folding.materialize import folded_state_dict_view

    return folded_state_dict_view(network)  # type: ignore[arg-type]


def _load_looped(path: str | os.PathLike[str], model: str | None) -> nn.Module:
    from soft_share_cli.folding.looped import load_looped

    return load_looped(path)


def _looped_view(network: nn.Module) -> dict[str, Tensor]:
    from soft_share_cli.folding.looped import looped_state_dict_view

    return looped_state_dict_view(network)  # type: ignore[arg-type]


def _looped_source(network: nn.Module, view: dict[str, Tensor]) -> tuple[str, dict[str, Any]]:
    from soft_share_cli.folding.looped import looped_source

    return looped_source(network, view)  # type: ignore[arg-type]


def _rebuilt_view(
    load: Callable[[str | os.PathLike[str], Any], nn.Module],
    view_of: Callable[[nn.Module], dict[str, Tensor]],
    source_of: Callable[[nn.Module, dict[str, Tensor]], tuple[str, dict[str, Any]]] | None = None,
) -> Callable[[LoadedCheckpoint, dict[str, Any]], FoldedView]:
    """The view of a kind that rebuilds without user code: load it, view it, count it."""

    def view(ckpt: LoadedCheckpoint, program: dict[str, Any]) -> FoldedView:
        from soft_share_cli.models.params import count_parameters

        network = load(ckpt.path, None)
        name = f"folded {network.describe()}"  # type: ignore[operator]
        state = view_of(network)
        source = None if source_of is None else source_of(network, state)
        return FoldedView(state, count_parameters(network), name, True, source)

    return view


def _load_user(path: str | os.PathLike[str], model: Any) -> nn.Module:
    from soft_share_cli.folding.surgery import load_folded_user_model

    if model is None:
        raise InputError(f"{path} folds your own network; pass model='module:callable'")
    return load_folded_user_model(path, model)


def _user_view(
    view: Callable[[dict[str, Any], dict[str, Tensor]], dict[str, Tensor]],
) -> Callable[[LoadedCheckpoint, dict[str, Any]], FoldedView]:
    """The analysis view of a fold of the user's own network (not refoldable: fold the original)."""

    def viewed(ckpt: LoadedCheckpoint, program: dict[str, Any]) -> FoldedView:
        from soft_share_cli.models.params import count_state_dict_parameters

        name = f"folded user network {program.get('model', '')}".strip()
        return FoldedView(
            view(program, ckpt.state_dict),
            count_state_dict_parameters(ckpt.state_dict), name, refoldable=False,
        )  # fmt: skip

    return viewed


def _view_user(ckpt: LoadedCheckpoint, program: dict[str, Any]) -> FoldedView:
    from soft_share_cli.folding.surgery import folded_user_view

    return _user_view(folded_user_view)(ckpt, program)


def _load_traced(path: str | os.PathLike[str], model: Any) -> nn.Module:
    from soft_share_cli.folding.traced_sharing import load_traced

    if model is None:
        raise InputError(f"{path} folds your own network; pass model='module:callable'")
    return load_traced(path, model)


def traced_view(program: dict[str, Any], state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A traced fold seen as soft-shared, for analysis (no factory needed): each bank of C
    weights (or K templates) is ``<bank>.templates`` and each layer's coefficients its gain times
    its cluster's direction (one-hot over C weights), as ``<layer>.coefficients`` with
    ``<layer>.bank.templates`` naming its bank; the other tensors keep their names."""
    import torch

    from soft_share_cli.folding.traced_holders import key_prefix, read_holder
    from soft_share_cli.folding.traced_program import read_program
    from soft_share_cli.folding.user_program import with_aliases
    from soft_share_cli.models.params import storage_id

    full = with_aliases(program, state_dict)
    _, layers, _ = read_program(program, full)
    view: dict[str, Tensor] = {}
    hidden: set[str] = set()
    made: dict[tuple[Any, ...], Tensor] = {}
    named = [(b["module"], b["name"]) for b in program["banks"]]  # checked by read_program
    counts = {n: sum(m == n for _, m in named) for _, n in named}
    bank_name = {attr: name if counts[name] == 1 else attr for attr, name in named}
    own = {b["module"] for b in program["banks"] if b.get("kind") == "own-weight"}
    held = {b["module"]: read_holder(b) for b in program["banks"]}
    for spec in layers:
        prefix = key_prefix(held[spec.bank], spec.bank)
        mine = [k for k in full if f".{spec.bank}." in f".{k}"]  # on each path of its holder
        stack = full.get(prefix + "weights")
        if spec.bank in own and stack is not None and len(stack) == 1:
            # a layer given a fixed weight of its own (cut from a dropped store): a plain layer
            hidden.update(mine)
            for path in (spec.path, *spec.also):
                view[f"{path}.weight"] = stack[0]
            continue
        if stack is not None:
            direction = torch.zeros(stack.shape[0], dtype=stack.dtype)
            direction[spec.cluster] = 1
        else:
            stack = full[prefix + "templates"]
            direction = full[prefix + "directions"][spec.cluster].to(stack.dtype)
        hidden.update(mine)
        gain_key = f"{spec.gain_of or spec.path}.gain"
        gain = full.get(gain_key) if spec.gain is not None else None
        if gain is not None:
            hidden.add(f"{spec.path}.gain")
        tie = (storage_id(gain) if gain is not None else None, spec.bank, spec.cluster)
        coefficients = direction * (1.0 if gain is None else gain.reshape(()).to(stack.dtype))
        shape = (-1,) + (1,) * (stack.dim() - 1)
        view[f"{bank_name[spec.bank]}.templates"] = stack
        for path in (spec.path, *spec.also):  # a reused module: one layer per place
            view[f"{path}.coefficients"] = made.setdefault(tie, coefficients.reshape(shape))
            view[f"{path}.bank.templates"] = stack
    view.update({k: v for k, v in full.items() if k not in hidden})
    return view


KINDS: dict[str, FoldedKind] = {
    kind.program_format: kind
    for kind in (
        FoldedKind("ssc-swrn-loops", False, _load_swrn, _rebuilt_view(_load_swrn, _swrn_view)),
        FoldedKind(
            "ssc-fcn-loops",
            False,
            _load_looped,
            _rebuilt_view(_load_looped, _looped_view, _looped_source),
        ),
        FoldedKind("ssc-user-fold", True, _load_user, _view_user),
        FoldedKind("ssc-traced-fold", True, _load_traced, _user_view(traced_view)),
    )
}


def program_of(ckpt: LoadedCheckpoint) -> dict[str, Any] | None:
    """The loop program of a folded file, ``None`` for any other checkpoint."""
    if ckpt.container != "ssc-folded":
        return None
    program = ckpt.metadata.get("program")
    if not isinstance(program, dict):
        raise CheckpointError(f"{ckpt.path}: a folded file without a loop program")
    return program


def kind_of(ckpt: LoadedCheckpoint) -> tuple[FoldedKind, dict[str, Any]] | None:
    """The kind of a folded file and its program; ``None`` for a checkpoint that is not folded.

    A folded file whose program names no kind ssc knows is refused (exit 2).
    """
    program = program_of(ckpt)
    if program is None:
        return None
    # Older SWRN folds may not tag their program; the folded container then means SWRN loops.
    kind = KINDS.get(program.get("format", "ssc-swrn-loops"))
    if kind is None:
        raise CheckpointError(
            f"{ckpt.path}: a folded file of an unknown kind ({program.get('format')!r})"
        )
    return kind, program


def load_folded(path: str | os.PathLike[str], model: Any = None) -> nn.Module:
    """Load any folded file ssc writes, in eval mode.

    Args:
        path: a file written by ``ssc fold`` (or the library's savers).
        model: for folds of your own network, the ``module:callable`` (or ``path.py:callable``)
            that builds it, as given to ``ssc fold --model``, or that callable itself; ignored
            for SWRN and FCN folds.

    Raises:
        CheckpointError: the file is not a folded file, or is malformed.
        InputError: a fold of a user network without ``model``.
    """
    from soft_share_cli.checkpoints.load import load_checkpoint

    ckpt = load_checkpoint(path)
    found = kind_of(ckpt)
    if found is None:
        raise CheckpointError(f"{path}: not a folded file (make one with `ssc fold`)")
    return found[0].load(path, model).eval()


def folded_view(ckpt: LoadedCheckpoint) -> FoldedView | None:
    """A folded checkpoint seen as soft-shared; ``None`` when ``ckpt`` is not folded."""
    found = kind_of(ckpt)
    return None if found is None else found[0].view(ckpt, found[1])


def folded_name(ckpt: LoadedCheckpoint) -> str | None:
    """What ``ssc info`` calls a folded file; ``None`` when ``ckpt`` is not folded."""
    found = kind_of(ckpt)
    if found is None:
        return None
    kind, program = found
    if kind.needs_model:
        return f"folded user network (rebuild with --model {program.get('model', '?')})"
    return f"folded {kind.load(ckpt.path, None).describe()}"  # type: ignore[operator]
