"""The shared warm-up + cosine LR factor (ViT-pytorch's WarmupCosineSchedule)."""

import math

import pytest

from shared.schedules import warmup_cosine


def test_warmup_then_cosine_schedule() -> None:
    total, warmup = 100, 5
    assert warmup_cosine(0, total, warmup) == 0.0
    assert warmup_cosine(2, total, warmup) == pytest.approx(0.4)
    assert warmup_cosine(5, total, warmup) == pytest.approx(1.0)
    assert warmup_cosine(5 + 95 // 2, total, warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi * 47 / 95)))
    assert warmup_cosine(100, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(130, total, warmup) == 0.0  # past the end: stays at 0 (RAMS-Trans' clamp)
