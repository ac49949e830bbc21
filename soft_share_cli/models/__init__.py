"""Build, load, evaluate and train CNNs with soft parameter sharing (template banks)."""

from soft_share_cli.models.registry import ARCHITECTURES, build_model
from soft_share_cli.models.wrn import SWRN, WRN

__all__ = ["ARCHITECTURES", "SWRN", "WRN", "build_model"]
