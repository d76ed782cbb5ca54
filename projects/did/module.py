"""LightningModule of DiD: two-branch BCE, SGD + warm-up cosine, multi-label metrics and panels (did.md 5-7)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from projects.did.model import DiD, EmptyBox, Reconstraint
from projects.did.viz import instance_panel
from shared.attention import RegionMeasure
from shared.metrics import multilabel_metrics
from shared.panels import log_bar_chart, log_images
from shared.schedules import warmup_cosine_schedule


class DiDModule(LightningModule):
    """DiD training: ``L = BCE(global) + BCE(local)`` (``local_loss_weight`` x the second term).

    Metrics (``shared.metrics``: mAP, CP, CR, CF1, OP, OR, OF1 and top-3) are logged for the global, local
    and fused (class-wise max) predictions as ``val/{global,local,fused}/<metric>``; the headline is
    ``val/fused/mAP``. With ``local_views=False`` (the ViT baseline) fused = global.
    """

    monitor = "val/fused/mAP"
    monitor_mode = "max"
    headline_metric = "val/fused/mAP"

    def __init__(self, num_classes: int = 80, backbone: str = "vit_base_patch16_224", img_size: int = 448,
                 patch_size: int | None = None, embed_dim: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, pretrained: bool | str = False, hidden_dropout: float = 0.1,
                 attn_dropout: float = 0.0, drop_path_rate: float = 0.0, reset_final_norm: bool = True,
                 local_views: bool = True, top_n: int = 4, threshold: float = 0.6,
                 reconstraint: Reconstraint = "product", box_resolution: int | None = None,
                 quantize_threshold: bool = True, empty_box: EmptyBox = "full", lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 1e-5, warmup_frac: float = 0.05,
                 difficult_as_positive: bool = True, local_loss_weight: float = 1.0, panel_images: int = 4,
                 cpu_threads: int | None = None, optimizer: Literal["sgd", "adamw"] = "sgd",
                 region_measure: RegionMeasure = "contour_area") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = DiD(num_classes, backbone, img_size, patch_size, embed_dim, depth, num_heads, pretrained,
                         hidden_dropout, attn_dropout, drop_path_rate, reset_final_norm, local_views, top_n,
                         threshold, reconstraint, box_resolution, quantize_threshold, empty_box, region_measure)
        self.branches = ("global", "local", "fused") if local_views else ("global", "fused")
        self.val_metrics = nn.ModuleDict({b: multilabel_metrics(num_classes, prefix=f"{b}/") for b in self.branches})
        self._panel: dict[str, Tensor] | None = None

    def setup(self, stage: str) -> None:
        # On a shared CPU box, 2 intra-op threads competing with other jobs can be several times slower
        # than 1 (OpenMP spin-waits); the toy config pins the count. No effect on GPU runs.
        if self.hparams.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(self.hparams.cpu_threads)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        return self.model(x)

    # ------------------------------------------------------------------------------------------ training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, t = batch
        out = self.model(x)
        # Official targets: difficult (-1) is a positive for the loss (MCAR convention, did.md 6 / 8.10).
        y = (t != 0) if self.hparams.difficult_as_positive else (t > 0)
        y = y.to(out["global"].dtype)
        loss_global = F.binary_cross_entropy_with_logits(out["global"], y)
        logs = {"train/loss_global": loss_global}
        loss = loss_global
        if out["local"] is not None:
            loss_local = F.binary_cross_entropy_with_logits(out["local"], y)
            loss = loss + self.hparams.local_loss_weight * loss_local
            boxes = out["boxes"].float()
            area = ((boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)) / x[0, 0].numel()
            logs.update({"train/loss_local": loss_local, "train/box_area": area.mean(),
                         "train/box_found": out["found"].float().mean()})
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=False, batch_size=x.shape[0])
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "sgd":   # the official recipe (fine-tuning from ImageNet-21k weights)
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":   # toy runs from random init: SGD barely moves a scratch ViT in minutes
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            raise ValueError(f"model.optimizer must be 'sgd' or 'adamw', got {hp.optimizer!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return warmup_cosine_schedule(opt, self.trainer, max(1, round(hp.warmup_frac * total)))

    # ---------------------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, t = batch
        out = self.model(x)
        for b in self.branches:
            self.val_metrics[b].update(out[b].float(), t)
        if batch_idx == 0 and self.trainer.is_global_zero and "views" in out and self.hparams.panel_images > 0:
            k = self.hparams.panel_images
            top = out["top_classes"][:k]
            self._panel = {"x": x[:k], "top": top, "boxes": out["boxes"][:k], "views": out["views"][:k],
                           "maps": out["instance_maps"][:k].gather(1, top[..., None, None].expand(
                               -1, -1, *out["instance_maps"].shape[-2:])),
                           "scores": out["fused"][:k].gather(1, top).sigmoid(), "targets": t[:k]}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def _eval_epoch_end(self, stage: str) -> None:
        for b in self.branches:
            values = self.val_metrics[b].compute()   # synchronised over DDP ranks by torchmetrics
            self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False)
        per_class = self.val_metrics["fused"].compute_per_class()     # collective: every rank calls it
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            names = self._class_names()
            log_bar_chart(self, f"{stage}/per_class_AP", names, [0.0 if math.isnan(v) else v
                                                                   for v in per_class.tolist()])
            self._log_panels(stage, names)
        for m in self.val_metrics.values():
            m.reset()
        self._panel = None

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> list[dict]:
        """One record per image (``data.predict_dir``): the labels whose fused score reaches
        ``data.predict_threshold`` (all scores too), and the discovered instance box of each top-N class. (The
        threshold lives in the data config: ``predict --ckpt_path`` restores every model.* value from the
        checkpoint, over the command line.)"""
        x, index = batch
        out = self.model(x)
        scores = out["fused"].sigmoid()
        names = self._class_names()
        threshold = getattr(getattr(self.trainer, "datamodule", None), "hparams", {}).get("predict_threshold", 0.5)
        records = []
        for n, i in enumerate(index.tolist()):
            record = {"index": int(i), "labels": [{"class": names[c], "score": round(float(scores[n, c]), 4)}
                                                  for c in scores[n].argsort(descending=True).tolist()
                                                  if scores[n, c] >= threshold],
                      "scores": {names[c]: round(float(v), 4) for c, v in enumerate(scores[n].tolist())}}
            if out.get("boxes") is not None:
                record["boxes"] = [{"box": out["boxes"][n, k].tolist(), "label": names[c],
                                    "found": bool(out["found"][n, k])}
                                   for k, c in enumerate(out["top_classes"][n].tolist())]
            records.append(record)
        return records

    # ------------------------------------------------------------------------------------------- panels
    def _class_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None)
        names = list(getattr(dm, "class_names", []) or [])
        return names if len(names) == self.hparams.num_classes else [str(i) for i in range(self.hparams.num_classes)]

    def _log_panels(self, stage: str, names: list[str]) -> None:
        p = self._panel
        if p is None:
            return
        images, captions = [], []
        instances = getattr(self.trainer.datamodule, "val_instance_boxes", None)  # toy set: (boxes, classes)
        if self.trainer.world_size > 1 or stage != "val":                          # panel batch = first val images
            instances = None
        for i in range(p["x"].shape[0]):
            gt = None if instances is None else instances[0][i][instances[1][i] >= 0]
            images.append(instance_panel(p["x"][i], p["maps"][i], p["boxes"][i], p["views"][i], truth=gt))
            truth = [names[c] for c in (p["targets"][i] > 0).nonzero().flatten().tolist()]
            top = ", ".join(f"{names[c]} {s:.2f}" for c, s in zip(p["top"][i].tolist(), p["scores"][i].tolist(),
                                                                   strict=True))
            captions.append(f"top: {top} | truth: {', '.join(truth) or '-'}")
        log_images(self, f"{stage}/instance_maps", images, captions)
