"""Learning-rate schedules shared by the projects and the pretraining tier."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear 0 -> 1 over ``warmup`` steps, then cosine to 0 at ``total`` (0 after it).

    The official ``WarmupCosineSchedule`` of ViT-pytorch / TransFG, which DiD and RAMS-Trans both use.
    """
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine_schedule(optimizer, trainer, warmup: int, total: int | None = None) -> dict:
    """Lightning's ``configure_optimizers`` answer for :func:`warmup_cosine`, stepped per optimizer step.

    The length is ``total`` or the Trainer's ``estimated_stepping_batches`` (max_steps or epochs x batches,
    divided by gradient accumulation, so the cosine ends where training does); ``warmup`` is clamped below it.
    """
    total = max(1, int(total if total is not None else trainer.estimated_stepping_batches))
    warmup = min(warmup, total - 1)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
