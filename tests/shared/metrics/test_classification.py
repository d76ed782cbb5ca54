"""Tests for shared.metrics.classification on small hand-made examples."""

import pytest
import torch

from shared.metrics import binary_metrics, topk_accuracy


def test_topk_accuracy_hand_made():
    # labels 0, 1, 2, 3; true-class rank per sample: 1st, 2nd, 6th, 3rd
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],
            [9.0, 8, 2, 3, 4, 5],
            [9.0, 8, 0, 6, 5, 4],
            [1.0, 2, 3, 2.5, 4, 5],
        ]
    )
    labels = torch.tensor([0, 1, 2, 3])
    metrics = topk_accuracy(6)
    metrics.update(logits[:2], labels[:2])
    metrics.update(logits[2:], labels[2:])
    out = metrics.compute()
    assert set(out) == {"top1", "top5"}
    assert out["top1"].item() == pytest.approx(1 / 4)  # sample 0 only
    assert out["top5"].item() == pytest.approx(3 / 4)  # all but sample 2


def test_topk_accuracy_fewer_classes_than_k():
    metrics = topk_accuracy(3, prefix="val/")
    metrics.update(torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]]), torch.tensor([2, 0]))
    out = metrics.compute()
    assert out["val/top1"].item() == pytest.approx(0.5)
    assert out["val/top5"].item() == pytest.approx(1.0)  # top_k capped at 3 classes


def test_binary_metrics_logits_and_probabilities():
    target = torch.tensor([0, 0, 1, 1, 1])
    logits = torch.tensor([-2.0, 0.8, 0.3, 1.0, -1.0])
    # positives {0.3, 1.0, -1.0} vs negatives {-2.0, 0.8}: pairs won 2 + 1 + 1 = 4 out of 6 -> AUROC 2/3
    # predictions (logit > 0): 0 1 1 1 0 -> correct 1, 0, 1, 1, 0 -> acc 3/5
    metrics = binary_metrics()
    # the first batch (0.8, 0.3) lies inside [0, 1]: it must still be read as logits (plain torchmetrics
    # would take it as probabilities -> 0.3 negative, 0.8 positive, both wrong -> acc 2/5)
    metrics.update(logits[[1, 2]], target[[1, 2]])
    metrics.update(logits[[0, 3, 4]], target[[0, 3, 4]])
    out = metrics.compute()
    assert set(out) == {"auroc", "acc"}
    assert out["auroc"].item() == pytest.approx(2 / 3)
    assert out["acc"].item() == pytest.approx(3 / 5)
    probs = binary_metrics(from_logits=False)
    probs.update(torch.sigmoid(logits), target)
    out_p = probs.compute()
    assert out_p["auroc"].item() == pytest.approx(2 / 3)
    assert out_p["acc"].item() == pytest.approx(3 / 5)
