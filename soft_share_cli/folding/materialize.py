"""Views of a folded SWRN: as an ordinary WRN, and as the soft-shared state dict it came from.

(The folded bank is :mod:`soft_share_cli.folding.bank`; the looped block and where scales go,
:mod:`soft_share_cli.folding.swrn_blocks`.)

* :func:`materialize`: the folded network as an ordinary WRN (one conv weight per layer).
* :func:`folded_state_dict_view`: the folded network as a soft-shared state dict whose C
  "templates" are the distinct weights, so ``find_banks`` and the analysis read it unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from soft_share_cli.models.wrn import WRN

if TYPE_CHECKING:  # folded.py imports this module; the type is needed for annotations only
    from soft_share_cli.folding.swrn import FoldedSWRN
    from soft_share_cli.folding.swrn_blocks import LoopedBlock

COPIED = ("conv_3x3", "lastact", "classifier")  # modules the SWRN, folded net and WRN share


def materialize(folded: FoldedSWRN) -> WRN:
    """The folded network as an ordinary WRN with the same eval-mode logits, in eval mode.

    Each shared layer gets its cluster's weight (times its explicit gain: conv is linear) and
    its iteration's BatchNorms; everything else is copied.
    """
    p = folded.program()
    reference = folded.conv_3x3.weight
    wrn = WRN(p["depth"], p["width"], p["num_classes"], p["in_channels"])
    wrn = wrn.to(device=reference.device, dtype=reference.dtype)
    for m in wrn.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = p["batchnorm"]["eps"], p["batchnorm"]["momentum"]
    with torch.no_grad():
        for name in COPIED:
            getattr(wrn, name).load_state_dict(getattr(folded, name).state_dict())
        for i in (1, 2, 3):
            first = getattr(folded, f"stage_{i}_first")
            getattr(wrn, f"stage_{i}")[0].load_state_dict(first.state_dict())
        for stage, b, segment, t in folded.iterations():
            block, bank = getattr(wrn, f"stage_{stage}")[b], folded.bank(stage)
            assert bank is not None
            block.bn1.load_state_dict(segment.bn1[t].state_dict())
            block.bn2.load_state_dict(segment.bn2[t].state_dict())
            for conv, c in ((1, segment.conv1_cluster), (2, segment.conv2_cluster)):
                weight, gain = bank.weight(c), segment.gain(conv, t)
                target = cast(nn.Conv2d, getattr(block, f"conv{conv}"))
                target.weight.copy_(weight if gain is None else weight * gain)
    return wrn.eval()


def folded_state_dict_view(folded: FoldedSWRN) -> dict[str, Tensor]:
    """A soft-shared view of ``folded`` for analysis (``find_banks``, ``ssc analyze``).

    The view is laid out as the original SWRN's state dict, in execution order: per bank,
    ``bank_<i>.templates`` holds what the bank stores as templates
    (:meth:`FoldedBank.view_templates`: its K templates, or its C distinct weights); every
    shared layer keeps its original name with ``stage_<s>.<b>.conv<r>.coefficients``, its
    cluster's direction (one-hot for stored weights) times its explicit gain (1 where the scale
    was absorbed); its iteration's BatchNorms appear as ``stage_<s>.<b>.bn<r>.*``, so a re-fold
    of the view sees where scales can be absorbed exactly, as the fold of the original did. Each
    stage's first block is ``stage_<s>.0``. Gains are left out: the coefficients hold them. Each
    block also names its bank's templates as an SWRN does (one tensor, aliased), so the view
    rebuilds as an SWRN: that is how a folded file is folded again.
    """
    view: dict[str, Tensor] = {}

    def put(prefix: str, module: nn.Module) -> None:
        for key, value in module.state_dict().items():
            view[f"{prefix}.{key}"] = value.detach()

    shared: dict[int, list[tuple[int, LoopedBlock, int]]] = {1: [], 2: [], 3: []}
    for stage, b, segment, t in folded.iterations():
        shared[stage].append((b, segment, t))
    put("conv_3x3", folded.conv_3x3)
    with torch.no_grad():
        for stage in (1, 2, 3):
            put(f"stage_{stage}.0", getattr(folded, f"stage_{stage}_first"))
            bank = folded.bank(stage)
            if bank is None:
                continue
            templates = view[f"bank_{stage}.templates"] = bank.view_templates()
            for b, segment, t in shared[stage]:
                for alias in ("bank", "conv1.bank", "conv2.bank"):  # as an SWRN's state dict
                    view[f"stage_{stage}.{b}.{alias}.templates"] = templates
                for conv, c in ((1, segment.conv1_cluster), (2, segment.conv2_cluster)):
                    bn = segment.bn1[t] if conv == 1 else segment.bn2[t]
                    put(f"stage_{stage}.{b}.bn{conv}", bn)
                    view[f"stage_{stage}.{b}.conv{conv}.coefficients"] = bank.view_coefficients(
                        c, segment.gain(conv, t)
                    )
        put("lastact", folded.lastact)
        put("classifier", folded.classifier)
    return view
