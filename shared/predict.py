"""``predict`` on a folder of images: reading the folder, the output files and the box overlays.

``python -m projects.<name> predict --config ... --ckpt_path ... --data.predict_dir <folder> [--write_overlays true]``

A project's DataModule builds an :class:`ImageFolderDataset` from ``data.predict_dir`` (with
:func:`scan_image_folder`: unreadable files are named, and skipped only with ``data.skip_bad_files``), and its
``predict_step`` returns one record (a dict) per image, with the dataset ``index``; :class:`PredictionWriter`
(a default callback of the shared launcher) adds the file name and writes ``predictions.jsonl`` and
``predictions.csv`` in the run folder. A record's ``boxes`` (``[{"box": [x0, y0, x1, y1], "label": ...}]``,
inclusive pixels of the model's input view) are drawn into ``overlays/`` with ``--write_overlays true``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset
from torchvision import transforms as T

from shared.data.images import IMAGENET_MEAN, IMAGENET_STD, load_rgb, require_dir

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BOX_COLOURS = ("red", "cyan", "yellow", "lime", "magenta", "orange")


def scan_image_folder(folder: str | Path, skip_bad_files: bool = False) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted; hidden files ignored). A file that is not an image
    is an error naming it, unless ``skip_bad_files`` (then a warning names it)."""
    root = require_dir(folder, "a folder of image files", what="data.predict_dir")
    good, bad = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            bad.append((path, f"not an image suffix {'/'.join(IMAGE_SUFFIXES)}"))
            continue
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # PIL raises many types for a broken file
            bad.append((path, f"{type(err).__name__}: {err}"))
            continue
        good.append(path)
    if bad:
        names = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        if not skip_bad_files:
            raise ValueError(f"data.predict_dir {root}: {len(bad)} file(s) are not readable images: {names}{more}. "
                             "Remove them, or pass --data.skip_bad_files true to skip them")
        logger.warning("data.predict_dir %s: skipping %d file(s) that are not readable images: %s%s", root,
                       len(bad), names, more)
    if not good:
        raise ValueError(f"data.predict_dir {root} holds no readable image ({'/'.join(IMAGE_SUFFIXES)})")
    return good


class ImageFolderDataset(Dataset):
    """``(input tensor, index)`` per image: ``view`` (PIL -> PIL, the geometry the model sees, e.g. resize + crop)
    then ``to_input`` (PIL -> normalised tensor; by default ToTensor + the ImageNet mean / std)."""

    def __init__(self, root: str | Path, files: list[Path], view: Callable, to_input: Callable | None = None) -> None:
        if to_input is None:  # the ViT projects' input: a tensor normalised with the ImageNet statistics
            to_input = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.root, self.files, self._view, self.to_input = Path(root), files, view, to_input

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        return str(self.files[i].relative_to(self.root))

    def view(self, i: int) -> Image.Image:
        return self._view(load_rgb(self.files[i]))

    def __getitem__(self, i: int):
        return self.to_input(self.view(i)), i


OVERLAY_SIDE = 384   # overlays are upscaled so their shorter side is at least this many pixels


def tag_spots(anchors: list[tuple[int, int]], sizes: list[tuple[int, int]], width: int, height: int
              ) -> list[tuple[int, int, int, int]]:
    """Label tags ``(x0, y0, x1, y1)``: each at its anchor (a box's top left, kept inside the image), moved down
    by its own height until it overlaps no tag placed before it."""
    taken: list[tuple[int, int, int, int]] = []
    for (ax, ay), (w, h) in zip(anchors, sizes, strict=True):
        x, y = min(max(0, ax), width - w), ay
        while any(x < t[2] and x + w > t[0] and y < t[3] and y + h > t[1] for t in taken) and y < height - h:
            y += h
        taken.append((x, y, x + w, y + h))
    return taken


def draw_boxes(image: Image.Image, boxes: list[dict], title: str = "", min_side: int = OVERLAY_SIDE,
               box_scale: int | None = None) -> Image.Image:
    """``image`` upscaled to ``min_side`` (nearest: the model's pixels stay visible), with each ``{"box": [x0,
    y0, x1, y1] inclusive, in ``image``'s pixels, "label": str}`` drawn; a box with ``"draw": false`` is left out.
    Labels sit on a filled tag at the box's top left, moved down past the tags already placed (never over one),
    and ``title`` goes in a band above the image. ``box_scale``: the boxes' factor when ``image`` is already
    upscaled (default: the upscaling done here)."""
    scale = max(1, -(-min_side // min(image.size)))
    img = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    font = ImageFont.load_default(size=max(12, img.height // 28))
    band = (font.size + 8) if title else 0
    out = Image.new("RGB", (img.width, img.height + band), "black")
    out.paste(img, (0, band))
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((4, 3), title, fill="white", font=font)
    f = box_scale or scale
    shown = [(BOX_COLOURS[k % len(BOX_COLOURS)], [int(round(v * f)) for v in b["box"]], str(b.get("label") or ""))
             for k, b in enumerate(b for b in boxes if b.get("draw", True))]
    for colour, (x0, y0, x1, y1), _ in shown:                        # inclusive pixels cover whole cells
        draw.rectangle([x0, y0 + band, x1 + f - 1, y1 + f - 1 + band], outline=colour,
                       width=max(2, img.height // 150))
    labelled = [(colour, box, label) for colour, box, label in shown if label]
    sizes = [tuple(v + 4 for v in draw.textbbox((0, 0), label, font=font)[2:]) for _, _, label in labelled]
    spots = tag_spots([(box[0], box[1] + band) for _, box, _ in labelled], sizes, out.width, out.height)
    for (colour, _, label), spot in zip(labelled, spots, strict=True):   # the tags over every box outline
        draw.rectangle(spot, fill=colour)
        draw.text((spot[0] + 2, spot[1] + 1), label, fill="black", font=font)
    return out


def heat_overlay(image: Image.Image, heat: torch.Tensor, min_side: int = OVERLAY_SIDE) -> Image.Image:
    """``image`` upscaled as in :func:`draw_boxes`, with ``heat`` (``[h, w]``, any range: min-max scaled)
    blended in red over a dimmed copy; bilinear, so the patch grid shows as a smooth map."""
    scale = max(1, -(-min_side // min(image.size)))
    size = (image.height * scale, image.width * scale)
    img = np.asarray(image.convert("RGB").resize(size[::-1], Image.NEAREST)).astype(np.float32)
    h = heat.detach().float().cpu()
    h = (h - h.min()) / (h.max() - h.min()).clamp(min=1e-12)
    h = torch.nn.functional.interpolate(h[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    h = h.numpy()[..., None]
    blend = 0.35 * img + 0.65 * (h * np.array([255.0, 40.0, 0.0]) + (1 - h) * img * 0.35)
    return Image.fromarray(blend.clip(0, 255).astype(np.uint8))


def attention_strip(image: Image.Image, record: dict, heats: dict[str, torch.Tensor]) -> Image.Image:
    """Side by side: the boxes on the image, then each heat map (the rollout, DiD's class maps) with the same
    boxes, each titled."""
    tiles = [draw_boxes(image, record.get("boxes", []), overlay_title(record))]
    scale = max(1, -(-OVERLAY_SIDE // min(image.size)))
    for name, heat in heats.items():
        tiles.append(draw_boxes(heat_overlay(image, heat), record.get("boxes", []), name, min_side=1,
                                box_scale=scale))
    height = max(t.height for t in tiles)
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), height), "white")
    x = 0
    for t in tiles:
        strip.paste(t, (x, height - t.height))
        x += t.width + 4
    return strip


def overlay_title(record: dict) -> str:
    """What the model said about the image, for the overlay's title: RAMS-Trans' top-1, DiD's labels."""
    if record.get("top5"):
        top = record["top5"][0]
        return f"top-1: {top['class']} ({top['score']:.2f})"
    if "labels" in record:
        labels = ", ".join(f"{lab['class']} {lab['score']:.2f}" for lab in record["labels"][:4])
        return f"labels: {labels or 'none above the threshold'}"
    return ""


def _cell(value) -> str | float | int:
    return value if isinstance(value, str | int | float) or value is None else json.dumps(value)


class PredictionWriter(Callback):
    """Collects the records ``predict_step`` returns (lists of dicts) and writes them in the run folder.

    Several processes: each writes ``predictions.rank<r>.jsonl`` (no gather, no padding duplicates lost or
    added); one process: ``predictions.jsonl`` + ``predictions.csv``. Steps that return tensors are left alone.
    """

    def __init__(self, run_dir: str | Path, write_overlays: bool = False, write_attention: bool = False) -> None:
        self.run_dir, self.write_overlays, self.write_attention = Path(run_dir), write_overlays, write_attention
        self.records: list[dict] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.records = []

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            loaders = trainer.predict_dataloaders
            loader = loaders[dataloader_idx] if isinstance(loaders, list | tuple) else loaders
            dataset = getattr(loader, "dataset", None)
            for record in outputs:
                heats = record.pop("_attention", {})     # heat maps ride in the record, never into the files
                if isinstance(dataset, ImageFolderDataset) and "index" in record:
                    record = {"file": dataset.name(record["index"]), **record}
                    if self.write_overlays and record.get("boxes"):
                        self._overlay(dataset, record)
                    if self.write_attention and heats:
                        out = self.run_dir / "attention" / Path(record["file"]).with_suffix(".png")
                        out.parent.mkdir(parents=True, exist_ok=True)
                        attention_strip(dataset.view(record["index"]), record, heats).save(out)
                self.records.append(record)

    def _overlay(self, dataset: ImageFolderDataset, record: dict) -> None:
        out = self.run_dir / "overlays" / Path(record["file"]).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        draw_boxes(dataset.view(record["index"]), record["boxes"], overlay_title(record)).save(out)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.records:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        many = trainer.world_size > 1
        stem = f"predictions.rank{trainer.global_rank}" if many else "predictions"
        with (self.run_dir / f"{stem}.jsonl").open("w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        if not many:
            columns = list(dict.fromkeys(k for r in self.records for k in r))
            with (self.run_dir / "predictions.csv").open("w", newline="") as f:
                w = csv.DictWriter(f, columns)
                w.writeheader()
                w.writerows({k: _cell(r.get(k)) for k in columns} for r in self.records)
        print(f"wrote {len(self.records)} predictions to {self.run_dir / (stem + '.jsonl')}"
              + ("" if many else " and predictions.csv")
              + (f", overlays in {self.run_dir / 'overlays'}" if self.write_overlays else "")
              + (f", attention maps in {self.run_dir / 'attention'}" if self.write_attention else ""), flush=True)
