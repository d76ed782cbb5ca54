"""LightningModule for DRDF: the loss (``losses.py``, docs/papers/drdf.md §6), the MMF / SGD recipes, the routers'
temperature, the metrics and the routing report (``viz.py``, §8)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.utilities.distributed import gather_all_tensors

from projects.drdf.losses import drdf_loss
from projects.drdf.model import DRDF
from projects.drdf.viz import log_routing_panels, toy_routing_metrics
from shared.data.loaders import labels_or_ignored, scored, scored_cross_entropy
from shared.ema import check_ema_decay
from shared.hparams import group, pin_cpu_threads, save_hparams
from shared.metrics import binary_metrics, topk_accuracy
from shared.reports import binary_report, class_names, classification_report, gathered, reporting, say

Task = Literal["binary", "multiclass"]


@dataclass(frozen=True)
class Loss:
    """Weights of the per-expert cross-entropy (``lambda_aux``, §6: 0.5; 0 is the ablation) and of the load-balance
    term (``lambda_bal``: off; 0.01 when on) in :func:`~projects.drdf.losses.drdf_loss`."""

    lambda_aux: float = 0.5
    lambda_bal: float = 0.0

    def __post_init__(self) -> None:
        if self.lambda_aux < 0 or self.lambda_bal < 0:
            raise ValueError(f"model.loss.lambda_aux and lambda_bal must be >= 0, got {self.lambda_aux}, "
                             f"{self.lambda_bal}")


@dataclass(frozen=True)
class Temperature:
    """T of the routers' softmaxes (§3): ``value`` at evaluation, and in training unless ``schedule``. With
    ``schedule`` (§8.5, after Dynamic Convolution), T goes linearly from ``start`` down to ``value`` over the first
    ``fraction`` of the training steps, then stays at ``value``."""

    value: float = 1.0
    schedule: bool = False
    start: float = 30.0
    fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.value <= 0 or self.start <= 0:
            raise ValueError(f"model.temperature.value and start must be > 0, got {self.value}, {self.start}")

    def annealed(self, step: int, total_steps: int) -> float:
        """T at training step ``step`` of ``total_steps`` on the schedule."""
        ramp = max(1, int(self.fraction * total_steps))
        if step >= ramp:
            return self.value
        return self.start + (self.value - self.start) * step / ramp


@dataclass(frozen=True)
class Optimization:
    """The recipe (§6). Hateful Memes (MMF): ``adamw``, lr 5e-5, eps 1e-8, no weight decay, ``warmup_steps`` 2000
    then ``linear`` decay to 0 over 22k updates; CIFAR / TinyImageNet: ``sgd`` with Nesterov momentum 0.9, lr 0.1,
    weight decay 5e-4, ``cosine``. The routers and the MWF-Layer learn at ``router_lr_mult`` x ``lr`` (inferred:
    10 on Hateful Memes). The schedule spans ``max_steps``, else the Trainer's optimizer steps; ``none``: constant."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 5e-5
    router_lr_mult: float = 10.0
    weight_decay: float = 0.0
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = True
    schedule: Literal["linear", "cosine", "none"] = "linear"
    warmup_steps: int = 2000
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd"):
            raise ValueError(f"model.optim.name must be adamw or sgd, got {self.name!r}")
        if self.schedule not in ("linear", "cosine", "none"):
            raise ValueError(f"model.optim.schedule must be linear, cosine or none, got {self.schedule!r}")

    def build(self, net: DRDF, **kwargs) -> torch.optim.Optimizer:
        """The optimizer over ``net``'s trainable parameters in two groups, ``experts`` (with the shared head of
        fusion F3) at ``lr`` and ``routers`` (routers + MWF-Layer; none under uniform routing) at
        ``router_lr_mult * lr``; ``kwargs`` go to torch's optimizer."""
        groups = [{"params": net.expert_parameters(), "lr": self.lr, "name": "experts"}]
        router = net.router_parameters()
        if router:
            groups.append({"params": router, "lr": self.lr * self.router_lr_mult, "name": "routers"})
        if self.name == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, **kwargs)
        return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=self.weight_decay, **kwargs)

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The lr multiplier at optimizer step ``step``: linear warm-up to 1, then ``linear`` / ``cosine`` to 0."""
        warmup = min(self.warmup_steps, max(0, total_steps - 1))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 1.0 - progress if self.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


class DRDFModule(LightningModule):
    """Trains :class:`DRDF` (``net``) with ``L = CE(y) + lambda_aux mean_k CE(z_k) [+ lambda_bal CV(I)^2]`` (§6).

    ``net.routing: uniform`` is the static ensemble (K experts, w = 1/K) and, with one expert, the single-backbone
    baseline: the same code path. ``task``: ``binary`` (Hateful Memes: val/auroc, val/acc on P(hateful) =
    softmax(y)[:, 1]; needs 2 classes) or ``multiclass`` (CIFAR / TinyImageNet: val/top1, val/top5).
    ``panel_rows``: rows of each kind in the table of extreme a_t samples. ``cpu_threads`` is not a paper knob:
    torch's intra-op threads on CPU, set at setup (1 for the toy runs on a shared machine).
    """

    monitor_mode = "max"

    def __init__(self, net: DRDF, task: Task = "binary", loss: Loss = Loss(), temperature: Temperature = Temperature(),
                 optim: Optimization = Optimization(), panel_rows: int = 8, cpu_threads: int | None = None,
                 ema_decay: float | None = None) -> None:
        super().__init__()
        if task not in ("binary", "multiclass"):
            raise ValueError(f"model.task must be binary or multiclass, got {task!r}")
        if task == "binary" and net.num_classes != 2:
            raise ValueError(f"model.task=binary needs model.net.num_classes=2, got {net.num_classes}")
        save_hparams(self)
        self.net = net
        self.ema_decay = check_ema_decay(ema_decay)   # shared.ema: the launcher adds the EMA callback
        self.loss, self.temperature = group(Loss, loss), group(Temperature, temperature)
        self.optim = group(Optimization, optim)
        self.monitor = self.headline_metric = "val/auroc" if task == "binary" else "val/top1"
        make = (lambda p: binary_metrics(prefix=p)) if task == "binary" else (
            lambda p: topk_accuracy(net.num_classes, ks=(1, 5), prefix=p))
        self.metrics = nn.ModuleDict({"val": make("val/"), "test": make("test/")})
        # the evaluation loss as a weighted mean metric: exact over processes (a padding step weighs 0), where
        # Lightning's own mean divides its integer sample count by the processes with an integer division (gloo)
        self.eval_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self._report: list[tuple[torch.Tensor, torch.Tensor]] = []   # (scores, labels) of a validate / test
        self._records: list[dict[str, Any]] = []
        self._vocab_checked = False

    def setup(self, stage: str) -> None:
        pin_cpu_threads(self, self.hparams.cpu_threads)      # the toy configs pin 1 (shared.hparams)

    # ---------------------------------------------------------------------------------------------- steps
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.net(batch)

    def _check_batch(self, batch: dict) -> None:
        if (batch["label"] < 0).any():
            raise ValueError("training / evaluation batch has samples without a label (label -1): use an "
                             "annotated split (train, dev_seen, test_seen, ...) or `predict` for unlabeled files")
        if self._vocab_checked or "input_ids" not in batch:
            return
        max_id = int(batch["input_ids"].max())
        for name, mod in self.net.named_modules():
            if isinstance(mod, nn.Embedding | nn.EmbeddingBag) and name.endswith(("word_embeddings", "encoder")):
                if max_id >= mod.num_embeddings:
                    raise ValueError(f"token id {max_id} >= vocab size {mod.num_embeddings} of {name}: the data "
                                     "tokenizer and the model's text encoders disagree (set vocab_size in the text "
                                     "overrides, or point both at the same BERT folder)")
        self._vocab_checked = True

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Binary: the log-odds of class 1 (sigmoid of it = softmax(y)[:, 1]); multiclass: the logits."""
        return logits[:, 1] - logits[:, 0] if self.hparams.task == "binary" else logits

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        t = self.temperature
        self.net.temperature = t.annealed(self.global_step, self._total_steps()) if t.schedule else t.value

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._check_batch(batch)
        out = self(batch)
        labels = batch["label"]
        loss, parts = drdf_loss(out, labels, self.loss.lambda_aux, self.loss.lambda_bal)
        for name in ("aux_ce", "balance"):
            if name in parts:
                self.log(f"train/{name}", parts[name])
        B = labels.shape[0]
        self.log_dict({"train/loss": loss, "train/ce": parts["ce"], "train/a_t": out["modality"][:, 0].mean(),
                       "train/temperature": float(self.net.temperature)}, batch_size=B, prog_bar=False)
        self.log("train/acc", (out["logits"].argmax(-1) == labels).float().mean(), batch_size=B, prog_bar=True)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        self._check_batch(batch)
        self.net.temperature = self.temperature.value
        out = self(batch)
        k = scored(self, batch["label"].shape[0])      # 0 in a padding step (more processes than samples)
        logits, labels = out["logits"][:k], batch["label"][:k]
        self.metrics[stage].update(self._scores(out["logits"]), labels_or_ignored(batch["label"], k))
        self.eval_loss[stage].update(scored_cross_entropy(out["logits"], batch["label"], k), weight=k)
        self.log(f"{stage}/loss", self.eval_loss[stage], on_epoch=True)
        if reporting(self):
            self._report.append((self._scores(logits).detach(), labels))
        if stage == "val":
            unknown = torch.full_like(batch["label"], -1)
            self._records.append({
                "a_t": out["modality"][:k, 0].detach(), "weights": out["weights"][:k].detach(), "label": labels,
                "decided_by": batch.get("decided_by", unknown)[:k], "aspect": batch.get("aspect", unknown)[:k],
                "correct": (logits.argmax(-1) == labels).long(),
                "prob": torch.softmax(logits.float(), -1).detach(), "id": batch["id"][:k],
                "text": batch.get("text", [""] * batch["label"].shape[0])[:k],
            })

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._records = []

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.metrics["val"].compute(), sync_dist=True)
        self.metrics["val"].reset()
        self._write_report("val")
        if not self._records:
            return
        keys = ("a_t", "weights", "label", "decided_by", "aspect", "correct")
        local = {k: torch.cat([r[k] for r in self._records]) for k in keys}
        # every process's records, uneven shards included (evaluation does not pad: shared.data.loaders)
        gathered = {k: torch.cat(gather_all_tensors(v)) if self.trainer.world_size > 1 else v
                    for k, v in local.items()}
        a_t = gathered["a_t"]
        self.log_dict({"val/a_t_mean": a_t.mean(), "val/a_t_std": a_t.std() if a_t.numel() > 1 else a_t.sum() * 0,
                       "val/w_max_mean": gathered["weights"].max(-1).values.mean()})
        self.log_dict(toy_routing_metrics(gathered, self.net.routing != "uniform", self.net.text_only))
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log_routing_panels(self, gathered, self._records, self.hparams.panel_rows)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.metrics["test"].compute(), sync_dist=True)
        self.metrics["test"].reset()
        self._write_report("test")

    def _write_report(self, stage: str) -> None:
        """validate / test: memes, the ROC curve, the confusion matrix at 0.5 and each class's precision and
        recall; CIFAR / TinyImageNet, the confusion matrix, per-class top-1 and the top confusions."""
        parts, self._report = self._report, []
        if not reporting(self):
            return
        binary = self.hparams.task == "binary"
        like = torch.zeros((0,) if binary else (0, self.net.num_classes), device=self.device)
        scores = gathered(self, [p for p, _ in parts], like)
        labels = gathered(self, [y for _, y in parts], torch.zeros(0, dtype=torch.long, device=self.device))
        if not self.trainer.is_global_zero:
            return
        if binary:
            say(self, binary_report(self, stage, scores.sigmoid(), labels, ("not hateful", "hateful")))
        else:
            say(self, classification_report(self, stage, class_names(self, self.net.num_classes), labels,
                                            scores.argmax(-1)))

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """One record per meme of ``data.predict_dir`` (its images + one .jsonl naming them with their text) or
        else of ``data.predict_split``: the hateful probability, the router's text / image importance (a_t, a_v)
        and the weight of each expert; the launcher writes them to predictions.jsonl / .csv."""
        out = self(batch)
        prob = torch.softmax(out["logits"].float(), -1)
        ids = batch["id"].tolist() if isinstance(batch["id"], torch.Tensor) else list(batch["id"])
        return [{"id": ids[n], "hateful_prob": round(float(prob[n, 1]), 4),
                 "a_t": round(float(out["modality"][n, 0]), 4), "a_v": round(float(out["modality"][n, 1]), 4),
                 "expert_weights": [round(float(w), 4) for w in out["weights"][n].tolist()]}
                for n in range(prob.shape[0])]

    # ---------------------------------------------------------------------------------------------- optimisation
    def _total_steps(self) -> int:
        if self.optim.max_steps:
            return int(self.optim.max_steps)
        try:
            return max(1, int(self.trainer.estimated_stepping_batches))
        except Exception:  # no trainer attached (e.g. a bare module in a test)
            return 1

    def configure_optimizers(self):
        opt = self.optim.build(self.net)
        if self.optim.schedule == "none":
            return opt
        total = self._total_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.optim.lr_factor(step, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
