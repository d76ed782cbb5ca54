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


def test_the_schedule_spans_the_trainers_optimizer_steps_unless_overridden() -> None:
    """DiD and RAMS-Trans take the length from ``trainer.estimated_stepping_batches`` (accumulation included)."""
    from types import SimpleNamespace

    import torch

    from shared.schedules import warmup_cosine_schedule

    def lrs(trainer, warmup, total=None, steps=12):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_cosine_schedule(opt, trainer, warmup, total)["lr_scheduler"]["scheduler"]
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    trainer = SimpleNamespace(estimated_stepping_batches=10)   # e.g. 20 batches, accumulate_grad_batches 2
    got = lrs(trainer, warmup=2)
    assert got[:3] == [0.0, 0.5, 1.0] and got[10] == pytest.approx(0.0, abs=1e-12) and got[9] > 0
    assert lrs(trainer, warmup=2, total=6)[6] == pytest.approx(0.0, abs=1e-12)    # explicit total_steps wins
    assert lrs(SimpleNamespace(estimated_stepping_batches=1), warmup=5, steps=1) == [1.0]  # warm-up clamped
    import projects.did.module as did_module
    import projects.rams_trans.module as rams_module
    assert did_module.warmup_cosine_schedule is rams_module.warmup_cosine_schedule is warmup_cosine_schedule
