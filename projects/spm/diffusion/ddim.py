"""The noise schedule and the deterministic DDIM step (eta 0) the roll-out and the ``ddim`` sampler use."""

from __future__ import annotations

import torch
from torch import nn

PREDICTION_TYPES = ("epsilon", "v_prediction")


def ddim_timesteps(steps: int, num_train: int = 1000, offset: int = 0) -> list[int]:
    """``leading`` spacing (diffusers 0.18 default, steps_offset 0): 30 steps -> 957, 924, ..., 33, 0."""
    ratio = num_train // steps
    return [int(i * ratio + offset) for i in reversed(range(steps))]


class DDIM(nn.Module):
    """``alphas_cumprod`` [T] of the model's scheduler and the DDIM update from t to t_prev.

    ``prediction_type``: what the UNet predicts, ``epsilon`` or ``v_prediction`` (SD 2.x 768); :meth:`step`
    converts. ``clip_sample``: the scheduler's clip_sample_range when clip_sample is on (SD: off).
    ``use_clipped_model_output``: with clip_sample on, re-derive eps from the clipped x0 (diffusers
    ``DDIMScheduler.step(use_clipped_model_output=True)``); off (default) is what the official code's
    ``scheduler.step(...)`` call does. The committed toy model keeps it on (its scheduler_config.json key
    ``_use_clipped_model_output``): every toy number was measured with it, and without it the toy model draws
    noise (judged shape accuracy 0.26 instead of 0.95; 0.96 with clip_sample off).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, set_alpha_to_one: bool = False, clip_sample: float | None = None,
                 prediction_type: str = "epsilon", use_clipped_model_output: bool = False) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.final_alpha = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
        self.clip_sample = clip_sample
        self.prediction_type = prediction_type
        self.use_clipped_model_output = use_clipped_model_output

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def step(self, x: torch.Tensor, out: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        """Deterministic DDIM (eta 0) from t to t_prev (t_prev < 0: the final alpha) for the UNet's raw output
        ``out`` (eps, or v: x0 = sqrt(a) x - sqrt(1-a) v, eps = sqrt(a) v + sqrt(1-a) x), as diffusers'
        ``DDIMScheduler.step(eta=0)``; with clip_sample, x0 is clipped and, only with
        ``use_clipped_model_output``, eps re-derived from it."""
        a = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(self.final_alpha, device=x.device)
        if self.prediction_type == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * out
            eps = a.sqrt() * out + (1 - a).sqrt() * x
        else:
            eps = out
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            if self.use_clipped_model_output:
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
