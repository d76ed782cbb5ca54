"""The DiD training loss (§5 "Training objective", §6): BCE on the global logits plus BCE on the local ones.

Called by :class:`~projects.did.module.DiDModule` and, through its ``training_step``, by the bench rows
(``bench.py``), so a timed step is the trained one.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def multilabel_targets(targets: Tensor, difficult_as_positive: bool = True) -> Tensor:
    """``{1, 0, -1}`` targets ``[B, C]`` (-1 = only difficult instances) -> boolean positives for the loss.

    The official script counts difficult labels as positive (MCAR convention, §6 and §8.10); ``False`` makes them
    negative. The metrics always leave them out of the AP (§7.2)."""
    return (targets != 0) if difficult_as_positive else (targets > 0)


def two_view_loss(global_logits: Tensor, local_logits: Tensor | None, positives: Tensor, local_weight: float = 1.0
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = BCE(y_g, t) + local_weight * BCE(y_l, t)`` over logits ``[B, C]`` (mean over batch and classes, the
    official ``MultiLabelSoftMarginLoss``); ``local_logits=None`` (the ViT baseline) leaves the second term out.

    Returns ``(L, {"global": BCE(y_g, t), "local": BCE(y_l, t)})`` (no ``local`` entry without local logits)."""
    y = positives.to(global_logits.dtype)
    parts = {"global": F.binary_cross_entropy_with_logits(global_logits, y)}
    loss = parts["global"]
    if local_logits is not None:
        parts["local"] = F.binary_cross_entropy_with_logits(local_logits, y)
        loss = loss + local_weight * parts["local"]
    return loss, parts
