"""DiD mechanism measure: IoU with inclusive / exclusive ends, the hit and absent figures on hand-made boxes, the
instance boxes mapped into the validation input, and ``measure_checkpoint`` on the shared short fit's checkpoint."""

import json
import math
from pathlib import Path

import pytest
import torch

from projects.did.data import TOY_CATEGORY_IDS, TOY_COLORS, COCO2014Dataset, DiDData, build_transform, val_instances
from projects.did.mechanism import box_iou, discover_boxes, measure_checkpoint, mechanism_figures
from projects.did.mechanism import main as mechanism_main
from projects.did.model import DiD
from projects.did.module import DiDModule
from projects.did.viz import CYAN, instance_panel
from shared.data import IMAGENET_MEAN, IMAGENET_STD
from shared.data.toyworld import COLORS
from tests.projects.did.toy_set import TOY


def test_iou_of_an_inclusive_box_with_an_exclusive_end_box() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])                                 # 10 x 10 px, exclusive end
    pred = torch.tensor([[0, 0, 9, 9], [0, 0, 4, 9], [10, 0, 19, 9], [5, 5, 14, 14]])   # inclusive
    iou = box_iou(pred, gt)[0]
    torch.testing.assert_close(iou, torch.tensor([1.0, 0.5, 0.0, 25 / 175], dtype=torch.float64))


def test_hit_same_class_and_absent_on_hand_made_boxes() -> None:
    # Image 0: instances of class 1 at (0, 0)-(10, 10) and class 2 at (20, 20)-(30, 30); image 1: class 0 only.
    gt_boxes = torch.tensor([[[0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 32, 32], [0, 0, 0, 0]]], dtype=torch.float64)
    gt_classes = torch.tensor([[1, 2], [0, -1]])
    # Image 0: a box on the class-1 instance discovered for class 2, a box on nothing for class 3 (absent).
    # Image 1: the whole image for class 0 (hit, same class), a tiny box for class 1 (absent), not found.
    boxes = torch.tensor([[[0, 0, 9, 9], [40, 40, 49, 49]], [[0, 0, 31, 31], [0, 0, 0, 0]]])
    top = torch.tensor([[2, 3], [0, 1]])
    found = torch.tensor([[True, True], [True, False]])
    got = mechanism_figures(boxes, top, found, gt_boxes, gt_classes, (64, 32))
    assert got["n_instances"] == 3 and got["n_images"] == 2
    assert got["instance_hit"] == pytest.approx(2 / 3)                 # class-1 and class-0 instances
    assert got["instance_hit_same_class"] == pytest.approx(1 / 3)      # the class-1 box was found for class 2
    assert got["best_iou"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert got["absent_box_frac"] == pytest.approx(2 / 4)              # class 3 in image 0, class 1 in image 1
    assert got["absent_box_floor"] == pytest.approx((0 / 2 + 1 / 2) / 2)  # image 1 has 1 class for its 2 boxes
    assert got["box_area"] == pytest.approx((100 + 100 + 1024 + 1) / 4 / (64 * 32))
    assert got["found"] == pytest.approx(3 / 4)


def test_discover_boxes_are_the_forward_pass_boxes() -> None:
    torch.manual_seed(0)
    model = DiD(4, "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                top_n=2).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    got = discover_boxes(model, x)
    for key in ("boxes", "top_classes", "found"):
        torch.testing.assert_close(got[key], out[key])


def test_instance_boxes_land_on_their_objects_in_the_resized_input(toy_root: Path) -> None:
    """Toy set written at 64 px, read through the 96 px validation transform: inside each mapped box the object's
    colour fills a good part, and it comes within 2 px of each of the box's four edges. (The toy boxes cover
    every pixel PIL may draw, so they are typically 1 source pixel = 1.5 px here loose at the far edges.)"""
    size = 96
    ds = COCO2014Dataset(toy_root, "val", build_transform(size, train=False))
    boxes, classes = val_instances(ds, toy_root / "annotations" / "instances_val2014.json", size)
    assert len(ds) == TOY["n_val"] - 1 and boxes.shape[0] == len(ds)     # the empty scene is dropped
    assert "COCO_val2014_000000000063.png" not in {p.name for p in ds.paths}
    assert boxes.max() <= size and (classes >= 0).sum() == int((ds.targets > 0).sum())
    kinds = sorted(TOY_CATEGORY_IDS, key=TOY_CATEGORY_IDS.get)           # class index -> shape
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for m in range(len(ds)):
        pixels = (ds[m][0] * std + mean) * 255                           # [3, H, W] in 0..255
        for b, c in zip(boxes[m], classes[m], strict=True):
            if c < 0:
                continue
            rgb = torch.tensor(COLORS[TOY_COLORS[kinds[c]]], dtype=torch.float32)[:, None, None]
            x0, y0, x1, y1 = b.tolist()
            near = ((pixels - rgb).abs().amax(0) < 60)[math.floor(y0):math.ceil(y1), math.floor(x0):math.ceil(x1)]
            assert near.float().mean() > 0.2, (m, b)
            e = 3                                                        # px strips just inside each edge
            assert near[:, :e].any() and near[:, -e:].any() and near[:e].any() and near[-e:].any(), (m, b)


def test_measure_checkpoint_of_a_short_fit_and_of_a_baseline(short_fit: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    ckpt = short_fit / "checkpoints" / "last.ckpt"
    got = measure_checkpoint(ckpt)
    n_val = TOY["n_val"] - 1
    assert got["n_images"] == n_val and got["n_instances"] >= n_val
    for key in ("instance_hit", "instance_hit_same_class", "best_iou", "absent_box_frac", "absent_box_floor",
                "box_area", "found"):
        assert 0.0 <= got[key] <= 1.0, key
    assert got["instance_hit_same_class"] <= got["instance_hit"] and got["absent_box_floor"] <= got["absent_box_frac"]
    # The CLI prints the same figures on one JSON line.
    mechanism_main(["--ckpt", str(ckpt)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == pytest.approx(got)

    # A ViT baseline checkpoint (model.net.local_views false), built by hand in the CLI's layout, is measured too.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = {k: v for k, v in state["hyper_parameters"].items() if k != "_instantiator"}
    net_args = {**hp["net"]["init_args"], "local_views": False}
    hp["net"] = {**hp["net"], "init_args": net_args}
    baseline = DiDModule(DiD(**{**net_args, "pretrained": False}))
    torch.save({"hyper_parameters": hp, "datamodule_hyper_parameters": state["datamodule_hyper_parameters"],
                "state_dict": baseline.state_dict()}, tmp_path / "baseline.ckpt")
    base = measure_checkpoint(tmp_path / "baseline.ckpt")
    assert base["n_images"] == n_val and base["n_instances"] == got["n_instances"]

    torch.save({"hyper_parameters": hp, "datamodule_hyper_parameters": {**state["datamodule_hyper_parameters"],
                                                                       "dataset": "coco2014"},
                "state_dict": baseline.state_dict()}, tmp_path / "coco.ckpt")
    with pytest.raises(ValueError, match="toy dataset"):
        measure_checkpoint(tmp_path / "coco.ckpt")


def test_datamodule_exposes_the_instances_and_the_panel_draws_them(toy_root: Path) -> None:
    data = DiDData("toy", str(toy_root), img_size=64, toy_train=TOY["n_train"], toy_val=TOY["n_val"])
    data.prepare_data()
    data.setup("validate")
    boxes, classes = data.val_instance_boxes
    assert boxes.shape[0] == len(data.val_set) and (classes >= 0).sum() == int((data.val_set.targets > 0).sum())
    x = data.val_set[0][0]
    truth = boxes[0][classes[0] >= 0]
    maps, found = torch.rand(2, 8, 8), torch.tensor([[0, 0, 63, 63], [4, 4, 20, 20]])
    panel = instance_panel(x, maps, found, torch.stack([x, x]), min_side=64, truth=truth)
    x0, y0 = (int(v) for v in truth[0, :2].floor().tolist())
    assert torch.allclose(panel[:, y0, x0], torch.tensor(CYAN))          # the instance's box corner, input tile
    plain = instance_panel(x, maps, found, torch.stack([x, x]), min_side=64)
    assert not torch.equal(panel[:, :64, :64], plain[:, :64, :64]) and torch.equal(panel[:, :, 64:], plain[:, :, 64:])
