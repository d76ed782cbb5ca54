"""LightningModule for RAMS-Trans: summed per-scale CE, the official SGD + warm-up cosine recipe, top-1/top-5 for
the global, local and fused predictions, and validation panels (image, rollout heat map + DPPM box, crop)."""

from __future__ import annotations

from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from projects.rams_trans.model import RAMSTrans
from shared.metrics import topk_accuracy
from shared.panels import denormalize, log_images
from shared.schedules import warmup_cosine_schedule

Report = Literal["global", "local", "fused"]


class RAMSTransModule(L.LightningModule):
    """Trains :class:`RAMSTrans`; ``num_scales: 1`` is the paper's plain ViT baseline (same code path).

    Loss (Fig. 2): ``CE(global) + local_loss_weight * CE(each later scale)``; ``local_loss_weight=0`` is the
    released trainer (only ``loss1`` active). ``report`` picks the headline/monitored prediction: ``local``
    (last scale, paper-faithful default), ``global`` (the official checkpoint selection) or ``fused``
    (sum of all scales' logits). All three are always logged. ``optimizer: adamw`` is a toy-only deviation
    (no pretrained weights offline; SGD from scratch barely moves in a few hundred steps).
    """

    monitor = "val/local_top1"
    monitor_mode = "max"

    def __init__(self, num_classes: int = 200, backbone: str = "vit_base_patch16_224", img_size: int = 448,
                 patch_size: int | None = None, pretrained: bool | str | None = False, num_scales: int = 2,
                 eta: float | list[float] = 1.2, patch_score: Literal["column_mean", "cls_row"] = "column_mean",
                 cls_layout: Literal["per_scale", "all"] = "per_scale", official_box_shift: bool = True,
                 hidden_dropout: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 backbone_kwargs: dict | None = None, local_loss_weight: float = 1.0, report: Report = "local",
                 optimizer: Literal["sgd", "adamw"] = "sgd", lr: float = 0.03, momentum: float = 0.9,
                 weight_decay: float = 0.0, warmup_steps: int = 500,
                 total_steps: int | None = None, num_panels: int = 4) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"model.optimizer must be 'sgd' (paper) or 'adamw' (toy, from scratch), got {optimizer!r}")
        if report not in ("global", "local", "fused"):
            raise ValueError(f"model.report must be 'global', 'local' or 'fused', got {report!r}")
        self.save_hyperparameters()
        self.model = RAMSTrans(num_classes, backbone, img_size, patch_size, pretrained, num_scales, eta,
                               patch_score, cls_layout, official_box_shift, attn_drop_rate=attn_drop_rate,
                               drop_path_rate=drop_path_rate, hidden_dropout=hidden_dropout,
                               backbone_kwargs=backbone_kwargs)
        self.monitor = self.headline_metric = f"val/{report}_top1"
        self.heads = ["global", "local", "fused"] + [f"scale{k + 1}" for k in range(1, num_scales - 1)]
        for stage in ("val", "test"):
            for h in self.heads:
                setattr(self, f"{stage}_{h}_acc", topk_accuracy(num_classes, (1, 5), prefix=f"{stage}/{h}_"))
        self._panel_batch: tuple[Tensor, dict] | None = None

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        return self.model(x)

    def predictions(self, out: dict[str, list[Tensor]]) -> dict[str, Tensor]:
        logits = out["logits"]
        preds = {"global": logits[0], "local": logits[-1], "fused": torch.stack(logits).sum(0)}
        preds.update({f"scale{k + 1}": logits[k] for k in range(1, len(logits) - 1)})
        return preds

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch
        out = self.model(x)
        losses = [F.cross_entropy(z, y) for z in out["logits"]]
        loss = losses[0] + self.hparams.local_loss_weight * sum(losses[1:], torch.zeros((), device=x.device))
        self.log("train/loss", loss, prog_bar=True)
        for k, part in enumerate(losses):
            self.log(f"train/ce_scale{k + 1}", part)
        if out["found"]:
            area = [((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)).float().mean() / x.shape[-1] ** 2
                    for b in out["boxes"]]
            self.log("train/box_area_frac", area[0])
            self.log("train/box_found_frac", out["found"][0].float().mean())
        return loss

    def _eval_step(self, stage: str, batch, batch_idx: int) -> None:
        x, y = batch
        out = self.model(x)
        for h, z in self.predictions(out).items():
            metric = getattr(self, f"{stage}_{h}_acc")
            metric.update(z, y)
            self.log_dict(metric, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/loss", F.cross_entropy(out["logits"][-1], y), sync_dist=True)
        if stage == "val" and batch_idx == 0 and self._panel_batch is None:
            n = self.hparams.num_panels
            self._panel_batch = (x[:n].detach().cpu(), {k: [t[:n].detach().cpu() for t in v] for k, v in out.items()})

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch, batch_idx)

    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        """One record per image (``data.predict_dir``): the top-5 classes of the ``report`` head with softmax
        scores, and each DPPM box mapped into the input view (inclusive pixels)."""
        x, index = batch
        out = self.model(x)
        probs = self.predictions(out)[self.hparams.report].softmax(-1)
        scores, classes = probs.topk(min(5, probs.shape[-1]), dim=-1)
        names = getattr(self.trainer.datamodule, "class_names", None) or [str(i) for i in range(probs.shape[-1])]
        boxes = boxes_in_input_frame(out["boxes"], x.shape[-1])
        return [{"index": int(i), "report": self.hparams.report,
                 "top5": [{"class": names[c], "score": round(float(p), 4)}
                          for c, p in zip(classes[n].tolist(), scores[n].tolist(), strict=True)],
                 "boxes": [{"box": [round(v, 1) for v in b[n].tolist()], "label": f"DPPM {k + 1}->{k + 2}",
                            "found": bool(out["found"][k][n])} for k, b in enumerate(boxes)]}
                for n, i in enumerate(index.tolist())]

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        panel, self._panel_batch = self._panel_batch, None
        if panel is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if self.hparams.num_panels <= 0 or not panel[1]["boxes"]:
            return
        truth = getattr(self.trainer.datamodule, "test_part_boxes", None)  # toy set: the part's box
        if truth is not None and self.trainer.world_size == 1:  # the panel batch = the first test images
            truth = truth[: len(panel[0])]
        else:
            truth = None
        images, captions = dppm_panels(panel[1], truth)
        log_images(self, "val/dppm", images, captions)

    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if h.optimizer == "sgd":   # official: SGD, momentum 0.9, lr 0.03, wd 0, one param group (spec 5)
            opt = torch.optim.SGD(params, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        else:                      # toy only: a tiny ViT from scratch learns far faster with AdamW
            opt = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.weight_decay)
        # The cosine spans the Trainer's optimizer steps unless total_steps overrides it (spec 5: 10k steps).
        return warmup_cosine_schedule(opt, self.trainer, h.warmup_steps, h.total_steps)


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
