"""LightningModule of DiD: the two-view BCE (``losses.py``), the official SGD + warm-up cosine recipe, multi-label
metrics of the global, local and fused predictions, and the instance panels (``viz.py``); §5-§7."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning.pytorch import LightningModule
from torch import Tensor, nn

from projects.did.losses import multilabel_targets, two_view_loss
from projects.did.model import DiD
from projects.did.viz import instance_panel
from shared.data.loaders import scored
from shared.ema import check_ema_decay
from shared.hparams import group, pin_cpu_threads, save_hparams
from shared.metrics import multilabel_metrics
from shared.optim import SGDOrAdamW
from shared.panels import log_bar_chart, log_images
from shared.reports import class_names, multilabel_report, reporting, say
from shared.schedules import warmup_cosine_schedule


@dataclass(frozen=True)
class Loss:
    """``L = BCE(global) + local_weight * BCE(local)`` (§5 "Training objective"; the official weight is 1).

    ``difficult_as_positive``: the official targets count VOC "difficult" (-1) as positive (§6, §8.10); ``False``
    makes them negative. The metrics ignore them either way."""

    local_weight: float = 1.0
    difficult_as_positive: bool = True


@dataclass(frozen=True)
class Optimization(SGDOrAdamW):
    """The official recipe (§6): SGD, momentum 0.9, lr 0.05, weight decay 1e-5 on every parameter, a linear warm-up
    over ``warmup_frac`` of the optimizer steps, then cosine to 0 at the Trainer's last step.

    ``name: adamw`` is a toy-only deviation (a ViT from random init barely moves with SGD in a few hundred steps)."""

    lr: float = 0.05
    weight_decay: float = 1e-5
    warmup_frac: float = 0.05

    def warmup_steps(self, total: int) -> int:
        """Warm-up length for a schedule of ``total`` optimizer steps (at least 1)."""
        return max(1, round(self.warmup_frac * total))


class DiDModule(LightningModule):
    """Trains :class:`DiD` (``net``); ``net.local_views: false`` is the paper's ViT baseline (fused = global).

    Metrics (``shared.metrics``: mAP, CP, CR, CF1, OP, OR, OF1 and top-3, §7.2) are logged for the global, local
    and fused (class-wise max) predictions as ``val/{global,local,fused}/<metric>``; the headline is
    ``val/fused/mAP``. ``panel_images``: validation images drawn in the instance panel (0: none). ``cpu_threads``:
    torch's intra-op threads on a CPU run (None: torch's default; not a paper knob).
    """

    monitor = "val/fused/mAP"
    monitor_mode = "max"
    headline_metric = "val/fused/mAP"

    def __init__(self, net: DiD, loss: Loss = Loss(), optim: Optimization = Optimization(), panel_images: int = 4,
                 cpu_threads: int | None = None, ema_decay: float | None = None) -> None:
        super().__init__()
        save_hparams(self)
        self.ema_decay = check_ema_decay(ema_decay)   # shared.ema: the launcher adds the EMA callback
        self.net, self.loss, self.optim = net, group(Loss, loss), group(Optimization, optim)
        self.branches = ("global", "local", "fused") if net.local_views else ("global", "fused")
        self.val_metrics = nn.ModuleDict({b: multilabel_metrics(net.num_classes, prefix=f"{b}/")
                                          for b in self.branches})
        self._panel: dict[str, Tensor] | None = None

    def setup(self, stage: str) -> None:
        pin_cpu_threads(self, self.hparams.cpu_threads)      # the toy config pins 1 (shared.hparams)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        return self.net(x)

    # ------------------------------------------------------------------------------------------ training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, t = batch
        out = self.net(x)
        loss, parts = two_view_loss(out["global"], out["local"],
                                    multilabel_targets(t, self.loss.difficult_as_positive), self.loss.local_weight)
        logs = {f"train/loss_{k}": v for k, v in parts.items()}
        if out["local"] is not None:
            boxes = out["boxes"].float()
            area = ((boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)) / x[0, 0].numel()
            logs.update({"train/box_area": area.mean(), "train/box_found": out["found"].float().mean()})
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=False, batch_size=x.shape[0])
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        opt = self.optim.build(self.parameters())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return warmup_cosine_schedule(opt, self.trainer, self.optim.warmup_steps(total))

    # ---------------------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, t = batch
        out = self.net(x)
        k = scored(self, t.shape[0])           # 0 in a padding step (more processes than samples)
        for b in self.branches:
            self.val_metrics[b].update(out[b][:k].float(), t[:k])
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
        if reporting(self):            # validate / test: per-class AP, P, R, F1, CP ... OF1, the worst classes
            scores, targets = self.val_metrics["fused"].synced_states()
            if self.trainer.is_global_zero:
                say(self, multilabel_report(self, stage, self._class_names(), scores, targets,
                                            self.val_metrics["fused"].threshold))
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
        out = self.net(x)
        scores = out["fused"].sigmoid()
        names = self._class_names()
        threshold = getattr(getattr(self.trainer, "datamodule", None), "hparams", {}).get("predict_threshold", 0.5)
        records = []
        for n, i in enumerate(index.tolist()):
            record = {"index": int(i), "labels": [{"class": names[c], "score": round(float(scores[n, c]), 4)}
                                                  for c in scores[n].argsort(descending=True).tolist()
                                                  if scores[n, c] >= threshold],
                      "scores": {names[c]: round(float(v), 4) for c, v in enumerate(scores[n].tolist())}}
            if out.get("boxes") is not None:   # overlays draw the boxes of the labels above the threshold
                record["boxes"] = [{"box": out["boxes"][n, k].tolist(), "class": names[c],
                                    "label": f"{names[c]} {float(scores[n, c]):.2f}",
                                    "found": bool(out["found"][n, k]), "draw": bool(scores[n, c] >= threshold)}
                                   for k, c in enumerate(out["top_classes"][n].tolist())]
                record["_attention"] = {"rollout": out["rollout"][n].cpu(), **{   # --write_attention
                    f"class map: {names[c]}": out["instance_maps"][n, c].cpu() for c in out["top_classes"][n].tolist()}}
            records.append(record)
        return records

    # ------------------------------------------------------------------------------------------- panels
    def _class_names(self) -> list[str]:
        return class_names(self, self.net.num_classes)

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
