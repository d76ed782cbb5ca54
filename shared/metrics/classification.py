"""Thin torchmetrics factories for single-label classification and binary (Hateful Memes) metrics.

All values are fractions in [0, 1] (torchmetrics convention), not percent.
Collections are built with ``compute_groups=False``: torchmetrics merges metrics whose states are equal
after the first batch, which would wrongly tie e.g. top-1 and top-5 together if they happen to agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MulticlassAccuracy

__all__ = ["binary_metrics", "topk_accuracy"]


IGNORE_INDEX = -1   # a label the metrics skip: evaluation padding steps score as none, and sync like any other


def topk_accuracy(
    num_classes: int, ks: Sequence[int] = (1, 5), prefix: str | None = None
) -> MetricCollection:
    """Micro top-k accuracies in [0, 1] with keys ``top{k}``; ``update(logits [N, C], labels [N])``.

    ``top_k`` is capped at ``num_classes`` (``top5`` with 3 classes is top-3 accuracy, i.e. always 1). A label
    :data:`IGNORE_INDEX` is not counted (an evaluation padding step, ``shared.data.loaders.scored``).
    """
    metrics = {
        f"top{k}": MulticlassAccuracy(
            num_classes=num_classes, top_k=min(int(k), num_classes), average="micro", ignore_index=IGNORE_INDEX
        )
        for k in ks
    }
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)


class _SigmoidAUROC(BinaryAUROC):
    """BinaryAUROC fed with logits: sigmoid applied on every batch."""

    def update(self, preds: Tensor, target: Tensor) -> None:
        super().update(torch.sigmoid(preds.float()), target)


class _SigmoidAccuracy(BinaryAccuracy):
    """BinaryAccuracy fed with logits: sigmoid applied on every batch."""

    def update(self, preds: Tensor, target: Tensor) -> None:
        super().update(torch.sigmoid(preds.float()), target)


def binary_metrics(
    from_logits: bool = True, threshold: float = 0.5, prefix: str | None = None
) -> MetricCollection:
    """``{auroc, acc}`` in [0, 1] for a binary task; ``update(preds [N], target [N] in {0, 1})``.

    ``preds`` is the positive-class logit (``from_logits=True``, sigmoid applied here on every batch) or its
    probability (``from_logits=False``). Applying the sigmoid ourselves avoids torchmetrics' per-batch guess
    (sigmoid only if a batch leaves [0, 1]), which could mix logits and probabilities across batches.
    ``acc`` predicts positive iff probability > ``threshold`` (torchmetrics uses a strict ``>``). A target
    :data:`IGNORE_INDEX` is not counted (an evaluation padding step, ``shared.data.loaders.scored``).
    """
    auroc_cls, acc_cls = (_SigmoidAUROC, _SigmoidAccuracy) if from_logits else (BinaryAUROC, BinaryAccuracy)
    metrics = {"auroc": auroc_cls(ignore_index=IGNORE_INDEX),
               "acc": acc_cls(threshold=threshold, ignore_index=IGNORE_INDEX)}
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)
