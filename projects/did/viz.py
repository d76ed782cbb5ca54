"""Drawing of the DiD validation panel: image, instance-aware maps of the top classes with their boxes, views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from shared.data import IMAGENET_MEAN, IMAGENET_STD


def denormalize(x: Tensor) -> Tensor:
    """ImageNet-normalised ``[..., 3, H, W]`` -> [0, 1]."""
    mean = x.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def heatmap(m: Tensor) -> Tensor:
    """``[H, W]`` in [0, 1] -> a jet-like colour map ``[3, H, W]``."""
    return torch.stack([(1.5 - (4 * m - c).abs()).clamp(0, 1) for c in (3.0, 2.0, 1.0)])


def draw_box(img: Tensor, box: Tensor, color: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> Tensor:
    """Draw an inclusive pixel box ``(x0, y0, x1, y1)`` on a ``[3, H, W]`` image (1 px outline, copy)."""
    img = img.clone()
    x0, y0, x1, y1 = (int(v) for v in box.tolist())
    c = img.new_tensor(color).view(3, 1)
    img[:, y0, x0:x1 + 1] = c
    img[:, y1, x0:x1 + 1] = c
    img[:, y0:y1 + 1, x0] = c
    img[:, y0:y1 + 1, x1] = c
    return img


def instance_panel(image: Tensor, maps: Tensor, boxes: Tensor, views: Tensor, min_side: int = 128) -> Tensor:
    """One ``[3, 2H, (N + 1) W]`` panel in [0, 1].

    Top row: the input, then for each of the N top classes its instance-aware map (min-max normalised,
    upsampled, blended over the image) with the box drawn. Bottom row: blank, then the N local views.
    ``image [3, H, W]`` and ``views [N, 3, H, W]`` are ImageNet-normalised; ``maps [N, h, w]``;
    ``boxes [N, 4]`` inclusive pixels. Small images are enlarged (nearest) to ``min_side``.
    """
    img = denormalize(image.float().cpu())
    h, w = img.shape[-2:]
    m = F.interpolate(maps.float().cpu()[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    lo = m.amin((1, 2), keepdim=True)
    m = (m - lo) / (m.amax((1, 2), keepdim=True) - lo).clamp_min(1e-12)
    top = [img] + [draw_box(0.45 * img + 0.55 * heatmap(mi), b) for mi, b in zip(m, boxes.cpu(), strict=True)]
    bottom = [torch.ones_like(img)] + list(denormalize(views.float().cpu()))
    panel = torch.cat([torch.cat(top, 2), torch.cat(bottom, 2)], 1)
    scale = max(1, -(-min_side // h))
    return F.interpolate(panel[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else panel
