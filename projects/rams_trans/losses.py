"""The RAMS-Trans training loss (Hu et al., ACM MM 2021, Fig. 2): cross-entropy at every scale, summed.

Called by :class:`~projects.rams_trans.module.RAMSTransModule` and by the bench rows (``bench.py``), so a timed
step is the trained one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def multi_scale_loss(logits: Sequence[Tensor], target: Tensor, local_weight: float = 1.0
                     ) -> tuple[Tensor, list[Tensor]]:
    """``CE(z_1, y) + local_weight * sum_{k>1} CE(z_k, y)`` over the per-scale logits ``[B, C]`` of one batch.

    ``local_weight = 1`` is the paper's sum; ``0`` is the released trainer, where only the global scale's loss
    (``loss1``) is active. Returns ``(loss, [CE of each scale])``.
    """
    per_scale = [F.cross_entropy(z, target) for z in logits]
    later = sum(per_scale[1:], torch.zeros((), device=target.device))
    return per_scale[0] + local_weight * later, per_scale
