"""Learning-rate schedules shared by the projects and the pretraining tier."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear 0 -> 1 over ``warmup`` steps, then cosine to 0 at ``total`` (0 after it).

    The official ``WarmupCosineSchedule`` of ViT-pytorch / TransFG, which DiD and RAMS-Trans both use.
    """
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
