"""Multi-label metrics as the ML-GCN / MCAR / DiD evaluation code computes them (docs/papers/did.md §7.2).

Targets follow the VOC convention: ``1`` positive, ``0`` negative, ``-1`` difficult.

* AP / mAP (:class:`MultiLabelAveragePrecision`): non-interpolated AP per class, difficult samples of a class
  removed from that class's ranking (standard VOC protocol, docs/papers/did.md §7.1 and §8.10); mAP is the mean over the
  classes with at least one positive, in percent.
* CP/CR/CF1/OP/OR/OF1 (:class:`MultiLabelThresholdMetrics`): predicted positive iff ``score >= threshold``;
  difficult labels count as negatives (ML-GCN: ``targets[targets == -1] = 0``); optional top-k variant.
* :class:`MultiLabelMetrics` / :func:`multilabel_metrics`: everything above from one set of states, as a
  flat dict of scalars (``mAP, CP, ..., OF1, CP_top3, ..., OF1_top3``) for ``LightningModule.log_dict``.

All metrics are torchmetrics ``Metric`` objects and are correct under DDP: AP keeps concatenated
``[N, C]`` scores/targets (``dist_reduce_fx="cat"``, so every sample of every rank is ranked together);
the threshold metrics keep per-class counts (``dist_reduce_fx="sum"``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "MultiLabelAveragePrecision",
    "MultiLabelMetrics",
    "MultiLabelThresholdMetrics",
    "multilabel_average_precision",
    "multilabel_metrics",
    "multilabel_threshold_counts",
    "threshold_metrics_from_counts",
]

THRESHOLD_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


# ----------------------------------------------------------------------------------------------------------
# Functional core
# ----------------------------------------------------------------------------------------------------------
def _check_inputs(scores: Tensor, targets: Tensor, num_classes: int | None = None) -> None:
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"expected scores and targets of the same shape [N, C], got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if num_classes is not None and scores.shape[1] != num_classes:
        raise ValueError(f"expected {num_classes} classes, got scores of shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")


def multilabel_average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Per-class non-interpolated AP in [0, 1] (shape ``[C]``); NaN for a class without any positive.

    ``scores``: ``[N, C]`` (logits or probabilities; only the ranking matters). ``targets``: ``[N, C]`` with
    1 positive, 0 negative, -1 difficult. For class c, the difficult samples of c are removed (they count
    neither as positives nor as negatives, VOC protocol), the rest are ranked by score descending and
    AP = mean over positives of the precision at that positive's rank.

    Ties are handled tie-aware: every sample of a block of equal scores gets the precision at the end of
    the block (precision at threshold ``score >= s``). This equals ML-GCN's ``AveragePrecisionMeter`` exactly
    when scores have no ties, is deterministic, and does not depend on sample order (so the order in which
    DDP gathers the ranks' samples cannot change the result). It matches sklearn's
    ``average_precision_score`` definition.
    """
    _check_inputs(scores, targets)
    n, c = scores.shape
    if n == 0:
        return torch.full((c,), math.nan, dtype=torch.float64, device=scores.device)
    sorted_scores, order = torch.sort(scores.double(), dim=0, descending=True, stable=True)
    t = targets.gather(0, order)
    pos = (t == 1).double()
    valid = (t != -1).double()  # difficult samples add to neither count: removed from this class's ranking
    cum_pos = pos.cumsum(0)
    cum_valid = valid.cumsum(0)
    # index of the last element of each row's tie block (reverse cumulative min over block ends)
    is_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    idx = torch.arange(n, device=scores.device).unsqueeze(1).expand(n, c)
    block_end = torch.where(is_end, idx, n).flip(0).cummin(0).values.flip(0)
    precision = cum_pos.gather(0, block_end) / cum_valid.gather(0, block_end).clamp_min(1.0)
    n_pos = pos.sum(0)
    ap = (precision * pos).sum(0) / n_pos.clamp_min(1.0)
    return torch.where(n_pos > 0, ap, torch.full_like(ap, math.nan))


def _mean_ap_percent(ap: Tensor) -> Tensor:
    """Mean over the classes that have at least one positive (non-NaN AP), x100; NaN if there is none."""
    present = ~torch.isnan(ap)
    if not bool(present.any()):
        return torch.tensor(math.nan, dtype=torch.float32, device=ap.device)
    return (ap[present].mean() * 100.0).float()


def multilabel_threshold_counts(
    scores: Tensor, targets: Tensor, threshold: float = 0.0, top_k: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class ``(Nc, Np, Ng)`` counts (int64, shape ``[C]``): correct, predicted, ground-truth positives.

    Predicted positive iff ``score >= threshold`` (logits with threshold 0 = sigmoid >= 0.5). With ``top_k``,
    only each sample's ``top_k`` highest scores (and among those only the ones ``>= threshold``) are
    predictions; equal scores at the top-k boundary go to the lower class index (stable sort).
    Difficult labels (-1) count as negatives (ML-GCN convention).
    """
    _check_inputs(scores, targets)
    pred = scores >= threshold
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, scores.shape[1])
        top = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
        keep = torch.zeros_like(pred).scatter_(1, top, True)
        pred = pred & keep
    gt = targets == 1  # -1 (difficult) -> negative, as ML-GCN's `targets[targets == -1] = 0`
    return (pred & gt).sum(0), pred.sum(0), gt.sum(0)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def threshold_metrics_from_counts(nc: Tensor, np_: Tensor, ng: Tensor) -> dict[str, Tensor]:
    """``{CP, CR, CF1, OP, OR, OF1}`` in percent from per-class counts.

    CP = mean_c Nc/Np, CR = mean_c Nc/Ng (means over all C classes), OP = sum Nc / sum Np,
    OR = sum Nc / sum Ng, F1 = 2PR/(P+R). Zero division gives 0 for that term: a class never predicted
    contributes 0 to CP (as ML-GCN's ``Np[Np == 0] = 1``), a class never present contributes 0 to CR
    (ML-GCN would produce NaN there), and P = R = 0 gives F1 = 0.
    """
    nc, np_, ng = nc.double(), np_.double(), ng.double()
    cp = _safe_div(nc, np_).mean()
    cr = _safe_div(nc, ng).mean()
    op = _safe_div(nc.sum(), np_.sum())
    or_ = _safe_div(nc.sum(), ng.sum())
    out = {
        "CP": cp,
        "CR": cr,
        "CF1": _safe_div(2 * cp * cr, cp + cr),
        "OP": op,
        "OR": or_,
        "OF1": _safe_div(2 * op * or_, op + or_),
    }
    return {k: (v * 100.0).float() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------
# Metric classes
# ----------------------------------------------------------------------------------------------------------
class _ScoreStore(Metric):
    """Keeps all scores ``[N, C]`` and targets ``[N, C]`` (cat states: DDP gathers every sample)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add a batch: ``scores`` ``[B, C]`` float, ``targets`` ``[B, C]`` in {1, 0, -1}."""
        _check_inputs(scores, targets, self.num_classes)
        self.scores.append(scores.detach().float())
        self.targets.append(targets.detach().to(torch.int8))

    def _cat_states(self) -> tuple[Tensor, Tensor]:
        if isinstance(self.scores, list) and len(self.scores) == 0:
            empty = torch.zeros(0, self.num_classes, device=self.device)
            return empty, empty.to(torch.int8)
        return dim_zero_cat(self.scores), dim_zero_cat(self.targets)

    def synced_states(self) -> tuple[Tensor, Tensor]:
        """Every rank's scores ``[N, C]`` and targets ``[N, C]`` (all ranks call it, before ``reset()``)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, process_group=self.process_group):
            return self._cat_states()

    def compute_per_class(self) -> Tensor:
        """Per-class AP in percent (``[C]``, NaN for classes without positives), synced across DDP ranks.

        For a per-class AP bar chart. Call it like ``compute()`` (all ranks, before ``reset()``).
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, process_group=self.process_group):
            scores, targets = self._cat_states()
            return (multilabel_average_precision(scores, targets) * 100.0).float()


class MultiLabelAveragePrecision(_ScoreStore):
    """mAP in percent (VOC difficult samples ignored per class; see :func:`multilabel_average_precision`).

    ``compute()`` returns the mAP scalar (mean over classes with >= 1 positive), or with ``average=None``
    the per-class AP vector in percent (NaN for classes without positives). ``compute_per_class()`` gives
    the vector regardless of ``average``.
    """

    def __init__(self, num_classes: int, average: str | None = "macro", **kwargs) -> None:
        if average not in ("macro", None):
            raise ValueError(f"average must be 'macro' or None, got {average!r}")
        super().__init__(num_classes, **kwargs)
        self.average = average

    def compute(self) -> Tensor:
        ap = multilabel_average_precision(*self._cat_states())
        if self.average is None:
            return (ap * 100.0).float()
        return _mean_ap_percent(ap)


class MultiLabelThresholdMetrics(Metric):
    """``{CP, CR, CF1, OP, OR, OF1}`` in percent from summed per-class counts.

    See :func:`multilabel_threshold_counts` (threshold, top-k, difficult = negative) and
    :func:`threshold_metrics_from_counts` (formulas, zero division -> 0).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, threshold: float = 0.0, top_k: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.top_k = top_k
        for name in ("n_correct", "n_pred", "n_gt"):
            zeros = torch.zeros(self.num_classes, dtype=torch.long)
            self.add_state(name, default=zeros, dist_reduce_fx="sum")

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add a batch: ``scores`` ``[B, C]`` float (logits), ``targets`` ``[B, C]`` in {1, 0, -1}."""
        _check_inputs(scores, targets, self.num_classes)
        nc, np_, ng = multilabel_threshold_counts(scores.detach(), targets, self.threshold, self.top_k)
        self.n_correct += nc
        self.n_pred += np_
        self.n_gt += ng

    def compute(self) -> dict[str, Tensor]:
        return threshold_metrics_from_counts(self.n_correct, self.n_pred, self.n_gt)


class MultiLabelMetrics(_ScoreStore):
    """mAP + threshold metrics (+ their top-k variants) from one set of cat states, as one flat dict.

    A single ``Metric`` rather than a ``MetricCollection``: the scores are stored once (mAP needs them all
    anyway) and ``compute()`` derives every number from them, so keys are plain and there is no
    dict-in-collection flattening. Keys: ``{prefix}mAP``, ``{prefix}CP`` ... ``{prefix}OF1`` and, when
    ``top_k`` is set, ``{prefix}CP_top{k}`` ... ``{prefix}OF1_top{k}``; all scalar float32 tensors in percent.
    Use ``update(logits, targets)`` per batch (``forward`` also works but computes batch values too),
    ``compute()`` at epoch end, ``reset()`` after. ``compute_per_class()`` gives the per-class AP vector.
    """

    def __init__(
        self, num_classes: int, threshold: float = 0.0, top_k: int | None = 3, prefix: str = "", **kwargs
    ) -> None:
        super().__init__(num_classes, **kwargs)
        self.threshold = float(threshold)
        self.top_k = top_k
        self.prefix = prefix

    def compute(self) -> dict[str, Tensor]:
        scores, targets = self._cat_states()
        out = {"mAP": _mean_ap_percent(multilabel_average_precision(scores, targets))}
        counts = multilabel_threshold_counts(scores, targets, self.threshold)
        out.update(threshold_metrics_from_counts(*counts))
        if self.top_k is not None:
            counts = multilabel_threshold_counts(scores, targets, self.threshold, self.top_k)
            top = threshold_metrics_from_counts(*counts)
            out.update({f"{k}_top{self.top_k}": v for k, v in top.items()})
        return {f"{self.prefix}{k}": v for k, v in out.items()}


def multilabel_metrics(
    num_classes: int, prefix: str = "", threshold: float = 0.0, top_k: int | None = 3
) -> MultiLabelMetrics:
    """Everything the multi-label papers report: ``mAP, CP, CR, CF1, OP, OR, OF1, CP_top3, ..., OF1_top3``."""
    return MultiLabelMetrics(num_classes, threshold=threshold, top_k=top_k, prefix=prefix)
