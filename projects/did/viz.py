"""Drawing of the DiD validation panel: image, instance-aware maps of the top classes with their boxes, views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from shared.panels import denormalize

CYAN = (0.0, 0.9, 1.0)  # ground-truth instances (discovered boxes: green)


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


def instance_panel(image: Tensor, maps: Tensor, boxes: Tensor, views: Tensor, min_side: int = 128,
                   truth: Tensor | None = None) -> Tensor:
    """One ``[3, 2H, (N + 1) W]`` panel in [0, 1].

    Top row: the input, then for each of the N top classes its instance-aware map (min-max normalised,
    upsampled, blended over the image) with the box drawn. Bottom row: blank, then the N local views.
    ``image [3, H, W]`` and ``views [N, 3, H, W]`` are ImageNet-normalised; ``maps [N, h, w]``;
    ``boxes [N, 4]`` inclusive pixels. ``truth [K, 4]`` (toy set: the instances' boxes, exclusive pixel edges)
    is drawn in cyan on the input. Small images are enlarged (nearest) to ``min_side``.
    """
    img = denormalize(image.float().cpu())
    h, w = img.shape[-2:]
    raw = img
    for b in (truth if truth is not None else []):
        x0, y0 = (int(v) for v in b[:2].floor().tolist())
        x1, y1 = (int(v) - 1 for v in b[2:].ceil().tolist())
        img = draw_box(img, torch.tensor([max(0, x0), max(0, y0), min(w - 1, x1), min(h - 1, y1)]), CYAN)
    m = F.interpolate(maps.float().cpu()[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    lo = m.amin((1, 2), keepdim=True)
    m = (m - lo) / (m.amax((1, 2), keepdim=True) - lo).clamp_min(1e-12)
    top = [img] + [draw_box(0.45 * raw + 0.55 * heatmap(mi), b) for mi, b in zip(m, boxes.cpu(), strict=True)]
    bottom = [torch.ones_like(img)] + list(denormalize(views.float().cpu()))
    panel = torch.cat([torch.cat(top, 2), torch.cat(bottom, 2)], 1)
    scale = max(1, -(-min_side // h))
    return F.interpolate(panel[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else panel
