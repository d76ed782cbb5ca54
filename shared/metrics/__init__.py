"""Metrics shared by the paper reimplementations (torchmetrics-based, DDP-safe).

Multi-label (ML-GCN/MCAR/DiD protocol, docs/papers/did.md §7.2): mAP with VOC difficult ignored, CP/CR/CF1/OP/OR/OF1
(+ top-k). Classification: top-k accuracy and binary AUROC/accuracy factories.
"""

from shared.metrics.classification import IGNORE_INDEX, binary_metrics, topk_accuracy
from shared.metrics.multilabel import (
    MultiLabelAveragePrecision,
    MultiLabelMetrics,
    MultiLabelThresholdMetrics,
    multilabel_average_precision,
    multilabel_metrics,
    multilabel_threshold_counts,
    threshold_metrics_from_counts,
)

__all__ = [
    "IGNORE_INDEX",
    "MultiLabelAveragePrecision",
    "MultiLabelMetrics",
    "MultiLabelThresholdMetrics",
    "binary_metrics",
    "multilabel_average_precision",
    "multilabel_metrics",
    "multilabel_threshold_counts",
    "threshold_metrics_from_counts",
    "topk_accuracy",
]
