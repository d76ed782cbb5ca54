"""LightningModule for DRDF: losses, the MMF / SGD recipes, metrics and the routing panels (drdf.md 6, 8)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities.distributed import gather_all_tensors

from projects.drdf.model import DRDF, expert_cross_entropy, load_balance_loss, temperature_at
from shared.metrics import binary_metrics, topk_accuracy
from shared.panels import log_bar_chart, log_histogram, log_table


class DRDFModule(LightningModule):
    """DRDF (or its single-expert / uniform-ensemble controls) trained with

    L = CE(y, label) + lambda_aux * mean_k CE(z_k, label) [+ lambda_bal * CV(sum_batch w)^2]  (drdf.md 6).

    Experts: ``num_experts`` copies of ``expert``, or a heterogeneous list ``experts`` (which then wins).
    ``task="binary"`` (Hateful Memes: val/auroc, val/acc on P(hateful) = softmax(y)[:, 1]) or ``"multiclass"``
    (CIFAR / TinyImageNet: val/top1, val/top5). ``multimodal=False`` puts ``unimodal_text_mode`` in the text slot.
    Optimiser: ``adamw`` (MMF HM recipe: linear warm-up then linear decay to 0) or ``sgd`` (Nesterov momentum,
    cosine); routers + MWF at ``router_lr_mult`` x the expert lr. ``cpu_threads``: torch intra-op threads on CPU.
    """

    def __init__(self, num_classes: int = 2, task: Literal["binary", "multiclass"] = "binary",
                 expert: str | None = "late_fusion", num_experts: int | None = 3,
                 expert_kwargs: dict[str, Any] | None = None,
                 routing: Literal["drdf", "uniform"] = "drdf", multimodal: bool = True,
                 unimodal_text_mode: Literal["image", "none", "constant"] = "image",
                 text_router: dict[str, Any] | None = None, image_router: dict[str, Any] | None = None,
                 text_slot_image_router: dict[str, Any] | None = None, mwf: dict[str, Any] | None = None,
                 fusion: Literal["logits", "probs", "features"] = "logits", freeze_experts: bool = False,
                 temperature: float = 1.0, temperature_schedule: bool = False, temperature_start: float = 30.0,
                 temperature_fraction: float = 0.1, lambda_aux: float = 0.5, lambda_bal: float = 0.0,
                 optimizer: Literal["adamw", "sgd"] = "adamw", lr: float = 5e-5, router_lr_mult: float = 10.0,
                 weight_decay: float = 0.0, eps: float = 1e-8, momentum: float = 0.9, nesterov: bool = True,
                 schedule: Literal["linear", "cosine", "none"] = "linear", warmup_steps: int = 2000,
                 max_steps: int | None = None, panel_rows: int = 8, cpu_threads: int | None = None,
                 experts: list | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if task not in ("binary", "multiclass"):
            raise ValueError(f"model.task must be binary or multiclass, got {task!r}")
        if task == "binary" and num_classes != 2:
            raise ValueError(f"model.task=binary needs num_classes=2, got {num_classes}")
        self.model = DRDF(num_classes, expert, num_experts, expert_kwargs, routing,
                          text_slot="text" if multimodal else unimodal_text_mode, text_router=text_router,
                          image_router=image_router, text_slot_image_router=text_slot_image_router, mwf=mwf,
                          fusion=fusion, freeze_experts=freeze_experts, experts=experts)
        self.monitor = "val/auroc" if task == "binary" else "val/top1"
        self.monitor_mode = "max"
        self.headline_metric = self.monitor
        make = (lambda p: binary_metrics(prefix=p)) if task == "binary" else (
            lambda p: topk_accuracy(num_classes, ks=(1, 5), prefix=p))
        self.metrics = nn.ModuleDict({"val": make("val/"), "test": make("test/")})
        self._records: list[dict[str, Any]] = []
        self._vocab_checked = False

    def setup(self, stage: str) -> None:
        # Tiny toy models on a shared CPU: one intra-op thread is several times faster than two fighting threads.
        if self.hparams.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(self.hparams.cpu_threads)

    # ---------------------------------------------------------------------------------------------- steps
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.model(batch)

    def _check_batch(self, batch: dict) -> None:
        if (batch["label"] < 0).any():
            raise ValueError("training / evaluation batch has samples without a label (label -1): use an "
                             "annotated split (train, dev_seen, test_seen, ...) or `predict` for unlabeled files")
        if self._vocab_checked or "input_ids" not in batch:
            return
        max_id = int(batch["input_ids"].max())
        for name, mod in self.model.named_modules():
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
        h = self.hparams
        if h.temperature_schedule:
            self.model.temperature = temperature_at(self.global_step, self._total_steps(), h.temperature_start,
                                                    h.temperature, h.temperature_fraction)
        else:
            self.model.temperature = h.temperature

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._check_batch(batch)
        out = self(batch)
        labels = batch["label"]
        ce = F.cross_entropy(out["logits"], labels)
        loss = ce
        if self.hparams.lambda_aux > 0 and self.model.num_experts > 1:
            aux = expert_cross_entropy(out["expert_logits"], labels)
            loss = loss + self.hparams.lambda_aux * aux
            self.log("train/aux_ce", aux)
        if self.hparams.lambda_bal > 0:
            bal = load_balance_loss(out["weights"])
            loss = loss + self.hparams.lambda_bal * bal
            self.log("train/balance", bal)
        B = labels.shape[0]
        self.log_dict({"train/loss": loss, "train/ce": ce, "train/a_t": out["modality"][:, 0].mean(),
                       "train/temperature": float(self.model.temperature)}, batch_size=B, prog_bar=False)
        self.log("train/acc", (out["logits"].argmax(-1) == labels).float().mean(), batch_size=B, prog_bar=True)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        self._check_batch(batch)
        self.model.temperature = self.hparams.temperature
        out = self(batch)
        self.metrics[stage].update(self._scores(out["logits"]), batch["label"])
        self.log(f"{stage}/loss", F.cross_entropy(out["logits"], batch["label"]), batch_size=batch["label"].shape[0],
                 sync_dist=True)
        if stage == "val":
            unknown = torch.full_like(batch["label"], -1)
            self._records.append({
                "a_t": out["modality"][:, 0].detach(), "weights": out["weights"].detach(), "label": batch["label"],
                "decided_by": batch.get("decided_by", unknown), "aspect": batch.get("aspect", unknown),
                "correct": (out["logits"].argmax(-1) == batch["label"]).long(),
                "prob": torch.softmax(out["logits"].float(), -1).detach(), "id": batch["id"],
                "text": batch.get("text", [""] * batch["label"].shape[0]),
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
        self._log_toy_analysis(gathered)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._log_panels(gathered)

    def _log_toy_analysis(self, g: dict[str, torch.Tensor]) -> None:
        """On the toy set (known ``decided_by`` / ``aspect``): accuracy per group, how well a_t and the weight on
        the text-only experts separate the text-decided (positive) from the image-decided memes (AUROC), and the
        mean weight of each expert per aspect (verdict / colour / shape)."""
        split = g["decided_by"]
        known = split >= 0
        if not (known.any() and (split[known] == 0).any() and (split[known] == 1).any()):
            return
        is_text = (split[known] == 0).long()
        correct = g["correct"][known].float()
        self.log_dict({"val/acc_text_decided": correct[is_text == 1].mean(),
                       "val/acc_image_decided": correct[is_text == 0].mean()})
        if self.model.routing == "uniform":
            return  # constant weights: nothing to separate
        self.log("val/a_t_auroc_text_decided", binary_auroc(g["a_t"][known], is_text))
        w = g["weights"].float()
        if self.model.text_only:
            w_text = w[:, self.model.text_only].sum(-1)
            self.log("val/w_text_auroc_text_decided", binary_auroc(w_text[known], is_text))
        for code, name in enumerate(("verdict", "colour", "shape")):
            rows = g["aspect"] == code
            if rows.any():
                for k, mean_w in enumerate(w[rows].mean(0).tolist()):
                    self.log(f"val/w{k}_{name}", mean_w)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.metrics["test"].compute(), sync_dist=True)
        self.metrics["test"].reset()

    def _log_panels(self, gathered: dict[str, torch.Tensor]) -> None:
        """Histogram of a_t, mean expert weights per class, and the most text- / image-heavy samples."""
        log_histogram(self, "val/a_t_hist", gathered["a_t"])
        w, labels = gathered["weights"].float(), gathered["label"]
        K = w.shape[1]
        names, values = [], []
        for c in labels.unique().tolist():
            mean_w = w[labels == c].mean(0)
            names += [f"class {c} / expert {k}" for k in range(K)]
            values += mean_w.tolist()
        log_bar_chart(self, "val/expert_weights_per_class", names, values)
        # The table uses this rank's samples only (texts are not gathered across processes).
        a_t = torch.cat([r["a_t"] for r in self._records]).float().cpu()
        texts = [t for r in self._records for t in r["text"]]
        ids = torch.cat([r["id"] for r in self._records]).tolist()
        lab = torch.cat([r["label"] for r in self._records]).tolist()
        dec = torch.cat([r["decided_by"] for r in self._records]).tolist()
        prob = torch.cat([r["prob"] for r in self._records]).float().cpu()
        n = min(self.hparams.panel_rows, a_t.numel())
        order = a_t.argsort(descending=True)
        rows = []
        for kind, idx in (("text-heavy", order[:n]), ("image-heavy", order.flip(0)[:n])):
            for i in idx.tolist():
                rows.append([kind, ids[i], round(float(a_t[i]), 4), lab[i], round(float(prob[i].max()), 4),
                             int(prob[i].argmax()), {0: "text", 1: "image"}.get(dec[i], "?"), texts[i]])
        log_table(self, "val/extreme_modality_samples",
                  ["kind", "id", "a_t", "label", "p_max", "pred", "decided_by", "text"], rows)

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
        if self.hparams.max_steps:
            return int(self.hparams.max_steps)
        try:
            return max(1, int(self.trainer.estimated_stepping_batches))
        except Exception:  # no trainer attached (e.g. a bare module in a test)
            return 1

    def configure_optimizers(self):
        h = self.hparams
        groups = [{"params": self.model.expert_parameters(), "lr": h.lr, "name": "experts"}]
        router = self.model.router_parameters()
        if router:
            groups.append({"params": router, "lr": h.lr * h.router_lr_mult, "name": "routers"})
        if h.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=h.lr, eps=h.eps, weight_decay=h.weight_decay)
        elif h.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=h.lr, momentum=h.momentum, nesterov=h.nesterov,
                                  weight_decay=h.weight_decay)
        else:
            raise ValueError(f"model.optimizer must be adamw or sgd, got {h.optimizer!r}")
        if h.schedule == "none":
            return opt
        total, warmup = self._total_steps(), min(h.warmup_steps, max(0, self._total_steps() - 1))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 1.0 - progress if h.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
