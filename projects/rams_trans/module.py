"""LightningModule for RAMS-Trans: the summed per-scale loss (``losses.py``), the official SGD + warm-up cosine
recipe, top-1 / top-5 of the global, local and fused predictions, and validation panels (``viz.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from projects.rams_trans.losses import multi_scale_loss
from projects.rams_trans.model import RAMSTrans
from projects.rams_trans.viz import boxes_in_input_frame, dppm_panels
from shared.data.loaders import labels_or_ignored, scored, scored_cross_entropy
from shared.ema import check_ema_decay
from shared.hparams import group, save_hparams
from shared.metrics import topk_accuracy
from shared.optim import SGDOrAdamW
from shared.panels import log_images
from shared.reports import class_names, classification_report, gathered, reporting, say
from shared.schedules import warmup_cosine_schedule

Report = Literal["global", "local", "fused"]


@dataclass(frozen=True)
class Optimization(SGDOrAdamW):
    """The official recipe (SGD, momentum 0.9, lr 0.03, no weight decay, linear warm-up then cosine; batch 16).

    ``name: adamw`` is a toy-only deviation (a tiny ViT from random init barely moves with SGD in a few hundred
    steps). The cosine spans the Trainer's optimizer steps unless ``total_steps`` fixes it (the paper: 10k)."""

    lr: float = 0.03
    weight_decay: float = 0.0
    warmup_steps: int = 500
    total_steps: int | None = None


class RAMSTransModule(L.LightningModule):
    """Trains :class:`RAMSTrans` (``net``); ``net.num_scales: 1`` is the paper's plain ViT baseline (same code path).

    ``local_loss_weight`` weighs the later scales' cross-entropy (:func:`multi_scale_loss`; 0 = the released
    trainer). ``report`` picks the headline / monitored prediction: ``local`` (last scale, paper-faithful default),
    ``global`` (the official checkpoint selection) or ``fused`` (sum of all scales' logits); all three are logged.
    """

    monitor = "val/local_top1"
    monitor_mode = "max"

    def __init__(self, net: RAMSTrans, local_loss_weight: float = 1.0, report: Report = "local",
                 optim: Optimization = Optimization(), num_panels: int = 4, ema_decay: float | None = None) -> None:
        super().__init__()
        if report not in ("global", "local", "fused"):
            raise ValueError(f"model.report must be 'global', 'local' or 'fused', got {report!r}")
        save_hparams(self)
        self.net, self.optim = net, group(Optimization, optim)
        self.ema_decay = check_ema_decay(ema_decay)   # shared.ema: the launcher adds the EMA callback
        self.monitor = self.headline_metric = f"val/{report}_top1"
        num_classes = net.head.out_features
        self.heads = ["global", "local", "fused"] + [f"scale{k + 1}" for k in range(1, net.num_scales - 1)]
        for stage in ("val", "test"):
            for h in self.heads:
                setattr(self, f"{stage}_{h}_acc", topk_accuracy(num_classes, (1, 5), prefix=f"{stage}/{h}_"))
        # the evaluation loss as a weighted mean metric: exact over processes (a padding step weighs 0), where
        # Lightning's own mean divides its integer sample count by the processes with an integer division (gloo)
        self.eval_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self._report: list[tuple[Tensor, Tensor]] = []     # (prediction, label) of a validate / test command
        self._panel_batch: tuple[Tensor, dict] | None = None

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        return self.net(x)

    def predictions(self, out: dict[str, list[Tensor]]) -> dict[str, Tensor]:
        logits = out["logits"]
        preds = {"global": logits[0], "local": logits[-1], "fused": torch.stack(logits).sum(0)}
        preds.update({f"scale{k + 1}": logits[k] for k in range(1, len(logits) - 1)})
        return preds

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch
        out = self.net(x)
        loss, per_scale = multi_scale_loss(out["logits"], y, self.hparams.local_loss_weight)
        self.log("train/loss", loss, prog_bar=True)
        for k, part in enumerate(per_scale):
            self.log(f"train/ce_scale{k + 1}", part)
        if out["found"]:
            b = out["boxes"][0]
            self.log("train/box_area_frac", ((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)).float().mean()
                     / x.shape[-1] ** 2)
            self.log("train/box_found_frac", out["found"][0].float().mean())
        return loss

    def _eval_step(self, stage: str, batch, batch_idx: int) -> None:
        x, y = batch
        out = self.net(x)
        k = scored(self, y.shape[0])           # 0 in a padding step (more processes than samples)
        for h, z in self.predictions(out).items():
            metric = getattr(self, f"{stage}_{h}_acc")
            metric.update(z, labels_or_ignored(y, k))
            self.log_dict(metric, on_epoch=True, sync_dist=True)
        if reporting(self):
            self._report.append((self.predictions(out)[self.hparams.report][:k].argmax(-1), y[:k]))
        self.eval_loss[stage].update(scored_cross_entropy(out["logits"][-1], y, k), weight=k)
        self.log(f"{stage}/loss", self.eval_loss[stage], on_epoch=True)
        if stage == "val" and batch_idx == 0 and self._panel_batch is None:
            n = self.hparams.num_panels
            self._panel_batch = (x[:n].detach().cpu(), {k: [t[:n].detach().cpu() for t in v] for k, v in out.items()})

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch, batch_idx)

    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        """One record per image (``data.predict_dir``): the top-5 classes of the ``report`` head with softmax
        scores, and each DPPM box mapped into the input view (inclusive pixels)."""
        x, index = batch
        out = self.net(x)
        probs = self.predictions(out)[self.hparams.report].softmax(-1)
        scores, classes = probs.topk(min(5, probs.shape[-1]), dim=-1)
        names = class_names(self, probs.shape[-1])
        boxes = boxes_in_input_frame(out["boxes"], x.shape[-1])
        return [{"index": int(i), "report": self.hparams.report,
                 "top5": [{"class": names[c], "score": round(float(p), 4)}
                          for c, p in zip(classes[n].tolist(), scores[n].tolist(), strict=True)],
                 "boxes": [{"box": [round(v, 1) for v in b[n].tolist()], "label": f"DPPM {k + 1}->{k + 2}",
                            "found": bool(out["found"][k][n])} for k, b in enumerate(boxes)],
                 "_attention": {"rollout (DPPM score map)": out["score_maps"][0][n].cpu()}}   # --write_attention
                for n, i in enumerate(index.tolist())]

    def _write_report(self, stage: str) -> None:
        """validate / test: confusion matrix, per-class top-1 and the top confusions of the ``report`` head."""
        parts, self._report = self._report, []
        if not reporting(self):
            return
        preds = gathered(self, [p for p, _ in parts], torch.zeros(0, dtype=torch.long, device=self.device))
        labels = gathered(self, [y for _, y in parts], torch.zeros(0, dtype=torch.long, device=self.device))
        if self.trainer.is_global_zero:
            say(self, classification_report(self, stage, class_names(self, self.net.head.out_features), labels, preds))

    def on_test_epoch_end(self) -> None:
        self._write_report("test")

    def on_validation_epoch_end(self) -> None:
        self._write_report("val")
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
        opt = self.optim.build([p for p in self.parameters() if p.requires_grad])
        return warmup_cosine_schedule(opt, self.trainer, self.optim.warmup_steps, self.optim.total_steps)
