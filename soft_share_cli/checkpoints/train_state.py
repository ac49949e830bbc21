"""What a task network's ``OUTPUT.partial`` (the state ``ssc train`` keeps) holds, without torch.

:mod:`soft_share_cli.training.resume` writes and reads these files; this module only tells the
architecture of the network in one, so ``ssc info`` and ``ssc eval`` read it like a checkpoint
(and ``ssc analyze``, which imports no torch, too).
"""

from __future__ import annotations

from typing import Any

FORMAT_NAME = "ssc-train-state"


def state_architecture(checkpoint: Any) -> tuple[str, dict[str, Any]] | None:
    """The architecture (name, constructor arguments) of the network in an ``OUTPUT.partial``
    of a task network, or None for any other file.

    A train state stores the run's config, not the network's arguments: the depth, width, K,
    recall and block come from the config, the input channels, classes and 1-d or 2-d from the
    shapes of the stem and the classifier. (An SWRN's or WRN's state is recognised by its keys,
    as any bare state dict is.) The result is checked like stored arguments by the caller.
    """
    from soft_share_cli.checkpoints import arrays

    extras = getattr(checkpoint, "extras", None) or {}
    config = extras.get("format") == FORMAT_NAME and extras.get("config")
    if not isinstance(config, dict) or config.get("arch") not in ("sfcn", "fcn", "rfcn"):
        return None
    stem = checkpoint.state_dict.get("stem.weight")
    classifier = checkpoint.state_dict.get("head.classifier.weight")
    if not (arrays.is_tensor(stem) and arrays.is_tensor(classifier)):
        return None
    stem_shape, classes_shape = arrays.shape(stem), arrays.shape(classifier)
    if len(stem_shape) not in (3, 4) or len(classes_shape) != len(stem_shape):
        return None
    arch = config["arch"]
    kwargs: dict[str, Any] = {
        "iterations" if arch == "rfcn" else "blocks": config.get("blocks"),
        "width": config.get("width"),
        "num_classes": int(classes_shape[0]),
        "in_channels": int(stem_shape[1]),
        "recall": config.get("recall", True),
    }
    if arch == "sfcn":
        kwargs["num_templates"] = config.get("num_templates")
    if len(stem_shape) == 3:
        kwargs["dims"] = 1
    if arch == "rfcn":
        kwargs["block"] = config.get("block", "residual")
    return arch, kwargs
