"""Bench rows of the shared core (``python -m shared.bench [FILTER]``).

Each section below belongs to one shared module.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from shared.attention import mask_to_box
from shared.backbones.vit import ViTBackbone
from shared.bench.registry import BenchCase, device_target, register

BOX_TARGET = device_target(gpu=10.0, cpu=1.0)   # the box steps vs a per-sample loop


# ----------------------------------------------------------------------------------------------------------
# shared.attention.mask_to_box
# ----------------------------------------------------------------------------------------------------------
def _mask_to_box_case(batch: int, size: int) -> BenchCase:
    """``batch`` smooth 28x28 maps (rollout-like), bilinearly upsampled to ``size`` when larger (DiD's full-resolution
    boxes: the official threshold at 448), thresholded at 1.2 x their mean (RAMS-Trans' DPPM rule)."""
    gen = torch.Generator().manual_seed(0)
    maps = F.avg_pool2d(torch.rand(batch, 1, 28, 28, generator=gen), 3, 1, 1, count_include_pad=False)
    if size != 28:
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    maps = maps[:, 0]
    masks = maps > 1.2 * maps.mean((1, 2), keepdim=True)
    structure = np.ones((3, 3), dtype=bool)                        # 8-connectivity

    def scipy_loop() -> tuple[np.ndarray, np.ndarray]:
        m = masks.cpu().numpy()
        boxes = np.tile(np.array([0, 0, m.shape[2], m.shape[1]], dtype=np.int64), (m.shape[0], 1))
        found = np.zeros(m.shape[0], dtype=bool)
        for i in range(m.shape[0]):
            lab, num = ndi.label(m[i], structure=structure)
            if num == 0:
                continue
            area = np.bincount(lab.ravel())
            area[0] = 0
            ys, xs = np.nonzero(lab == area.argmax())
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            found[i] = True
        return boxes, found

    return BenchCase(method=lambda: mask_to_box(masks), baseline=scipy_loop,
                     details={"batch": batch, "map": f"{size}x{size}", "tensors_on": "cpu",
                              "labelling": "c (scipy, one call)" if masks.device.type == "cpu" else "device",
                              "mask_density": round(float(masks.float().mean()), 3)})


@register("shared/mask_to_box: default labelling vs scipy loop (B=32, 28x28)", target=BOX_TARGET,
          kind="speedup")
def _mask_to_box_row() -> BenchCase:
    return _mask_to_box_case(32, 28)


@register("shared/mask_to_box: default labelling vs scipy loop (B=32, 448x448)", target=BOX_TARGET,
          kind="speedup", repeats=7, warmup=1)
def _mask_to_box_448_row() -> BenchCase:
    return _mask_to_box_case(32, 448)


# ----------------------------------------------------------------------------------------------------------
# shared.backbones.vit: attention capture
# ----------------------------------------------------------------------------------------------------------
def _vit_capture_case(name: str, img_size: int, batch: int = 2) -> BenchCase:
    """method: ViTBackbone with attention capture; baseline: the same weights' timm forward_features (SDPA)."""
    torch.manual_seed(0)
    backbone = ViTBackbone(name, img_size=img_size).eval()
    x = torch.randn(batch, 3, img_size, img_size)
    return BenchCase(method=lambda: backbone(x, return_attention=True),
                     baseline=lambda: backbone.model.forward_features(x),
                     details={"model": name, "img_size": img_size, "batch": batch,
                              "tokens": backbone.num_patches + backbone.num_prefix_tokens})


@register("shared/vit: attention capture vs plain timm (ViT-Ti/16 224, B=2)", target=1.15, kind="overhead")
def _vit_tiny_capture() -> BenchCase:
    return _vit_capture_case("vit_tiny_patch16_224", 224)


@register("shared/vit: attention capture vs plain timm (ViT-B/16 448, B=2)", target=1.15, kind="overhead",
          repeats=5, warmup=1)
def _vit_base_capture() -> BenchCase:
    return _vit_capture_case("vit_base_patch16_224", 448)
