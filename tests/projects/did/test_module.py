"""DiD LightningModule: the metrics on a hand-computed example, the two-branch loss."""

import pytest
import torch
import torch.nn.functional as F

from projects.did.losses import multilabel_targets, two_view_loss
from projects.did.model import DiD
from projects.did.module import DiDModule, Loss
from shared.metrics import multilabel_metrics

TINY = dict(num_classes=2, backbone="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
            num_heads=2, hidden_dropout=0.0, top_n=2)

# 4 images, 2 classes; -1 = difficult (ignored by AP, negative for CP..OF1).
SCORES = torch.tensor([[2.0, -1.0], [1.0, 0.5], [-0.5, 3.0], [0.2, -2.0]])
TARGETS = torch.tensor([[1, 0], [0, -1], [1, 1], [-1, 0]])


def test_map_and_threshold_metrics_on_a_hand_computed_example() -> None:
    module = DiDModule(DiD(**TINY))
    metric = module.val_metrics["fused"]
    metric.update(SCORES, TARGETS)
    got = {k: float(v) for k, v in metric.compute().items()}
    # Class 0 without the difficult image 3: ranks pos, neg, pos -> AP = (1 + 2/3) / 2 = 5/6.
    # Class 1 without the difficult image 1: pos first -> AP = 1.  mAP = 11/12.
    assert got["fused/mAP"] == pytest.approx(100 * 11 / 12, abs=1e-4)
    # logit >= 0: class 0 predicted on images 0, 1, 3 (1 correct of 2 true), class 1 on 1, 2 (1 of 1).
    cp, cr, op, or_ = (1 / 3 + 1 / 2) / 2, (1 / 2 + 1) / 2, 2 / 5, 2 / 3
    expected = {"CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr), "OP": op, "OR": or_,
                "OF1": 2 * op * or_ / (op + or_)}
    for k, v in expected.items():
        assert got[f"fused/{k}"] == pytest.approx(100 * v, abs=1e-4), k
        assert got[f"fused/{k}_top3"] == pytest.approx(100 * v, abs=1e-4), k   # 2 classes: top-3 = all
    # Top-1: class 0 on images 0, 1, 3 (1 correct), class 1 on image 2 (correct).
    top1 = multilabel_metrics(2, top_k=1)
    top1.update(SCORES, TARGETS)
    t1 = {k: float(v) for k, v in top1.compute().items()}
    assert t1["CP_top1"] == pytest.approx(100 * (1 / 3 + 1) / 2, abs=1e-4)
    assert t1["OP_top1"] == pytest.approx(50.0, abs=1e-4) and t1["OR_top1"] == pytest.approx(200 / 3, abs=1e-4)
    assert set(module.branches) == {"global", "local", "fused"}
    assert DiDModule(DiD(**TINY, local_views=False)).branches == ("global", "fused")


@pytest.mark.filterwarnings("ignore:You are trying to")
@pytest.mark.parametrize("difficult_as_positive", [True, False])
def test_loss_is_bce_on_global_plus_local(difficult_as_positive: bool) -> None:
    torch.manual_seed(0)
    module = DiDModule(DiD(**TINY), loss={"difficult_as_positive": difficult_as_positive})
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 0.0]])
    loss = module.training_step((x, t), 0)
    out = module.net(x)
    y = (t != 0).float() if difficult_as_positive else (t > 0).float()
    bce = F.binary_cross_entropy_with_logits
    expected = bce(out["global"], y) + bce(out["local"], y)
    torch.testing.assert_close(loss, expected)
    # The loss function alone: the local term weighed, and left out for the ViT baseline (no local logits).
    got, parts = two_view_loss(out["global"], out["local"], multilabel_targets(t, difficult_as_positive), 0.5)
    torch.testing.assert_close(got, bce(out["global"], y) + 0.5 * bce(out["local"], y))
    assert set(parts) == {"global", "local"}
    got, parts = two_view_loss(out["global"], None, multilabel_targets(t, difficult_as_positive))
    assert torch.equal(got, bce(out["global"], y)) and set(parts) == {"global"}
    assert Loss(**module.hparams["loss"]) == module.loss
