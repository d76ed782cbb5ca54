"""The DRDF training loss (docs/papers/drdf.md §6), a function of the model's outputs:

    L = CE(y, label) + lambda_aux * (1/K) sum_k CE(z_k, label) [+ lambda_bal * CV(I)^2],  I_k = sum_batch w[:, k]

Called by :class:`~projects.drdf.module.DRDFModule` and so by the bench rows (``bench.py``), which time the module's
``training_step``: a timed step is the trained one.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def expert_cross_entropy(expert_logits: Tensor, labels: Tensor) -> Tensor:
    """(1/K) sum_k CE(z_k, y) for ``expert_logits`` [K, B, C] and ``labels`` [B], in one batched call."""
    K, B, C = expert_logits.shape
    return F.cross_entropy(expert_logits.reshape(K * B, C), labels.repeat(K))


def load_balance_loss(weights: Tensor) -> Tensor:
    """Shazeer et al. 2017 importance loss: CV(I)^2 = Var(I) / mean(I)^2 of ``I = weights.sum(0)``, ``weights``
    [B, K]."""
    importance = weights.sum(0)
    if importance.numel() < 2:
        return importance.new_zeros(())
    return importance.var(unbiased=False) / importance.mean().pow(2).clamp_min(1e-12)


def drdf_loss(out: dict[str, Tensor], labels: Tensor, lambda_aux: float = 0.5, lambda_bal: float = 0.0
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """``L`` above on the outputs of :class:`~projects.drdf.model.DRDF` (``logits`` [B, C], ``expert_logits``
    [K, B, C], ``weights`` [B, K]) and ``labels`` [B]. The per-expert term is skipped when ``lambda_aux`` is 0 or
    K = 1, the balance term when ``lambda_bal`` is 0. Returns ``(L, {"ce", and "aux_ce" / "balance" when on})``.
    """
    ce = F.cross_entropy(out["logits"], labels)
    loss, parts = ce, {"ce": ce}
    if lambda_aux > 0 and out["expert_logits"].shape[0] > 1:
        parts["aux_ce"] = expert_cross_entropy(out["expert_logits"], labels)
        loss = loss + lambda_aux * parts["aux_ce"]
    if lambda_bal > 0:
        parts["balance"] = load_balance_loss(out["weights"])
        loss = loss + lambda_bal * parts["balance"]
    return loss, parts
