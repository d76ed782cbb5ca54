"""The frozen text-to-image model SPM is trained on: a diffusers folder (unet/, text_encoder/, tokenizer/,
scheduler/, optional vae/) with batched noise prediction, DDIM roll-outs and a small CFG sampler.

Pure nn.Module code (no Lightning). Without ``vae/`` the UNet works in pixel space (the toy model).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def swapped_parameters(module: nn.Module, tensors: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Use ``tensors`` ({parameter name: tensor}, e.g. merged SPM weights) as those parameters of ``module`` until
    exit, then put the originals back (nothing is copied or modified). One swap serves a whole sampling loop, where
    ``torch.func.functional_call`` would swap on every UNet call."""
    saved = []
    try:
        for name, value in (tensors or {}).items():
            owner_path, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_path)
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, nn.Parameter(value.detach(), requires_grad=False))
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)

# SD v1.4's UNet (CompVis/stable-diffusion-v1-4 unet/config.json), for building it with no weights.
SD14_UNET_CONFIG: dict = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)

# The toy base model's UNet: pixel space, 16x16, attention only at 8x8 and 4x4 (cheap on CPU),
# 7 Transformer2DModels (2 down, 1 mid, 4 up).
TOY_UNET_CONFIG: dict = dict(
    sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, cross_attention_dim=64,
    attention_head_dim=16, norm_num_groups=8, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)


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


def _require(folder: Path, sub: str, config: str | None = None) -> Path:
    """``folder/sub``, with its ``config`` file, else one line naming what is missing."""
    path = folder / sub
    if not path.is_dir():
        raise FileNotFoundError(f"base model folder {folder}: missing {sub}/ (expected the diffusers layout "
                                f"unet/, text_encoder/, tokenizer/, scheduler/ and optionally vae/)")
    if config is not None and not (path / config).is_file():
        raise FileNotFoundError(f"base model folder {folder}: missing {sub}/{config} (expected the diffusers "
                                f"layout, as written by save_pretrained)")
    return path


def _load(cls, path: Path, **kw):
    """``cls.from_pretrained`` on a component folder whose weights were checked (:func:`_check_weights`); ``.bin``
    only where there is no ``.safetensors`` (both libraries read it with ``torch.load(weights_only=True)``)."""
    return cls.from_pretrained(path, local_files_only=True, use_safetensors=_check_weights(path), **kw)


def _check_weights(path: Path) -> bool:
    """Whether a component folder's weights are .safetensors (readable ones), else .bin files that
    ``torch.load(weights_only=True)`` reads; else one line naming the file, where the libraries print a traceback."""
    from safetensors import SafetensorError, safe_open

    from shared.backbones.weights import not_safetensors, torch_load

    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{path}: no weights file (expected diffusion_pytorch_model.safetensors / "
                                "model.safetensors, or their .bin)")
    for file in files:
        if file.suffix == ".bin":
            torch_load(file, mmap=True)
            continue
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as err:
            raise ValueError(not_safetensors(file, err)) from None
    return files[0].suffix == ".safetensors"


class DiffusionModel(nn.Module):
    """Frozen UNet + CLIP text encoder (+ VAE) and the noise schedule's ``alphas_cumprod``."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer, alphas_cumprod: torch.Tensor,
                 vae: nn.Module | None = None, set_alpha_to_one: bool = False,
                 clip_sample: float | None = None, scheduler_config: dict | None = None) -> None:
        super().__init__()
        # The folder's raw scheduler_config.json (for generation with other samplers); None: DDIM defaults.
        self.scheduler_config = dict(scheduler_config) if scheduler_config else None
        self.unet, self.text_encoder, self.tokenizer, self.vae = unet, text_encoder, tokenizer, vae
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.final_alpha = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
        self.clip_sample = clip_sample  # the scheduler's clip_sample_range when clip_sample is on (SD: off)
        for module in (unet, text_encoder, vae):
            if module is not None:
                module.requires_grad_(False).eval()

    @classmethod
    def from_folder(cls, folder: str | Path, torch_dtype: torch.dtype | None = None) -> DiffusionModel:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"base model folder {folder} does not exist (expected a diffusers model folder)")
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        unet = _load(UNet2DConditionModel, _require(folder, "unet", "config.json"), **kw)
        text_encoder = _load(CLIPTextModel, _require(folder, "text_encoder", "config.json"), **kw)
        tokenizer = AutoTokenizer.from_pretrained(_require(folder, "tokenizer", "tokenizer_config.json"),
                                                  local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(_require(folder, "scheduler", "scheduler_config.json"),
                                                  local_files_only=True)
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"{folder}/scheduler: prediction_type {scheduler.config.prediction_type!r} is not "
                             f"supported; the SPM losses are written for epsilon-prediction models (SD v1.x)")
        vae = None
        if (folder / "vae").is_dir():
            vae = _load(AutoencoderKL, _require(folder, "vae", "config.json"), **kw)
        clip = float(scheduler.config.clip_sample_range) if scheduler.config.clip_sample else None
        return cls(unet, text_encoder, tokenizer, scheduler.alphas_cumprod, vae,
                   bool(scheduler.config.set_alpha_to_one), clip,
                   DDIMScheduler.load_config(folder / "scheduler"))

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """SD convention: pad to the tokenizer's max length, last_hidden_state [B, L, D]."""
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tok.input_ids.to(device))[0]

    # ------------------------------------------------------------------ shapes
    @property
    def latent_scale(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        s = self.latent_scale
        return batch, self.unet.config.in_channels, height // s, width // s

    # ------------------------------------------------------------------ denoising
    def predict(self, x: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        """eps(x, t, cond) for a batch; ``x`` [1, ...] is broadcast to the batch of ``cond``."""
        if x.shape[0] != cond.shape[0]:
            x = x.expand(cond.shape[0], *x.shape[1:])
        t = torch.as_tensor(t, device=x.device).expand(cond.shape[0])
        return self.unet(x, t, encoder_hidden_states=cond.to(x.dtype)).sample

    def ddim_step(self, x: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
        """Deterministic DDIM (eta 0) from t to t_prev (t_prev < 0: the final alpha)."""
        a = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(self.final_alpha, device=x.device)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if self.clip_sample is not None:  # as diffusers' DDIMScheduler.step: clip x0, re-derive eps from it
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps

    @staticmethod
    def ddim_timesteps(steps: int, num_train: int = 1000, offset: int = 0) -> list[int]:
        """``leading`` spacing (diffusers 0.18 default, steps_offset 0): 30 steps -> 957, 924, ..., 33, 0."""
        ratio = num_train // steps
        return [int(i * ratio + offset) for i in reversed(range(steps))]

    def guided_eps(self, x: torch.Tensor, t: int, uncond: torch.Tensor, cond: torch.Tensor,
                   guidance: float) -> torch.Tensor:
        """Classifier-free guidance with [uncond; cond] in one UNet call. ``x`` [B, ...]."""
        b = cond.shape[0]
        eps = self.predict(torch.cat([x, x]), t, torch.cat([uncond.expand(b, -1, -1), cond]))
        e_u, e_c = eps.chunk(2)
        return e_u + guidance * (e_c - e_u)

    @torch.no_grad()
    def rollout(self, x: torch.Tensor, timesteps: list[int], uncond: torch.Tensor, cond: torch.Tensor,
                guidance: float, unet_params: dict | None = None) -> torch.Tensor:
        """Run DDIM over ``timesteps`` (the consecutive steps of one schedule) with CFG; returns x after them."""
        ratio = timesteps[0] - timesteps[1] if len(timesteps) > 1 else 1000 // 30
        with swapped_parameters(self.unet, unet_params):
            for t in timesteps:
                x = self.ddim_step(x, self.guided_eps(x, t, uncond, cond, guidance), t, t - ratio)
        return x

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels) -> images in [0, 1]."""
        if self.vae is not None:
            x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 7.5,
               height: int | None = None, width: int | None = None, negative: str = "",
               unet_params: dict | None = None, chunk: int = 512) -> torch.Tensor:
        """Batched DDIM + CFG generation of one image per prompt (repeat prompts for more); [N, 3, H, W] in [0, 1].

        Sample i's noise depends only on (seed, i), so chunking does not change the images.
        """
        size = self.unet.config.sample_size * self.latent_scale
        height, width = height or size, width or size
        device = self.alphas_cumprod.device
        gen = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(self.latent_shape(len(prompts), height, width), generator=gen)
        cond_all = self.encode_prompts(prompts)
        uncond = self.encode_prompts([negative])
        timesteps = self.ddim_timesteps(steps, len(self.alphas_cumprod), offset=0)
        out = []
        for start in range(0, len(prompts), chunk):
            x = noise[start:start + chunk].to(device, dtype=next(self.unet.parameters()).dtype)
            x = self.rollout(x, timesteps, uncond, cond_all[start:start + chunk], guidance, unet_params)
            out.append(self.decode(x).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ generation with any sampler
    def make_scheduler(self, sampler: str = "default"):
        """A diffusers scheduler of kind ``sampler`` (see ``SAMPLERS``) built from the model's scheduler config;
        config keys the class does not take are dropped (no warnings)."""
        import diffusers

        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not one of {sorted(SAMPLERS)}")
        config = dict(self.scheduler_config or {"num_train_timesteps": len(self.alphas_cumprod)})
        name, extra = SAMPLERS[sampler]
        name = name or config.get("_class_name") or "DDIMScheduler"
        cls = getattr(diffusers, name, None)
        if cls is None:
            raise ValueError(f"scheduler class {name!r} (from the model's scheduler config) is not in diffusers")
        accepted = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in {**config, **extra}.items() if k in accepted})

    def sampling_timesteps(self, steps: int) -> list[int]:
        """DDIM's timesteps for ``steps`` steps under the model's scheduler config (spacing and steps_offset)."""
        if self.scheduler_config is None:
            return self.ddim_timesteps(steps, len(self.alphas_cumprod))
        scheduler = self.make_scheduler("ddim")
        scheduler.set_timesteps(steps)
        return [int(t) for t in scheduler.timesteps]

    @torch.no_grad()
    def denoise(self, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                guidance: float | torch.Tensor = 7.5, steps: int = 30, sampler="ddim",
                unet_params: dict | None = None, generators: list[torch.Generator] | None = None,
                callback: Callable[[int], None] | None = None) -> torch.Tensor:
        """CFG generation from ``noise`` [B, ...] (on the model's device and dtype) to the final latents.

        ``guidance``: a float or one value per sample [B]. ``sampler``: a name of ``SAMPLERS`` or a diffusers
        scheduler instance (its state is reset by ``set_timesteps``). ``ddim`` runs our :meth:`ddim_step` over the
        DDIMScheduler's timesteps (same numbers as diffusers DDIM, eta 0); the others the generic
        ``scale_model_input`` / ``step`` loop. ``generators``: one per sample, for stochastic samplers (euler_a),
        so a sample's noise does not depend on the rest of the batch. ``callback(i)`` after each step.
        """
        if isinstance(guidance, torch.Tensor):
            guidance = guidance.to(noise.device, torch.float32).view(-1, *([1] * (noise.ndim - 1)))
        with swapped_parameters(self.unet, unet_params):
            return self._denoise(noise, cond, uncond, guidance, steps, sampler, generators, callback)

    def _denoise(self, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 guidance: float | torch.Tensor, steps: int, sampler, generators: list[torch.Generator] | None,
                 callback: Callable[[int], None] | None) -> torch.Tensor:
        x = noise
        if sampler == "ddim":
            timesteps = self.sampling_timesteps(steps)
            ratio = len(self.alphas_cumprod) // steps
            for i, t in enumerate(timesteps):
                eps = self.guided_eps(x, t, uncond, cond, guidance)
                x = self.ddim_step(x, eps.to(x.dtype), t, t - ratio).to(noise.dtype)
                if callback is not None:
                    callback(i)
            return x
        scheduler = self.make_scheduler(sampler) if isinstance(sampler, str) else sampler
        scheduler.set_timesteps(steps, device=x.device)
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        x = x * scheduler.init_noise_sigma
        for i, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)
            eps = self.guided_eps(x_in, t.item(), uncond, cond, guidance)
            kwargs = {"generator": generators} if takes_generator and generators is not None else {}
            x = scheduler.step(eps.to(x.dtype), t, x, **kwargs).prev_sample.to(noise.dtype)
            if callback is not None:
                callback(i)
        return x
