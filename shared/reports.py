"""Per-class reports of a ``validate`` / ``test``: CSV files and a PNG in ``<run folder>/reports/<stage>/``, the
tables and the picture logged too (wandb tables and images, or ``panels/`` without wandb).

* :func:`classification_report` (RAMS-Trans, DRDF on CIFAR / TinyImageNet): the confusion matrix, per-class top-1
  and the most frequent confusions;
* :func:`multilabel_report` (DiD): per-class AP, precision, recall and F1 at the threshold, the overall CP / CR /
  CF1 / OP / OR / OF1 and the worst classes;
* :func:`binary_report` (DRDF on Hateful Memes): the ROC curve, the confusion matrix at 0.5 and each class's
  precision and recall.

Each returns the lines it printed, so a command line user sees the headline of the report without opening it.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics.utilities.distributed import gather_all_tensors

from shared.metrics.multilabel import (
    multilabel_average_precision,
    multilabel_threshold_counts,
    threshold_metrics_from_counts,
)
from shared.panels import log_images, log_table


def class_names(module: LightningModule, num_classes: int) -> list[str]:
    """The datamodule's class names when it has one per class, else ``class_0``, ``class_1``, ..."""
    names = list(getattr(getattr(module.trainer, "datamodule", None), "class_names", None) or [])
    return names if len(names) == num_classes else [f"class_{i}" for i in range(num_classes)]

def report_dir(module: LightningModule, stage: str) -> Path:
    out = Path(module.trainer.default_root_dir) / "reports" / stage
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _png(fig, path: Path) -> np.ndarray:
    fig.savefig(path, dpi=110)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    import matplotlib.pyplot as plt  # matplotlib loads only when a report is drawn

    plt.close(fig)
    return image


def _figure(width: float, height: float):
    import matplotlib  # matplotlib loads only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def classification_report(module: LightningModule, stage: str, names: Sequence[str], labels: torch.Tensor,
                          preds: torch.Tensor, top: int = 10) -> list[str]:
    """``labels`` / ``preds`` ``[N]`` class indices: confusion_matrix.csv (rows: true class), per_class.csv,
    top_confusions.csv and confusion_matrix.png."""
    out, c = report_dir(module, stage), len(names)
    cm = torch.bincount(labels.long() * c + preds.long(), minlength=c * c).view(c, c).cpu()
    per_class = cm.diag().float() / cm.sum(1).clamp(min=1).float() * 100
    _write_csv(out / "confusion_matrix.csv", ["true \\ predicted", *names],
               [[names[i], *cm[i].tolist()] for i in range(c)])
    rows = [[names[i], int(cm[i].sum()), int(cm[i, i]), round(float(per_class[i]), 2)] for i in range(c)]
    _write_csv(out / "per_class.csv", ["class", "samples", "correct", "top1 %"], rows)
    off = cm.clone()
    off.fill_diagonal_(0)
    order = off.flatten().argsort(descending=True)[:top]
    confusions = [[names[int(k) // c], names[int(k) % c], int(off.flatten()[k])] for k in order if off.flatten()[k]]
    _write_csv(out / "top_confusions.csv", ["true", "predicted", "count"], confusions)
    fig, ax = _figure(min(12, 3 + 0.35 * c), min(11, 2.5 + 0.35 * c))
    ax.imshow((cm.float() / cm.sum(1, keepdim=True).clamp(min=1)).numpy(), cmap="Blues", vmin=0, vmax=1)
    if c <= 40:
        ax.set_xticks(range(c), names, rotation=90, fontsize=7)
        ax.set_yticks(range(c), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top1 = float(cm.diag().sum()) / max(1, int(cm.sum())) * 100
    ax.set_title(f"{stage}: confusion matrix (rows normalised), top-1 {top1:.1f}%", fontsize=9)
    fig.tight_layout()
    image = _png(fig, out / "confusion_matrix.png")
    log_images(module, f"{stage}/confusion_matrix", [image], ["rows: true class, normalised"])
    log_table(module, f"{stage}/per_class_top1", ["class", "samples", "correct", "top1 %"], rows)
    log_table(module, f"{stage}/top_confusions", ["true", "predicted", "count"], confusions)
    worst = sorted(rows, key=lambda r: r[3])[:5]
    return [f"{stage} report in {out}: worst classes (top-1 %) "
            + ", ".join(f"{r[0]} {r[3]:.1f}" for r in worst)
            + ("; top confusions " + ", ".join(f"{a}->{b} x{n}" for a, b, n in confusions[:5]) if confusions else "")]


def multilabel_report(module: LightningModule, stage: str, names: Sequence[str], scores: torch.Tensor,
                      targets: torch.Tensor, threshold: float = 0.0) -> list[str]:
    """``scores`` ``[N, C]`` logits, ``targets`` ``[N, C]`` in {1, 0, -1 (difficult)}: per_class.csv (AP, P, R,
    F1 at ``threshold`` on the logits), overall.csv (CP, CR, CF1, OP, OR, OF1) and per_class_ap.png."""
    out = report_dir(module, stage)
    scores, targets = scores.float().cpu(), targets.cpu()
    ap = multilabel_average_precision(scores, targets) * 100
    n_correct, n_pred, n_gt = multilabel_threshold_counts(scores, targets, threshold)
    precision = n_correct.float() / n_pred.clamp(min=1) * 100
    recall = n_correct.float() / n_gt.clamp(min=1) * 100
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-9)
    rows = [[names[i], int(n_gt[i]), round(float(ap[i]), 2), round(float(precision[i]), 2),
             round(float(recall[i]), 2), round(float(f1[i]), 2)] for i in range(len(names))]
    header = ["class", "positives", "AP %", "precision %", "recall %", "F1 %"]
    _write_csv(out / "per_class.csv", header, rows)
    overall = {k: round(float(v), 2) for k, v in threshold_metrics_from_counts(n_correct, n_pred, n_gt).items()}
    _write_csv(out / "overall.csv", ["metric", "value %"], [[k, v] for k, v in overall.items()])
    order = sorted(range(len(names)), key=lambda i: float(ap[i]) if not torch.isnan(ap[i]) else -1.0)
    fig, ax = _figure(min(14, 3 + 0.3 * len(names)), 3.8)
    ax.bar(range(len(names)), [float(ap[i]) if not torch.isnan(ap[i]) else 0.0 for i in order], color="C0")
    if len(names) <= 80:
        ax.set_xticks(range(len(names)), [names[i] for i in order], rotation=90, fontsize=7)
    ax.set_ylabel("AP %")
    ax.set_title(f"{stage}: per-class AP, worst first (mAP {float(ap[~torch.isnan(ap)].mean()):.1f}%)", fontsize=9)
    fig.tight_layout()
    log_images(module, f"{stage}/per_class_ap", [_png(fig, out / "per_class_ap.png")], ["worst class first"])
    log_table(module, f"{stage}/per_class", header, rows)
    worst = [rows[i] for i in order[:5]]
    return [f"{stage} report in {out}: " + ", ".join(f"{k} {v:.1f}" for k, v in overall.items())
            + "; worst classes (AP %) " + ", ".join(f"{r[0]} {r[2]:.1f}" for r in worst)]


def binary_report(module: LightningModule, stage: str, probs: torch.Tensor, labels: torch.Tensor,
                  names: Sequence[str] = ("negative", "positive")) -> list[str]:
    """``probs`` ``[N]`` P(positive), ``labels`` ``[N]`` in {0, 1}: roc.csv + roc.png, confusion_matrix.csv at 0.5
    and per_class.csv (each class's precision and recall)."""
    out = report_dir(module, stage)
    probs, labels = probs.float().cpu(), labels.long().cpu()
    order = probs.argsort(descending=True)
    hits = labels[order].float()
    tpr = torch.cat([torch.zeros(1), hits.cumsum(0) / hits.sum().clamp(min=1)])
    fpr = torch.cat([torch.zeros(1), (1 - hits).cumsum(0) / (1 - hits).sum().clamp(min=1)])
    thresholds = torch.cat([torch.ones(1), probs[order]])
    auroc = float(torch.trapezoid(tpr, fpr))
    _write_csv(out / "roc.csv", ["threshold", "fpr", "tpr"],
               [[round(float(t), 6), round(float(f), 6), round(float(r), 6)]
                for t, f, r in zip(thresholds, fpr, tpr, strict=True)])
    pred = (probs > 0.5).long()
    cm = torch.bincount(labels * 2 + pred, minlength=4).view(2, 2)
    _write_csv(out / "confusion_matrix.csv", ["true \\ predicted", *names],
               [[names[i], *cm[i].tolist()] for i in (0, 1)])
    rows = []
    for k in (0, 1):
        precision = float(cm[k, k]) / max(1, int(cm[:, k].sum())) * 100
        recall = float(cm[k, k]) / max(1, int(cm[k].sum())) * 100
        rows.append([names[k], int(cm[k].sum()), round(precision, 2), round(recall, 2)])
    _write_csv(out / "per_class.csv", ["class", "samples", "precision %", "recall %"], rows)
    fig, ax = _figure(4.2, 4.0)
    ax.plot(fpr.numpy(), tpr.numpy(), color="C0", label=f"AUROC {auroc * 100:.1f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{stage}: ROC, {len(labels)} samples", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    log_images(module, f"{stage}/roc", [_png(fig, out / "roc.png")], [f"AUROC {auroc * 100:.1f}"])
    log_table(module, f"{stage}/per_class", ["class", "samples", "precision %", "recall %"], rows)
    return [f"{stage} report in {out}: AUROC {auroc * 100:.1f}; at 0.5 "
            + ", ".join(f"{r[0]} precision {r[2]:.1f} recall {r[3]:.1f}" for r in rows)]


def reporting(module: LightningModule) -> bool:
    """True during a ``validate`` or ``test`` command (not the validations inside ``fit``, not a sanity check)."""
    trainer = module.trainer
    return trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING) and not trainer.sanity_checking


def gathered(module: LightningModule, parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """This process's ``parts`` concatenated and, on several processes, every process's (uneven sizes too)."""
    local = torch.cat(parts) if parts else like[:0]
    if module.trainer.world_size > 1:
        local = torch.cat(gather_all_tensors(local))
    return local


def say(module: LightningModule, lines: list[str]) -> None:
    if module.trainer.is_global_zero:
        for line in lines:
            sys.stderr.write(line + "\n")
