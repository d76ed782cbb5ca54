"""The pretraining recipe: a small ViT trained on the corpus with a sigmoid multi-label loss.

Deterministic for a given thread count (batch order from ``(seed, epoch)``, flips from ``(seed, step)``, no
dropout) and resumable: ``<work>/ckpt.pt`` holds model, optimiser, schedule and step every ``ckpt_every`` steps,
and a run started again with the same recipe continues from it and reaches the same weights.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from shared.backbones.vit import ViTBackbone
from shared.backbones.weights import torch_load
from shared.data.images import IMAGENET_MEAN, IMAGENET_STD
from shared.metrics.multilabel import multilabel_average_precision
from shared.pretrain.corpus import CLASS_NAMES, CorpusSpec, build_split
from shared.schedules import warmup_cosine

logger = logging.getLogger(__name__)


@dataclass
class Recipe:
    """Architecture, corpus size and optimisation of one pretraining run."""

    backbone: str = "vit_tiny_patch16_224"
    arch: dict = field(default_factory=lambda: dict(embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0))
    img_size: int = 64
    patch_size: int = 8
    n_train: int = 160_000
    n_val: int = 4096
    batch_size: int = 128
    steps: int = 6000
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 300
    grad_clip: float = 1.0
    seed: int = 0


class PretrainNet(nn.Module):
    """:class:`ViTBackbone` + a linear multi-label head on the CLS token (the head is not exported)."""

    def __init__(self, r: Recipe) -> None:
        super().__init__()
        self.backbone = ViTBackbone(r.backbone, img_size=r.img_size, patch_size=r.patch_size, **r.arch)
        self.head = nn.Linear(self.backbone.embed_dim, len(CLASS_NAMES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.backbone(x)
        return self.head(tokens[:, 0])


def to_input(images: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]`` (the downstream transforms' normalisation)."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255)
    if flip is not None and flip.any():
        x[torch.from_numpy(flip)] = x[torch.from_numpy(flip)].flip(-1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def batch_indices(r: Recipe, step: int) -> np.ndarray:
    """Sample indices of ``step``: epoch-wise permutations seeded by ``(seed, epoch)`` (drop-last)."""
    per_epoch = r.n_train // r.batch_size
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng((r.seed, epoch)).permutation(r.n_train)
    return np.sort(perm[k * r.batch_size:(k + 1) * r.batch_size])  # sorted: faster memmap reads, same set


@torch.no_grad()
def evaluate(net: PretrainNet, images: np.ndarray, targets: np.ndarray, batch: int = 512) -> dict[str, float]:
    """Held-out mAP (%), exact-set accuracy (every class right at p = 0.5, %) and per-label F1 (%)."""
    net.eval()
    scores = torch.cat([net(to_input(images[i:i + batch])) for i in range(0, len(images), batch)])
    net.train()
    y = torch.from_numpy(targets).float()
    ap = multilabel_average_precision(scores, y)
    pred = scores > 0
    tp = (pred & (y == 1)).sum().item()
    f1 = 2 * tp / max(1, pred.sum().item() + (y == 1).sum().item())
    return {"mAP": round(100 * float(ap.nanmean()), 2),
            "exact_set_acc": round(100 * float((pred == (y == 1)).all(1).float().mean()), 2),
            "label_f1": round(100 * f1, 2)}


def _optimizer(net: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    decay = [p for n, p in net.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in net.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=r.lr)


def train(r: Recipe, work: Path, data: Path, threads: int, eval_every: int = 1000, ckpt_every: int = 250,
          progress: bool = True, stop_after: int | None = None) -> tuple[PretrainNet, dict | None]:
    """Run (or resume) the recipe in ``work``; returns the trained net and its card (without file names).

    ``stop_after`` ends this call after that many steps with a checkpoint, as an interruption would (card
    ``None``); calling again resumes.
    """
    torch.set_num_threads(threads)
    spec = CorpusSpec(seed=r.seed, size=r.img_size)
    train_x, train_y = build_split(spec, 0, r.n_train, data / f"train_{r.n_train}", workers=2, progress=progress)
    val_x, val_y = build_split(spec, 1, r.n_val, data / f"val_{r.n_val}", workers=2, progress=progress)
    torch.manual_seed(r.seed)
    net = PretrainNet(r)
    opt = _optimizer(net, r)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, r.steps, r.warmup_steps))
    work.mkdir(parents=True, exist_ok=True)
    ckpt, history_file = work / "ckpt.pt", work / "history.jsonl"
    start, wall_before = 0, 0.0
    if ckpt.is_file():
        state = torch_load(ckpt)
        if json.loads(state["recipe"]) != json.loads(json.dumps(asdict(r))):
            raise ValueError(f"{ckpt}: saved by another recipe ({state['recipe']}); use another --work folder "
                             "or delete it")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, wall_before = int(state["step"]), float(state["wall_s"])
        logger.info("resuming %s at step %d", ckpt, start)
    t0 = time.perf_counter()

    def save(step: int) -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": step, "wall_s": wall_before + time.perf_counter() - t0,
                    "recipe": json.dumps(asdict(r))}, tmp)
        os.replace(tmp, ckpt)

    bar = None
    if progress:
        bar = tqdm(total=r.steps, initial=start, desc="pretrain", unit="step")
    net.train()
    done = start
    for step in range(start, r.steps):
        idx = batch_indices(r, step)
        flip = np.random.default_rng((r.seed, 1, step)).random(len(idx)) < 0.5
        x, y = to_input(train_x[idx], flip), torch.from_numpy(train_y[idx]).float()
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), r.grad_clip)
        opt.step()
        sched.step()
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if done % eval_every == 0 or done == r.steps:
            row = {"step": done, "loss": round(loss.item(), 5), **evaluate(net, val_x, val_y)}
            with history_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            (bar.write if bar is not None else print)(json.dumps(row))
        interrupted = stop_after is not None and done - start >= stop_after
        if done % ckpt_every == 0 or done == r.steps or interrupted:
            save(done)
        if interrupted:
            break
    if bar is not None:
        bar.close()
    if stop_after is not None and done < r.steps:
        return net, None
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    card = {"recipe": asdict(r), "corpus": {**asdict(CorpusSpec(seed=r.seed, size=r.img_size)),
                                             "n_train": r.n_train, "n_val": r.n_val, "classes": list(CLASS_NAMES)},
            "steps": r.steps, "samples_seen": r.steps * r.batch_size,
            "held_out": evaluate(net, val_x, val_y), "train_wall_s": round(float(state["wall_s"]), 1),
            "threads": threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    return net, card
