"""The latent x_t the losses are computed at (LECO's recipe, docs/papers/spm.md §2.2): k ~ U{1..max-1} DDIM steps
of a 30-step schedule from noise, with the membrane on and CFG 3, conditioned on the target; then the timestep the
predictions are conditioned on. Also the official size draws: resolution buckets and SDXL's dynamic crops (§2.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from projects.spm.diffusion.conditioning import Conditioning
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import rollout
from projects.spm.network import SPMNetwork


@dataclass(frozen=True)
class Rollout:
    """How each iteration makes x_t (§2.2; §8 lists each knob against the paper and the official code).

    ``batch_size``: latents per iteration (the official prompt ``batch_size``), sharing k and the resolution.
    ``max_denoising_steps``: the schedule k is drawn from (k in 1..max-1). ``guidance``: the roll-out's CFG.
    ``guidance_rescale``: its CFG rescale; None: the family's official value (SDXL 0.7 as ``diffusion_xl``; SD v1.x /
    v2.x 0). ``with_membrane``: roll out with the membrane on (official); false (ours, a diagnostic) rolls out on
    the frozen model's own trajectory. ``timestep``: ``official`` t = 999 - floor(k * 1000 / 30) (LECO's level) or
    ``exact`` (the rolled-out level). ``resolution`` in pixels; ``dynamic_resolution``: H, W from the official
    buckets (:func:`resolution_bucket`). ``dynamic_crops``: SDXL's random original size and crop in
    ``add_time_ids`` (:func:`dynamic_crop`). ``merged``: roll out with the membrane merged into the weights
    (speed only, the same math as the hooks).
    """

    batch_size: int = 1
    max_denoising_steps: int = 30
    guidance: float = 3.0
    guidance_rescale: float | None = None
    with_membrane: bool = True
    timestep: Literal["official", "exact"] = "official"
    resolution: int = 512
    dynamic_resolution: bool = True
    dynamic_crops: bool = False
    merged: bool = True

    def __post_init__(self) -> None:
        if self.timestep not in ("official", "exact"):
            raise ValueError(f"model.rollout.timestep must be official or exact; got {self.timestep!r}")
        for name, low in (("max_denoising_steps", 2), ("batch_size", 1), ("resolution", 8)):
            if int(getattr(self, name)) < low:  # k is drawn from 1 .. max_denoising_steps - 1
                raise ValueError(f"model.rollout.{name} must be >= {low}; got {getattr(self, name)}")

    def rescale_for(self, is_xl: bool) -> float:
        """The roll-out's CFG rescale: ``guidance_rescale``, or the family's official value (SDXL 0.7)."""
        return float(self.guidance_rescale) if self.guidance_rescale is not None else (0.7 if is_xl else 0.0)

    def timestep_at(self, k: int, steps: list[int], num_train: int) -> int:
        """The timestep the losses condition on after k roll-out steps of ``steps`` (§2.2 step 5)."""
        if self.timestep == "official":
            return num_train - 1 - int(k * num_train / self.max_denoising_steps)
        return steps[k]


def roll_out(diffusion: DiffusionModel, network: SPMNetwork, x: torch.Tensor, timesteps: list[int],
             uncond: Conditioning, target: Conditioning, knobs: Rollout, rescale: float) -> torch.Tensor:
    """x_T [B, ...] -> x_t after ``timesteps`` DDIM steps with CFG ``knobs.guidance`` towards ``target``: the
    membrane on (merged into the weights, or through its hooks) or, with ``knobs.with_membrane`` false, off."""
    # inference_mode, not the official no_grad: no version counters or view tracking on the roll-out's UNet calls
    with torch.inference_mode():
        if not knobs.with_membrane:
            with network.applied(0.0):
                x = rollout(diffusion, x, timesteps, uncond, target, knobs.guidance, rescale=rescale)
        elif knobs.merged:
            params = network.merged_weights(diffusion.unet, 1.0)
            with network.applied(0.0):
                x = rollout(diffusion, x, timesteps, uncond, target, knobs.guidance, params, rescale)
        else:
            with network.applied(1.0):
                x = rollout(diffusion, x, timesteps, uncond, target, knobs.guidance, rescale=rescale)
    return x.clone()  # an ordinary tensor again: autograd may save it in the membrane's forward


def resolution_bucket(resolution: int, dynamic: bool, multiple: int, step: int = 64) -> tuple[int, int]:
    """Official ``get_random_resolution_in_bucket``: H and W independently from the multiples of ``step`` (64) in
    [resolution / 2, resolution): ``randint(res/2 // 64, res // 64) * 64``, whose upper bound is excluded, so
    ``resolution`` itself is never drawn (512: 256..448; 768: 384..704; 1024: 512..960). Below 128 px the official
    range is empty (it draws 0): there (pixel-space toys) the step is resolution / 8, i.e. {4,5,6,7} * res / 8.
    The result is rounded down to ``multiple`` (what the UNet's down-sampling needs)."""
    if not dynamic:
        return resolution, resolution
    step = step if resolution >= 2 * step else resolution // 8
    low, high = resolution // 2 // step, resolution // step
    h, w = (int(torch.randint(low, high, (1,))) * step for _ in range(2))
    return h // multiple * multiple, w // multiple * multiple


def dynamic_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """Official SDXL ``dynamic_crops`` (``get_add_time_ids``): an original size ``int(H * s), int(W * s)`` with
    ``s = 1 + 2 * rand()`` in [1, 3), and a crop top-left uniform over the positions where an H x W crop fits;
    returns (original H, original W, top, left) in pixels, one draw per training iteration."""
    scale = torch.rand(1).item() * 2 + 1
    original = int(height * scale), int(width * scale)
    top = int(torch.randint(0, original[0] - height + 1, (1,)))
    left = int(torch.randint(0, original[1] - width + 1, (1,)))
    return original[0], original[1], top, left
