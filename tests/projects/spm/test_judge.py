"""The toy judge (``toy/judge.py``): which images count as the erased concept, in both passes, on a stub model."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from projects.spm.toy.judge import ToyJudge
from projects.spm.toy.scenes import TOY_COLORS, TOY_SHAPES


class StubClassifier(torch.nn.Module):
    """Reads the shape index from an image's first pixel and the colour index from its second."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = images[:, 0].flatten(1)
        return (torch.nn.functional.one_hot(pixels[:, 0].long(), len(TOY_SHAPES)).float(),
                torch.nn.functional.one_hot(pixels[:, 1].long(), len(TOY_COLORS)).float())


def test_the_judge_counts_the_target_in_both_passes(monkeypatch):
    """Membrane off: every target image is a circle; on: the first of two is a triangle, the second a circle (the
    non-target images stay right). The target rate is the share judged circle in both passes: 1, then 0.5."""
    targets, others = ["circle", "a red circle"], ["a blue star"]

    def generate(prompts, gamma, seed, steps, guidance, on_step=None) -> torch.Tensor:
        for _ in range(steps):
            on_step()                                  # the judge's progress bar
        images = torch.zeros(len(prompts), 3, 2, 2)
        for i, prompt in enumerate(prompts):
            shape = TOY_SHAPES.index("star") if "star" in prompt else (2 if gamma and i % 2 == 0 else 0)
            color = TOY_COLORS.index("blue") if "blue" in prompt else 0
            images[i, 0, 0, :2] = torch.tensor([shape, color], dtype=torch.float)
        return images

    module = SimpleNamespace(targets=["circle"], device=torch.device("cpu"), generate=generate)
    judge = ToyJudge(targets, others, images_per_prompt=2)
    judge.classifier = StubClassifier()
    judge.on_validation_epoch_start(None, module)
    logged = []
    monkeypatch.setattr("projects.spm.toy.judge.log_images", lambda m, key, images, captions: logged.append(
        (key, [tuple(i.shape) for i in images], captions)))
    judge.on_validation_batch_end(SimpleNamespace(is_global_zero=True, sanity_checking=False), module, None,
                                  torch.tensor([0]), 0)
    assert logged == [("val/judge_samples", [(3, 8, 8)] * 6,      # 3 prompts x (original, SPM), 4x upscaled
                       ["circle | original", "a red circle | original", "a blue star | original",
                        "circle | SPM", "a red circle | SPM", "a blue star | SPM"])]
    rates = {k: float(v) for k, v in judge._sums.items() if k.startswith("val/target_rate")}
    assert rates == {"val/target_rate_before": 1.0, "val/target_rate_before/circle": 1.0,
                     "val/target_rate_before/a red circle": 1.0, "val/target_rate": 0.5,
                     "val/target_rate/circle": 0.5, "val/target_rate/a red circle": 0.5}
    assert float(judge._sums["val/nontarget_acc"]) == float(judge._sums["val/nontarget_acc_before"]) == 1.0
