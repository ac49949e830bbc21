"""One way to open the network of any checkpoint ssc reads, folded or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from soft_share_cli.errors import InputError


def open_network(ckpt: Any, path: str | Path, model_spec: str | None) -> tuple[Any, str, int]:
    """The checkpoint's network in eval mode, its name, and its input channels (0: unknown).

    Folded files of every kind go through :mod:`soft_share_cli.folding.kinds`; other
    checkpoints are rebuilt from their tensors (or by ``model_spec``, a user's factory, given
    the checkpoint's sharing record where ``ssc share`` made it).
    """
    from soft_share_cli.folding.kinds import kind_of

    found = kind_of(ckpt)
    if found is not None:
        kind, program = found
        if kind.needs_model and model_spec is None:
            made_by = program.get("model")
            raise InputError(
                f"{path} folds your own network; pass --model MODULE:CALLABLE"
                + (f" (it was made with --model {made_by})" if made_by else "")
            )
        if model_spec is not None and not kind.needs_model:
            raise InputError(
                f"{path} is a folded network ssc rebuilds itself; --model applies to checkpoints "
                "of your own network (folded or not) only"
            )
        network = kind.load(path, model_spec if kind.needs_model else None).eval()
        if kind.needs_model:
            return network, f"folded {model_spec}", 0
        channels = getattr(network, "in_channels", None)
        if channels is None:
            channels = int(network.program()["in_channels"])  # type: ignore[operator]
        return network, network.describe(), int(channels)  # type: ignore[operator]
    from soft_share_cli.models.user import build_user_model, refuse_without_model

    if model_spec is not None:
        network = build_user_model(model_spec, ckpt.state_dict, ckpt.metadata, str(path))
        return network.eval(), model_spec, 0
    refuse_without_model(ckpt, path, "build")
    from soft_share_cli.models.builder import rebuild_model

    model, spec = rebuild_model(ckpt)
    return model, spec.describe(), int(spec.kwargs.get("in_channels", 0))
