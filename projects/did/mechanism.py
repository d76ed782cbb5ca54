"""Do DiD's discovered boxes land on the instances? The mechanism measure of the toy task.

The toy COCO writer records every instance's box (``annotations/instances_val2014.json``, COCO ``bbox`` =
x, y, w, h with exclusive end x + w). On the validation images the loader keeps (images without annotations
are dropped), through the DataModule's validation transform (a square resize to ``img_size``; boxes are
scaled as continuous pixel edges, exactly; the toy boxes cover every pixel PIL may draw, so they are usually
one source pixel loose at the right and bottom), this compares them with the N boxes DiD discovers for its top-N
predicted classes (``DiD.discover``: inclusive input pixels):

* ``instance_hit``: fraction of instances that some box of their image covers with IoU >= 0.5 (any class);
* ``instance_hit_same_class``: the same, counting only the boxes discovered for the instance's own class;
* ``best_iou``: mean over instances of the best IoU with a box of their image (any class);
* ``absent_box_frac``: fraction of the N boxes per image spent on classes absent from the image;
  ``absent_box_floor``: the least any ranking must spend there (images with fewer than N classes);
* ``box_area``: mean box area as a fraction of the input; ``found``: fraction of boxes whose thresholded map
  was non-empty (an empty one gives the ``empty_box`` fallback, which is counted like any other box).

The boxes come from the backbone's attentions and class maps through ``DiD.discover``, the step ``DiD.forward``
runs before its local branch (same boxes, tested), so the ViT baseline (``local_views=False``), which is
trained without local views, is measured too: its boxes are what discovery would pick from its own global
logits, class maps and attentions.

    python -m projects.did.mechanism --ckpt logs/did/<run>/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from projects.did.data import DiDData, MultiLabelImages
from projects.did.model import DiD
from projects.did.module import DiDModule
from shared.errors import run_with_clear_errors
from shared.study import rebuild_toy_run


def box_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """IoU of inclusive-pixel boxes ``pred [..., N, 4]`` with continuous exclusive-end boxes ``gt [..., K, 4]``
    -> ``[..., K, N]``. An inclusive box (x0..x1) covers the continuous span [x0, x1 + 1)."""
    p = pred.double() + pred.new_tensor([0, 0, 1, 1]).double()
    g = gt.double()
    lo = torch.maximum(g[..., :, None, :2], p[..., None, :, :2])
    hi = torch.minimum(g[..., :, None, 2:], p[..., None, :, 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    area_p = (p[..., 2:] - p[..., :2]).clamp_min(0).prod(-1)[..., None, :]
    area_g = (g[..., 2:] - g[..., :2]).clamp_min(0).prod(-1)[..., :, None]
    return inter / (area_p + area_g - inter).clamp_min(1e-12)


def mechanism_figures(boxes: Tensor, top_classes: Tensor, found: Tensor, gt_boxes: Tensor, gt_classes: Tensor,
                      image_size: tuple[int, int], iou: float = 0.5) -> dict[str, float]:
    """The figures of the module docstring from discovered ``boxes [M, N, 4]`` (inclusive input pixels),
    ``top_classes [M, N]``, ``found [M, N]`` and the instances ``gt_boxes [M, K, 4]`` / ``gt_classes [M, K]``
    (``val_instances``' layout, -1 = padding)."""
    valid = gt_classes >= 0                                                    # [M, K]
    ious = box_iou(boxes, gt_boxes)                                            # [M, K, N]
    same = gt_classes[:, :, None] == top_classes[:, None, :]                   # [M, K, N]
    hit = (ious >= iou).any(-1)
    hit_same = ((ious >= iou) & same).any(-1)
    present = (top_classes[:, :, None] == gt_classes[:, None, :]).any(-1)    # [M, N]: padding never matches
    h, w = image_size
    area = ((boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)).double() / (h * w)
    n = int(valid.sum())
    c = int(torch.cat([gt_classes.flatten(), top_classes.flatten()]).max()) + 1
    classes_in = torch.zeros(gt_classes.shape[0], c + 1, dtype=torch.float64).scatter_(1, gt_classes + 1, 1.0)
    n_classes = classes_in[:, 1:].sum(1)                                      # column 0 took the padding
    floor = (top_classes.shape[1] - n_classes).clamp_min(0) / top_classes.shape[1]
    best = ious.amax(-1)
    return {"instance_hit": float(hit[valid].double().sum()) / max(1, n),
            "instance_hit_same_class": float(hit_same[valid].double().sum()) / max(1, n),
            "best_iou": float(best[valid].sum()) / max(1, n),
            "absent_box_frac": float((~present).double().mean()), "absent_box_floor": float(floor.mean()),
            "box_area": float(area.mean()),
            "found": float(found.double().mean()), "n_instances": n, "n_images": int(boxes.shape[0])}


@torch.no_grad()
def discover_boxes(model: DiD, x: Tensor) -> dict[str, Tensor]:
    """``DiD.discover`` on ``x`` from the model's own class maps, global logits and attentions (any model)."""
    tokens, attentions = model.backbone(x, return_attention=True)
    s = model.class_maps(tokens)
    return model.discover(x, s, s.mean((2, 3)), attentions)


@torch.no_grad()
def measure(model: DiD, ds: MultiLabelImages, gt_boxes: Tensor, gt_classes: Tensor, batch_size: int = 128
            ) -> dict[str, float]:
    """Discovered boxes on every image of ``ds`` (eval mode, batched) -> :func:`mechanism_figures`."""
    was_training = model.training
    model.eval()
    boxes, top, found, size = [], [], [], None
    for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        out = discover_boxes(model, x)
        boxes.append(out["boxes"])
        top.append(out["top_classes"])
        found.append(out["found"])
        size = tuple(x.shape[-2:])
    model.train(was_training)
    if size is None:
        raise ValueError("measure: the validation set is empty")
    return mechanism_figures(torch.cat(boxes), torch.cat(top), torch.cat(found), gt_boxes, gt_classes, size)


def measure_checkpoint(ckpt: str | Path, batch_size: int = 128) -> dict[str, float]:
    """Rebuild a toy run's model and validation set from its Lightning checkpoint (our own file: weights only)."""
    module, data, dm = rebuild_toy_run(ckpt, DiDModule, DiDData, "the instance-discovery measure")
    data.prepare_data()                                         # no-op when the same toy set is there
    data.setup("validate")
    gt_boxes, gt_classes = data.val_instance_boxes                # the toy set's instances (DiDData.setup)
    return measure(module.net, data.val_set, gt_boxes, gt_classes, batch_size)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a toy run's checkpoint, e.g. logs/did/<run>/checkpoints/last.ckpt")
    p.add_argument("--batch_size", type=int, default=128)
    args = p.parse_args(argv)
    print(json.dumps(run_with_clear_errors(measure_checkpoint, args.ckpt, args.batch_size)))


if __name__ == "__main__":
    main()
