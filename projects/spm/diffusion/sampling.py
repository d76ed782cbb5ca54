"""Classifier-free guidance and the samplers: the training roll-out (our DDIM), the CFG sampler of the image grids
and the toy judge, and generation with any diffusers scheduler (``python -m projects.spm generate``).

Every function takes the frozen :class:`~projects.spm.diffusion.model.DiffusionModel` first. ``unet_params``
({parameter name: tensor}, e.g. an SPM's merged weights) are swapped into the UNet for the whole loop
(:func:`~projects.spm.diffusion.model.swapped_parameters`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import diffusers
import torch

from projects.spm.diffusion.conditioning import Conditioning, as_conditioning
from projects.spm.diffusion.ddim import ddim_timesteps
from projects.spm.diffusion.model import DiffusionModel, swapped_parameters

# Samplers for generation: ``ddim`` is our batched DDIM (eta 0, the timesteps of diffusers' DDIMScheduler for the
# model's scheduler config); the others are diffusers scheduler classes built from that config (``default``: the
# class the folder names, e.g. PNDM for SD v1.4, which is what the official evaluation samples with).
SAMPLERS: dict[str, tuple[str | None, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "lms": ("LMSDiscreteScheduler", {}),
    "default": (None, {}),
}


def rescale_guidance(guided: torch.Tensor, cond_out: torch.Tensor, rescale: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2023, Sec. 3.4; diffusers ``rescale_noise_cfg``, the official ``predict_noise_xl``
    with ``guidance_rescale=0.7``): mix ``guided`` rescaled to the per-sample std of ``cond_out`` with ``guided``."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond_out.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


def guided_eps(model: DiffusionModel, x: torch.Tensor, t: int, uncond: Conditioning | torch.Tensor,
               cond: Conditioning | torch.Tensor, guidance: float, rescale: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance with [uncond; cond] in one UNet call. ``x`` [B, ...]; ``uncond`` batch 1.

    Returns the guided raw output (eps, or v for v-prediction: CFG is affine, so guiding v equals guiding eps
    then converting, and ``DDIM.step`` / the diffusers schedulers convert). ``rescale``: CFG rescale
    (:func:`rescale_guidance`) on the raw output, as the pipelines and the official ``predict_noise_xl`` do.
    """
    cond, uncond = as_conditioning(cond), as_conditioning(uncond)
    out = model.predict(torch.cat([x, x]), t, Conditioning.cat([uncond.expand(cond.batch), cond]))
    e_u, e_c = out.chunk(2)
    guided = e_u + guidance * (e_c - e_u)
    return rescale_guidance(guided, e_c, rescale) if rescale else guided


@torch.no_grad()
def rollout(model: DiffusionModel, x: torch.Tensor, timesteps: list[int], uncond: Conditioning | torch.Tensor,
            cond: Conditioning | torch.Tensor, guidance: float, unet_params: dict | None = None,
            rescale: float = 0.0, on_step: Callable[[], Any] | None = None) -> torch.Tensor:
    """Run DDIM over ``timesteps`` (the consecutive steps of one schedule) with CFG; returns x after them.
    ``rescale``: CFG rescale (official SDXL roll-out ``diffusion_xl``: 0.7; SD v1/v2: none). ``on_step``: called
    after each step (a progress bar's ``update``)."""
    ratio = timesteps[0] - timesteps[1] if len(timesteps) > 1 else 1000 // 30
    with swapped_parameters(model.unet, unet_params):
        for t in timesteps:
            x = model.ddim.step(x, guided_eps(model, x, t, uncond, cond, guidance, rescale), t, t - ratio)
            if on_step is not None:
                on_step()
    return x


@torch.no_grad()
def sample(model: DiffusionModel, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 7.5,
           height: int | None = None, width: int | None = None, negative: str = "",
           unet_params: dict | None = None, chunk: int = 512, on_step: Callable[[], Any] | None = None
           ) -> torch.Tensor:
    """Batched DDIM + CFG generation of one image per prompt (repeat prompts for more); [N, 3, H, W] in [0, 1].

    Sample i's noise depends only on (seed, i), so chunking does not change the images. ``on_step``: called after
    each DDIM step of each chunk (``steps x ceil(N / chunk)`` calls).
    """
    size = model.unet.config.sample_size * model.latent_scale
    height, width = height or size, width or size
    device = model.ddim.alphas_cumprod.device
    gen = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(model.latent_shape(len(prompts), height, width), generator=gen)
    cond_all = model.encode(prompts)
    uncond = model.encode([negative])
    timesteps = ddim_timesteps(steps, model.ddim.num_train_timesteps, offset=0)
    out = []
    for start in range(0, len(prompts), chunk):
        x = noise[start:start + chunk].to(device, dtype=next(model.unet.parameters()).dtype)
        x = rollout(model, x, timesteps, uncond, cond_all[start:start + chunk], guidance, unet_params,
                    on_step=on_step)
        out.append(model.decode(x).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------- generation with any sampler
def make_scheduler(model: DiffusionModel, sampler: str = "default"):
    """A diffusers scheduler of kind ``sampler`` (see ``SAMPLERS``) built from the model's scheduler config;
    config keys the class does not take are dropped (no warnings)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not one of {sorted(SAMPLERS)}")
    config = dict(model.scheduler_config or {"num_train_timesteps": model.ddim.num_train_timesteps})
    name, extra = SAMPLERS[sampler]
    name = name or config.get("_class_name") or "DDIMScheduler"
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"scheduler class {name!r} (from the model's scheduler config) is not in diffusers")
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in {**config, **extra}.items() if k in accepted})


def sampling_timesteps(model: DiffusionModel, steps: int) -> list[int]:
    """DDIM's timesteps for ``steps`` steps under the model's scheduler config (spacing and steps_offset)."""
    if model.scheduler_config is None:
        return ddim_timesteps(steps, model.ddim.num_train_timesteps)
    scheduler = make_scheduler(model, "ddim")
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


@torch.no_grad()
def denoise(model: DiffusionModel, noise: torch.Tensor, cond: Conditioning | torch.Tensor,
            uncond: Conditioning | torch.Tensor, guidance: float | torch.Tensor = 7.5, steps: int = 30,
            sampler="ddim", unet_params: dict | None = None, generators: list[torch.Generator] | None = None,
            callback: Callable[[int], None] | None = None, guidance_rescale: float = 0.0) -> torch.Tensor:
    """CFG generation from ``noise`` [B, ...] (on the model's device and dtype) to the final latents.

    ``cond`` [B] / ``uncond`` [1]: ``model.encode`` outputs (SDXL: with pooled embeddings; the time ids follow
    from the latent size), so a family's pipeline (StableDiffusionPipeline / StableDiffusionXLPipeline) and this
    loop give the same latents for the same noise and scheduler. ``guidance_rescale``: as the pipelines' (0).

    ``guidance``: a float or one value per sample [B]. ``sampler``: a name of ``SAMPLERS`` or a diffusers
    scheduler instance (its state is reset by ``set_timesteps``). ``ddim`` runs our ``DDIM.step`` over the
    DDIMScheduler's timesteps (same numbers as diffusers DDIM, eta 0); the others the generic
    ``scale_model_input`` / ``step`` loop. ``generators``: one per sample, for stochastic samplers (euler_a),
    so a sample's noise does not depend on the rest of the batch. ``callback(i)`` after each step.
    """
    if isinstance(guidance, torch.Tensor):
        guidance = guidance.to(noise.device, torch.float32).view(-1, *([1] * (noise.ndim - 1)))
    with swapped_parameters(model.unet, unet_params):
        x = noise
        if sampler == "ddim":
            timesteps = sampling_timesteps(model, steps)
            ratio = model.ddim.num_train_timesteps // steps
            for i, t in enumerate(timesteps):
                eps = guided_eps(model, x, t, uncond, cond, guidance, guidance_rescale)
                x = model.ddim.step(x, eps.to(x.dtype), t, t - ratio).to(noise.dtype)
                if callback is not None:
                    callback(i)
            return x
        scheduler = make_scheduler(model, sampler) if isinstance(sampler, str) else sampler
        scheduler.set_timesteps(steps, device=x.device)
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        x = x * scheduler.init_noise_sigma
        for i, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)
            eps = guided_eps(model, x_in, t.item(), uncond, cond, guidance, guidance_rescale)
            kwargs = {"generator": generators} if takes_generator and generators is not None else {}
            x = scheduler.step(eps.to(x.dtype), t, x, **kwargs).prev_sample.to(noise.dtype)
            if callback is not None:
                callback(i)
        return x
