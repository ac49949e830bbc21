"""Fold a user's own network built from template banks ("bring your own architecture").

ssc cannot know how an arbitrary network wires its layers, so it does not rewrite the forward
pass: it rebuilds the network with the user's factory and swaps modules. Every shared conv
(``SConv2d``, or any module with ``bank``, ``coefficients``, ``stride`` and ``padding`` that
computes ``conv2d(x, bank(coefficients))``) of a planned bank becomes a :class:`TiedConv2d`
drawing cluster ``c``'s weight from one :class:`~soft_share_cli.folding.bank.FoldedBank` per
bank, times a gain of its own (layers that share one coefficient storage share one gain, and a
layer reused in several places stays one module: a fold keeps every tie and never clones one).
Every scale stays an explicit gain: in an unknown network nothing says which BatchNorm could
absorb it, so plans must be made with ``plan_bank(..., state_dict=None)``. A layer whose
cluster is its own coefficient vector (``Absorb.UNIT``) has no gain; the program marks it
(``"gain": false``; files without the mark have a gain on every layer).

The folded network is saved as a state dict plus the JSON program of :func:`user_fold_program`;
:func:`rebuild_folded_user_model` replays the surgery on a fresh ``factory()`` network without
needing the original coefficients.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from soft_share_cli.analysis.banks import Bank
from soft_share_cli.analysis.plan import Absorb, BankFold
from soft_share_cli.errors import CheckpointError, InputError
from soft_share_cli.folding.bank import FoldedBank
from soft_share_cli.folding.tied import TiedConv2d
from soft_share_cli.folding.user_program import (
    PROGRAM_FORMAT,
    PROGRAM_VERSION,
    Skeleton,
    skeletons_from_program,
    stored_rows,
    untied_keys,
    with_aliases,
)
from soft_share_cli.models.builder import load_state_dict_checked
from soft_share_cli.models.params import storage_id
from soft_share_cli.models.user import load_factory

# --- surgery ---------------------------------------------------------------------------------


def _skeleton(plan: BankFold, bank: Bank) -> Skeleton:
    absorbed = [x.name for x in plan.layers if x.absorb not in (Absorb.GAIN, Absorb.UNIT)]
    if absorbed:
        raise InputError(
            f"the plan of bank {plan.bank} absorbs scales into BatchNorm ({', '.join(absorbed)}); "
            "plan user networks with plan_bank(..., state_dict=None)"
        )
    modules = tuple(key.rpartition(".")[0] for key in bank.keys)
    layers = tuple((lay.name, lay.cluster, lay.scale) for lay in plan.layers)
    return Skeleton(plan.bank, plan.stores_weights, len(plan.clusters), modules, layers)


def _get(model: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise InputError(f"the network has no module {path!r} ({what})") from None


def _bank_module(model: nn.Module, sk: Skeleton) -> tuple[nn.Module, Tensor]:
    if sk.layers:
        found = getattr(_get(model, sk.layers[0][0], f"a layer of bank {sk.name}"), "bank", None)
    else:
        found = next((_get(model, p, f"bank {sk.name}") for p in sk.modules if p), None)
    templates = getattr(found, "templates", None)
    if (
        not isinstance(found, nn.Module)
        or not isinstance(templates, Tensor)
        or templates.dim() != 5
    ):
        raise InputError(f"cannot find the template bank module of bank {sk.name} in the network")
    return found, templates


def _ungained(plans: Mapping[str, BankFold]) -> set[str]:
    """The layers of ``plans`` that store no gain (``Absorb.UNIT``)."""
    return {x.name for p in plans.values() for x in p.layers if x.absorb is Absorb.UNIT}


def _ungained_in_program(program: Mapping[str, Any]) -> set[str]:
    """The layers a stored program marks ``"gain": false`` (checked: a flag, if present)."""
    found = set()
    for bank in program["banks"]:  # its shape was checked by skeletons_from_program
        for layer in bank["layers"]:
            flag = layer.get("gain", True)
            if type(flag) is not bool:
                raise CheckpointError(f"malformed user-fold program: gain flag {flag!r}")
            if not flag:
                found.add(layer["name"])
    return found


def _operate(
    model: nn.Module,
    skeletons: Sequence[Skeleton],
    make_shared: Callable[[Skeleton, Tensor], FoldedBank],
    ungained: set[str] | frozenset[str] = frozenset(),
) -> nn.Module:
    """Replace the planned layers of ``model`` in place and drop the banks they used
    (the layers named in ``ungained`` get no gain)."""
    doomed: dict[int, str] = {}  # id(TemplateBank module) -> bank name
    # A layer reused in several places stays one module; layers that share one coefficient
    # storage share one gain: a fold keeps every tie of the original (never clones one).
    replaced: dict[int, TiedConv2d] = {}  # id(original layer) -> its tied conv
    gains: dict[int, nn.Parameter] = {}  # id(coefficient parameter) -> the shared gain
    for sk in skeletons:
        bank_module, templates = _bank_module(model, sk)
        doomed[id(bank_module)] = sk.name
        if not sk.layers:
            continue  # a bank no layer uses is dropped, as parameter_counts assumes
        if hasattr(model, sk.attribute):
            raise InputError(f"the network already has an attribute {sk.attribute!r}")
        shared = make_shared(sk, templates)
        model.add_module(sk.attribute, shared)
        for path, cluster, scale in sk.layers:
            layer = _get(model, path, f"a layer of bank {sk.name}")
            if getattr(layer, "bank", None) is not bank_module or not hasattr(
                layer, "coefficients"
            ):
                raise InputError(
                    f"{path} is a {type(layer).__name__} that does not draw from "
                    f"bank {sk.name}'s module; cannot fold it"
                )
            tied = replaced.get(id(layer)) or TiedConv2d(
                shared, cluster, scale, layer, gained=path not in ungained
            )
            if tied.gain is not None:
                tied.gain = gains.setdefault(id(layer.coefficients), tied.gain)
            replaced[id(layer)] = tied
            parent_path, _, child = path.rpartition(".")
            if not child:
                raise InputError("the network itself is a shared layer; nothing to replace it in")
            # _modules works for plain modules and containers (Sequential, ModuleList) alike.
            _get(model, parent_path, "a layer's parent")._modules[child] = tied
    for where, module in model.named_modules():
        bank_id = id(getattr(module, "bank", None))
        if bank_id in doomed and hasattr(module, "coefficients"):
            raise InputError(
                f"{where} draws from bank {doomed[bank_id]} but the fold plan does not cover it"
            )
    # A forward that uses a folded bank module directly is not supported: the bank is gone.
    for module in list(model.modules()):
        for attr, sub in list(module._modules.items()):
            if sub is not None and id(sub) in doomed:
                del module._modules[attr]
                setattr(module, attr, None)
    return model


def fold_user_model(
    model: nn.Module, plans: Mapping[str, BankFold], banks: Sequence[Bank]
) -> nn.Module:
    """A deep copy of ``model`` with every layer of a planned bank tied to its cluster's weight.

    ``plans`` (keyed by bank name) must come from ``plan_bank(..., state_dict=None)``: every
    layer keeps an explicit gain, initialised to its least-squares scale, except those whose
    cluster is their own coefficients (``Absorb.UNIT``), which need none. The result's output
    equals the original's when each cluster's coefficients are exactly parallel, and its
    parameter count equals ``parameter_counts(...).folded``.
    """
    by_name = {bank.name: bank for bank in banks}
    missing = [name for name in plans if name not in by_name]
    if missing:
        raise InputError(f"fold plans for unknown banks: {', '.join(missing)}")
    skeletons = [_skeleton(plan, by_name[name]) for name, plan in plans.items()]
    directions = {name: plan.directions for name, plan in plans.items()}

    def materialise(sk: Skeleton, templates: Tensor) -> FoldedBank:
        t = templates.detach()
        u = torch.as_tensor(np.asarray(directions[sk.name]), dtype=torch.float64, device=t.device)
        if u.shape != (sk.num_clusters, t.shape[0]):
            raise InputError(
                f"bank {sk.name}: plan directions {tuple(u.shape)} do not fit "
                f"{t.shape[0]} templates"
            )
        if sk.stores_weights:  # summed in float64, so exact folds stay exact after rounding
            return FoldedBank.holding(weights=torch.tensordot(u, t.double(), dims=1).to(t.dtype))
        return FoldedBank.holding(templates=t.clone(), directions=u.to(t.dtype))

    return _operate(copy.deepcopy(model), skeletons, materialise, _ungained(plans))


def user_fold_program(plans: Mapping[str, BankFold], banks: Sequence[Bank]) -> dict[str, Any]:
    """The JSON-ready surgery program stored next to the folded weights."""
    by_name = {bank.name: bank for bank in banks}
    ungained = _ungained(plans)
    out = []
    for name, plan in plans.items():
        sk = _skeleton(plan, by_name[name])
        out.append(
            {
                "name": sk.name,
                "module": sk.attribute,
                "storage": "weights" if sk.stores_weights else "templates",
                "clusters": [list(c) for c in plan.clusters],
                "bank_modules": list(sk.modules),
                "layers": [
                    {
                        "name": n,
                        "cluster": c,
                        "scale": s,
                        **({"gain": False} if n in ungained else {}),
                    }
                    for n, c, s in sk.layers
                ],
            }
        )
    return {"format": PROGRAM_FORMAT, "version": PROGRAM_VERSION, "banks": out}


def rebuild_folded_user_model(
    spec: Any, program: Mapping[str, Any], state_dict: Mapping[str, Tensor]
) -> nn.Module:
    """``factory()`` with the program's surgery replayed and the folded weights loaded, eval."""
    skeletons = skeletons_from_program(program)

    def empty(sk: Skeleton, templates: Tensor) -> FoldedBank:
        stored_rows(state_dict, sk, templates)  # before a tensor of that many rows is made
        k, c = templates.shape[0], sk.num_clusters
        if sk.stores_weights:  # values come from the state dict below
            return FoldedBank.holding(weights=templates.new_zeros((c, *templates.shape[1:])))
        return FoldedBank.holding(
            templates=torch.zeros_like(templates), directions=templates.new_zeros((c, k))
        )

    model = _operate(load_factory(spec)(), skeletons, empty, _ungained_in_program(program))
    load_state_dict_checked(model, state_dict, f"the folded network built by {spec}")
    return model.eval()


# --- files -----------------------------------------------------------------------------------


def save_folded_user_model(
    network: nn.Module,
    path: str | os.PathLike[str],
    spec: str,
    program: Mapping[str, Any],
    report: Mapping[str, Any] | None = None,
) -> None:
    """Write a folded user network as safetensors, its program and report in the header.

    The header is the ``ssc-folded`` one of :mod:`soft_share_cli.folding.swrn`; the program (tagged
    ``ssc-user-fold``) also records the factory ``spec``, for information only: loading always
    needs the spec given again, so that a file never chooses code to run.
    """
    from soft_share_cli.checkpoints.folded_header import FORMAT_NAME, FORMAT_VERSION
    from soft_share_cli.files import save_safetensors

    tensors, aliases = untied_keys(network.state_dict())
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "program": json.dumps(
            {**program, "model": spec, **({"aliases": aliases} if aliases else {})}
        ),
        "report": json.dumps(dict(report or {})),
    }
    save_safetensors(path, tensors, metadata)  # atomically, with the umask's mode


def load_folded_user_model(path: str | os.PathLike[str], spec: Any) -> nn.Module:
    """Rebuild a network saved by :func:`save_folded_user_model` with the factory ``spec``."""
    from soft_share_cli.checkpoints.load import load_checkpoint

    ckpt = load_checkpoint(path)
    program = ckpt.metadata.get("program") if ckpt.container == "ssc-folded" else None
    if not isinstance(program, dict) or program.get("format") != PROGRAM_FORMAT:
        raise CheckpointError(
            f"{path}: not a folded user network (make one with `ssc fold --model module:callable`)"
        )
    return rebuild_folded_user_model(spec, program, with_aliases(program, ckpt.state_dict))


def folded_user_view(program: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> dict:
    """A folded user network seen as soft-shared, for analysis (no factory needed).

    Each bank's stored weights become its templates (``<bank>.templates``, also aliased as
    ``<layer>.bank.templates`` so every layer maps to its bank): its C distinct weights, or its
    K templates when it stores templates and directions. Each layer's coefficients are its gain
    times its cluster's direction (one-hot over distinct weights). The other tensors keep their
    names.
    """
    skeletons = skeletons_from_program(program)
    ungained = _ungained_in_program(program)
    state_dict = with_aliases(program, state_dict)
    view: dict[str, Tensor] = {}
    hidden: set[str] = set()
    coefficients: dict[tuple[Any, ...], Tensor] = {}  # (gain storage, cluster) -> coefficients
    try:
        for sk, spec in zip(skeletons, program["banks"], strict=True):
            prefix = f"{spec['module']}."
            if not sk.layers:
                continue  # a bank no layer uses was dropped by the fold: nothing is stored
            stored_rows(state_dict, sk)
            if sk.stores_weights:
                stack = state_dict[prefix + "weights"]
            else:
                stack = state_dict[prefix + "templates"]
                directions = state_dict[prefix + "directions"].to(stack.dtype)
                if directions.shape != (sk.num_clusters, stack.shape[0]):
                    raise CheckpointError(
                        f"bank {sk.name}: directions {tuple(directions.shape)} do not fit "
                        f"{stack.shape[0]} templates"
                    )
            hidden.update(k for k in state_dict if k.startswith(prefix))
            view[f"{sk.name}.templates"] = stack
            for name, cluster, _ in sk.layers:
                if name in ungained:  # its cluster's direction is its own coefficients
                    gain, tie = torch.ones((), dtype=stack.dtype), (sk.name, cluster)
                else:
                    gain = state_dict[f"{name}.gain"].reshape(()).to(stack.dtype)
                    tie = (storage_id(state_dict[f"{name}.gain"]), cluster)
                if sk.stores_weights:  # one-hot over the stored weights
                    direction = torch.zeros(stack.shape[0], dtype=stack.dtype)
                    direction[cluster] = 1
                else:
                    direction = directions[cluster]
                # a tensor per gain, so counting by storage sees each once (a shared gain once)
                view[f"{name}.coefficients"] = coefficients.setdefault(
                    tie, (direction * gain).reshape(-1, 1, 1, 1, 1)
                )
                view[f"{name}.bank.templates"] = stack
                hidden.add(f"{name}.gain")
    except KeyError as exc:
        raise CheckpointError(f"folded user network lacks tensor {exc}") from None
    view.update({k: v for k, v in state_dict.items() if k not in hidden})
    return view
