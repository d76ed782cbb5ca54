"""Visual panels (images, bar charts, histograms, tables) for wandb, with a file fallback.

With a :class:`~lightning.pytorch.loggers.WandbLogger` the panels go to the wandb run. With any other logger
(CSV, none) they are written under ``<run folder>/panels/`` as PNG or JSON, so nothing is lost offline.
Call these from global rank zero only (e.g. ``if self.trainer.is_global_zero:``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from shared.data.images import IMAGENET_MEAN, IMAGENET_STD

ImageLike = np.ndarray | torch.Tensor | Image.Image


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``[..., 3, H, W]`` (the projects' transforms) -> [0, 1] for drawing."""
    mean = x.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def to_uint8_hwc(image: ImageLike) -> np.ndarray:
    """A PIL image, an HWC uint8 array, or a [C,H,W] / [H,W] float tensor in [0, 1] -> HWC uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        image = (t.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if image.dtype != np.uint8:
        raise ValueError(f"panel image: expected uint8 HWC or a float tensor in [0, 1], got dtype {image.dtype}")
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _wandb(module: LightningModule) -> WandbLogger | None:
    return next((lg for lg in module.loggers if isinstance(lg, WandbLogger)), None)


def _panel_dir(module: LightningModule) -> Path:
    root = Path(module.trainer.default_root_dir) / "panels"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _file_stem(module: LightningModule, key: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}_step{module.global_step:07d}"


def log_images(module: LightningModule, key: str, images: Sequence[ImageLike],
               captions: Sequence[str] | None = None) -> None:
    """Log a row of images (with optional captions) under ``key``."""
    arrays = [to_uint8_hwc(im) for im in images]
    if not arrays:
        return
    logger = _wandb(module)
    if logger is not None:
        logger.log_image(key=key, images=arrays, caption=list(captions) if captions else None,
                         step=module.global_step)
        return
    height = max(a.shape[0] for a in arrays)
    strip = np.concatenate([np.pad(a, ((0, height - a.shape[0]), (0, 2), (0, 0))) for a in arrays], axis=1)
    stem = _file_stem(module, key)
    Image.fromarray(strip).save(_panel_dir(module) / f"{stem}.png")
    if captions:
        (_panel_dir(module) / f"{stem}.txt").write_text("\n".join(captions))


def log_table(module: LightningModule, key: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Log a table (a list of rows) under ``key``."""
    logger = _wandb(module)
    rows = [list(r) for r in rows]
    if logger is not None:
        logger.log_table(key=key, columns=list(columns), data=rows, step=module.global_step)
        return
    path = _panel_dir(module) / f"{_file_stem(module, key)}.json"
    path.write_text(json.dumps({"columns": list(columns), "rows": rows}, indent=1, default=str))


def log_bar_chart(module: LightningModule, key: str, labels: Sequence[str], values: Sequence[float]) -> None:
    """Log a bar chart of ``values`` by ``labels`` (e.g. per-class AP)."""
    rows = [[str(label), float(value)] for label, value in zip(labels, values, strict=True)]
    logger = _wandb(module)
    if logger is not None:
        import wandb  # only with a wandb logger: wandb is slow to import and the CSV fallback needs none of it

        table = wandb.Table(columns=["label", "value"], data=rows)
        logger.experiment.log({key: wandb.plot.bar(table, "label", "value", title=key)}, step=module.global_step)
        return
    log_table(module, key, ["label", "value"], rows)


def log_histogram(module: LightningModule, key: str, values: torch.Tensor | np.ndarray, bins: int = 32) -> None:
    """Log a histogram of ``values`` (e.g. a router's modality weights over the validation set)."""
    array = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    logger = _wandb(module)
    if logger is not None:
        import wandb

        logger.experiment.log({key: wandb.Histogram(array, num_bins=bins)}, step=module.global_step)
        return
    counts, edges = np.histogram(array, bins=bins)
    log_table(module, key, ["bin_start", "bin_end", "count"],
              [[float(a), float(b), int(c)] for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)])
