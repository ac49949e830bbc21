"""ssc: analyse, fold and evaluate CNNs trained with soft parameter sharing.

Importing this package is cheap: heavy modules (torch and friends) load on first use of a name
below, so ``ssc --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

from soft_share_cli._version import __version__

# public name -> module that defines it (imported lazily)
_EXPORTS = {
    "TemplateBank": "soft_share_cli.models.layers",
    "SConv2d": "soft_share_cli.models.layers",
    "SWRN": "soft_share_cli.models.wrn",
    "WRN": "soft_share_cli.models.wrn",
    "build_model": "soft_share_cli.models.registry",
    "SscError": "soft_share_cli.errors",
    "load_folded": "soft_share_cli.folding.kinds",
    "FCN": "soft_share_cli.models.recurrent",
    "SFCN": "soft_share_cli.models.recurrent",
    "RecurrentFCN": "soft_share_cli.models.recurrent_net",
    "load_looped": "soft_share_cli.folding.looped",
    "SharedConv2d": "soft_share_cli.models.layers",
    "fit_templates": "soft_share_cli.sharing.svd",
    "find_groups": "soft_share_cli.sharing.groups",
    "share_network": "soft_share_cli.sharing.convert",
    "share_checkpoint": "soft_share_cli.pipeline.share",
    "ShareOptions": "soft_share_cli.pipeline.share_options",
    "parse_iterations": "soft_share_cli.evaluation.iterations",
    "evaluate_auto": "soft_share_cli.evaluation.iterations",
    "AutoOptions": "soft_share_cli.evaluation.iterations",
    "sweep_iterations": "soft_share_cli.evaluation.tasks",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'soft_share_cli' has no attribute {name!r}")
