"""What the routing did on the validation set (docs/papers/drdf.md §8, modality report): the toy set's routing
metrics and the panels (a_t histogram, mean expert weights per class, the most text- / image-heavy samples).

``gathered`` holds every process's validation records, concatenated: ``a_t`` [N], ``weights`` [N, K], ``label``,
``decided_by`` (toy: 0 text, 1 image; -1 unknown), ``aspect`` (toy: 0 verdict, 1 colour, 2 shape; -1) and
``correct`` [N]; ``records`` is this process's list of per-batch dicts (they also carry ``id``, ``prob`` [B, C]
and ``text``).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from shared.panels import log_bar_chart, log_histogram, log_table

ASPECTS = ("verdict", "colour", "shape")


def toy_routing_metrics(g: dict[str, Tensor], routed: bool, text_only: list[int]) -> dict[str, Tensor | float]:
    """On the toy set (known ``decided_by`` / ``aspect``; ``{}`` elsewhere): accuracy per group; when ``routed``,
    how well a_t and the weight on the ``text_only`` experts separate the text-decided (positive) from the
    image-decided memes (AUROC), and the mean weight of each expert per aspect (``val/w{k}_{aspect}``)."""
    split = g["decided_by"]
    known = split >= 0
    if not (known.any() and (split[known] == 0).any() and (split[known] == 1).any()):
        return {}
    is_text = (split[known] == 0).long()
    correct = g["correct"][known].float()
    out: dict[str, Tensor | float] = {"val/acc_text_decided": correct[is_text == 1].mean(),
                                      "val/acc_image_decided": correct[is_text == 0].mean()}
    if not routed:
        return out  # constant weights: nothing to separate
    out["val/a_t_auroc_text_decided"] = binary_auroc(g["a_t"][known], is_text)
    w = g["weights"].float()
    if text_only:
        out["val/w_text_auroc_text_decided"] = binary_auroc(w[:, text_only].sum(-1)[known], is_text)
    for code, name in enumerate(ASPECTS):
        rows = g["aspect"] == code
        if rows.any():
            for k, mean_w in enumerate(w[rows].mean(0).tolist()):
                out[f"val/w{k}_{name}"] = mean_w
    return out


def log_routing_panels(module: LightningModule, gathered: dict[str, Tensor], records: list[dict[str, Any]],
                       rows: int) -> None:
    """``val/a_t_hist``, ``val/expert_weights_per_class`` and ``val/extreme_modality_samples`` (the ``rows`` most
    text-heavy and most image-heavy samples of this process: texts are not gathered across processes)."""
    log_histogram(module, "val/a_t_hist", gathered["a_t"])
    w, labels = gathered["weights"].float(), gathered["label"]
    K = w.shape[1]
    names, values = [], []
    for c in labels.unique().tolist():
        names += [f"class {c} / expert {k}" for k in range(K)]
        values += w[labels == c].mean(0).tolist()
    log_bar_chart(module, "val/expert_weights_per_class", names, values)
    a_t = torch.cat([r["a_t"] for r in records]).float().cpu()
    texts = [t for r in records for t in r["text"]]
    ids = torch.cat([r["id"] for r in records]).tolist()
    lab = torch.cat([r["label"] for r in records]).tolist()
    dec = torch.cat([r["decided_by"] for r in records]).tolist()
    prob = torch.cat([r["prob"] for r in records]).float().cpu()
    n = min(rows, a_t.numel())
    order = a_t.argsort(descending=True)
    table = []
    for kind, idx in (("text-heavy", order[:n]), ("image-heavy", order.flip(0)[:n])):
        for i in idx.tolist():
            table.append([kind, ids[i], round(float(a_t[i]), 4), lab[i], round(float(prob[i].max()), 4),
                          int(prob[i].argmax()), {0: "text", 1: "image"}.get(dec[i], "?"), texts[i]])
    log_table(module, "val/extreme_modality_samples",
              ["kind", "id", "a_t", "label", "p_max", "pred", "decided_by", "text"], table)
