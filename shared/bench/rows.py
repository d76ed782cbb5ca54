"""Bench rows of the shared core (``python -m shared.bench [FILTER]``).

Each section below belongs to one shared module; keep imports local to the setup functions so that importing
this file stays cheap and one section's dependencies never break another's.
"""

from __future__ import annotations

from shared.bench import BenchCase, register


# ----------------------------------------------------------------------------------------------------------
# shared.attention.mask_to_box
# ----------------------------------------------------------------------------------------------------------
@register("shared/mask_to_box: batched vs scipy loop (B=32, 28x28)", target=10.0, kind="speedup")
def _mask_to_box_row() -> BenchCase:
    """RAMS-Trans DPPM setting: 32 rollout maps of 28x28 patches, thresholded at 1.2 x their mean."""
    import numpy as np
    import scipy.ndimage as ndi
    import torch
    import torch.nn.functional as F

    from shared.attention import mask_to_box

    gen = torch.Generator().manual_seed(0)
    maps = F.avg_pool2d(torch.rand(32, 1, 28, 28, generator=gen), 3, 1, 1, count_include_pad=False)[:, 0]
    masks = maps > 1.2 * maps.mean((1, 2), keepdim=True)          # DPPM: g > eta * mean(g), eta = 1.2
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
                     details={"batch": 32, "map": "28x28", "tensors_on": "cpu",
                              "mask_density": round(float(masks.float().mean()), 3)})


# ----------------------------------------------------------------------------------------------------------
# shared.backbones.vit: attention capture
# ----------------------------------------------------------------------------------------------------------
def _vit_capture_case(name: str, img_size: int, batch: int = 2) -> BenchCase:
    """method: ViTBackbone with attention capture; baseline: the same weights' timm forward_features (SDPA)."""
    import torch

    from shared.backbones.vit import ViTBackbone

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
