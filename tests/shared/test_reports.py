"""Per-class reports of validate / test: the numbers in the CSV files follow from the inputs, and the PNGs exist."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from shared.reports import binary_report, classification_report, multilabel_report


def module(tmp_path: Path):
    return SimpleNamespace(trainer=SimpleNamespace(default_root_dir=str(tmp_path)), loggers=[], global_step=0)


def rows(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open()))


def test_the_classification_report_counts_the_confusions(tmp_path):
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 1, 0])
    line = classification_report(module(tmp_path), "val", ["a", "b", "c"], labels, preds)[0]
    out = tmp_path / "reports" / "val"
    assert rows(out / "confusion_matrix.csv")[1:] == [["a", "1", "2", "0"], ["b", "0", "2", "0"], ["c", "1", "0", "0"]]
    assert rows(out / "per_class.csv")[1:] == [["a", "3", "1", "33.33"], ["b", "2", "2", "100.0"],
                                               ["c", "1", "0", "0.0"]]
    assert rows(out / "top_confusions.csv")[1:] == [["a", "b", "2"], ["c", "a", "1"]]
    assert (out / "confusion_matrix.png").stat().st_size > 1000 and (tmp_path / "panels").is_dir()
    assert "worst classes (top-1 %) c 0.0, a 33.3, b 100.0; top confusions a->b x2, c->a x1" in line


def test_the_multilabel_report_gives_per_class_ap_precision_recall(tmp_path):
    scores = torch.tensor([[2.0, -1.0], [1.0, 1.0], [-1.0, 2.0], [-2.0, -2.0]])   # logits, threshold 0
    targets = torch.tensor([[1, 0], [0, 1], [0, 1], [1, 0]])
    line = multilabel_report(module(tmp_path), "test", ["cat", "dog"], scores, targets)[0]
    out = tmp_path / "reports" / "test"
    table = {r[0]: r[1:] for r in rows(out / "per_class.csv")[1:]}
    assert table["cat"][:1] == ["2"] and float(table["cat"][2]) == pytest.approx(50.0)     # P: 1 of 2 predicted
    assert float(table["cat"][3]) == pytest.approx(50.0) and float(table["dog"][3]) == pytest.approx(100.0)
    assert float(table["dog"][1]) == pytest.approx(100.0)                                    # AP: both ranked first
    assert dict(rows(out / "overall.csv")[1:])["OP"] == "75.0"                               # 3 of 4 predicted right
    assert (out / "per_class_ap.png").is_file() and "worst classes (AP %) cat" in line


def test_the_binary_report_draws_the_roc_and_splits_precision_recall_by_class(tmp_path):
    probs = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.1])
    labels = torch.tensor([1, 1, 1, 0, 0])
    line = binary_report(module(tmp_path), "val", probs, labels, ("not hateful", "hateful"))[0]
    out = tmp_path / "reports" / "val"
    assert rows(out / "confusion_matrix.csv")[1:] == [["not hateful", "1", "1"], ["hateful", "1", "2"]]
    assert rows(out / "per_class.csv")[1:] == [["not hateful", "2", "50.0", "50.0"],
                                               ["hateful", "3", "66.67", "66.67"]]
    assert "AUROC 83.3" in line            # 5 of the 6 positive-negative pairs ranked right
    assert (out / "roc.png").is_file() and len(rows(out / "roc.csv")) == 1 + 6
