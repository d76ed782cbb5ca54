"""RAMS-Trans validation panels and predicted boxes: the image, the rollout heat map with the DPPM box, the crop."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from shared.panels import denormalize

CYAN, GREEN = (0, 230, 255), (0, 255, 0)  # panel colours: ground-truth part, DPPM box


def dppm_panels(out: dict[str, list[Tensor]], part_boxes: Tensor | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Per sample, one strip: the scale-1 image | the rollout score map as a heat map with the DPPM box |
    the amplified crop (and further scales). HWC uint8 arrays for :func:`shared.panels.log_images`.

    ``part_boxes`` ``[B, 4]`` (exclusive ends, toy set): the ground-truth part, drawn in cyan on the image and on
    the heat map, so a reader sees whether the DPPM box (green) holds it (``mechanism.py`` counts it)."""
    images, captions = [], []
    for i in range(out["inputs"][0].shape[0]):
        tiles = []
        for k, (boxes, g) in enumerate(zip(out["boxes"], out["score_maps"], strict=True)):
            img = (denormalize(out["inputs"][k][i]).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            truth = None
            if k == 0:
                if part_boxes is not None:
                    x0, y0, x1, y1 = part_boxes[i].tolist()
                    truth = (x0, y0, x1 - 1, y1 - 1)
                tiles.append(_with_box(img, truth, CYAN))
            s = img.shape[0]
            heat = F.interpolate(g[i][None, None].float(), size=(s, s), mode="bilinear", align_corners=False)[0, 0]
            heat = heat.clamp(0, 1).numpy()[..., None]
            red = np.array([255.0, 40.0, 0.0])
            blend = (0.45 * img + 0.55 * heat * red + 0.55 * (1 - heat) * img * 0.3).clip(0, 255).astype(np.uint8)
            tiles.append(_with_box(_with_box(blend, truth, CYAN), tuple(boxes[i].tolist()), GREEN))
            nxt = (denormalize(out["inputs"][k + 1][i]).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            tiles.append(nxt)
        sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        images.append(np.concatenate([t for tile in tiles for t in (tile, sep)][:-1], axis=1))
        found = " ".join(str(bool(f[i])) for f in out["found"])
        truth = "" if part_boxes is None else f", part (cyan) {part_boxes[i].tolist()}"
        captions.append(f"image | rollout + DPPM box (green) {out['boxes'][0][i].tolist()} (found={found}){truth} | "
                        "amplified crop")
    return images, captions


def _with_box(img: np.ndarray, box: tuple[int, int, int, int] | None, rgb: tuple[int, int, int]) -> np.ndarray:
    """``img`` with the inclusive pixel box outlined in ``rgb`` (unchanged when ``box`` is None)."""
    if box is None:
        return img
    pil = Image.fromarray(img)
    ImageDraw.Draw(pil).rectangle(box, outline=rgb, width=max(1, img.shape[0] // 64))
    return np.asarray(pil)


def boxes_in_input_frame(boxes: list[Tensor], size: int) -> list[Tensor]:
    """Each transition's box ``[B, 4]`` (inclusive pixels of the previous scale's ``size`` x ``size`` image) in the
    input view's pixels: scale k's image is the crop of box k-1 resized to ``size``, so boxes compose."""
    out, frame = [], None
    for b in boxes:
        b = b.double()
        if frame is not None:  # frame: [B, 4] crop of the previous scale, inclusive input pixels
            scale = torch.stack([frame[:, 2] - frame[:, 0] + 1, frame[:, 3] - frame[:, 1] + 1], 1) / size
            b = torch.cat([frame[:, :2] + b[:, :2] * scale, frame[:, :2] + (b[:, 2:] + 1) * scale - 1], 1)
        out.append(b)
        frame = b
    return out
