"""The frozen text-to-image model SPM is trained on: a diffusers folder (unet/, text_encoder/, tokenizer/,
scheduler/, optional vae/) with batched noise prediction, DDIM roll-outs and a small CFG sampler.

Three families (spec 2.4 "SDXL variant", 4): SD v1.x (one CLIP text encoder, epsilon), SD v2.x (linear
``proj_in``/``proj_out``, often v-prediction: the folder's ``prediction_type``) and SDXL (a second text encoder
``text_encoder_2`` / ``tokenizer_2``, pooled embeddings and ``add_time_ids``). A prompt's conditioning is a
:class:`Conditioning`; a plain ``[B, L, D]`` tensor is accepted wherever one is (SD v1.x / v2.x).

Pure nn.Module code (no Lightning). Without ``vae/`` the UNet works in pixel space (the toy model).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, eq=False)  # no field-wise == on tensors
class Conditioning:
    """What the UNet is conditioned on for a batch of B prompts.

    ``text`` [B, L, D]: the cross-attention states (SD v1.x / v2.x: the text encoder's last_hidden_state; SDXL:
    both encoders' penultimate hidden states concatenated, D = 768 + 1280). ``pooled`` [B, P] or None: SDXL's
    pooled embedding of ``text_encoder_2`` (``text_embeds``). SDXL's ``add_time_ids`` are not stored: they follow
    from the latent size (:meth:`DiffusionModel.predict`). The batch operations act on every field along dim 0, so
    code written for ``[B, L, D]`` tensors runs unchanged for all three families.
    """

    text: torch.Tensor
    pooled: torch.Tensor | None = None

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        return Conditioning(fn(self.text), None if self.pooled is None else fn(self.pooled))

    @property
    def batch(self) -> int:
        return self.text.shape[0]

    def __len__(self) -> int:
        return self.batch

    @property
    def dtype(self) -> torch.dtype:
        return self.text.dtype

    def __getitem__(self, index) -> Conditioning:
        """Rows ``index`` (a slice or an index tensor; an int keeps the batch dim)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def expand(self, batch: int) -> Conditioning:
        """A batch-1 conditioning broadcast to ``batch`` rows (a view)."""
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    def repeat(self, times: int) -> Conditioning:
        """``[c_1..c_B] * times`` (tiled, as ``Tensor.repeat``)."""
        return self._map(lambda t: t.repeat(times, *([1] * (t.ndim - 1))))

    def repeat_interleave(self, times: int) -> Conditioning:
        """``[c_1 x times, c_2 x times, ...]``."""
        return self._map(lambda t: t.repeat_interleave(times, 0))

    def to(self, *args, **kwargs) -> Conditioning:
        return self._map(lambda t: t.to(*args, **kwargs))

    @staticmethod
    def cat(items: Sequence[Conditioning | torch.Tensor]) -> Conditioning:
        """Concatenate along the batch; all items have a pooled embedding or none does."""
        items = [as_conditioning(c) for c in items]
        has_pooled = {c.pooled is not None for c in items}
        if len(has_pooled) > 1:
            raise ValueError("Conditioning.cat: some conditionings have a pooled embedding (SDXL) and some not")
        pooled = torch.cat([c.pooled for c in items]) if has_pooled == {True} else None
        return Conditioning(torch.cat([c.text for c in items]), pooled)


def as_conditioning(cond: Conditioning | torch.Tensor) -> Conditioning:
    """A ``[B, L, D]`` text-state tensor (SD v1.x / v2.x) as a :class:`Conditioning`; a Conditioning as is."""
    return cond if isinstance(cond, Conditioning) else Conditioning(cond)


def rescale_guidance(guided: torch.Tensor, cond_out: torch.Tensor, rescale: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2023, Sec. 3.4; diffusers ``rescale_noise_cfg``, the official ``predict_noise_xl``
    with ``guidance_rescale=0.7``): mix ``guided`` rescaled to the per-sample std of ``cond_out`` with ``guided``."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond_out.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


PREDICTION_TYPES = ("epsilon", "v_prediction")

# SD v1.4's UNet (CompVis/stable-diffusion-v1-4 unet/config.json), for building it with no weights.
SD14_UNET_CONFIG: dict = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)

# SD 2.1's UNet (stabilityai/stable-diffusion-2-1 unet/config.json): 1024-dim OpenCLIP context, linear proj_in /
# proj_out, per-block head counts, 96x96 latents (768 px).
SD21_UNET_CONFIG: dict = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20), block_out_channels=(320, 640, 1280, 1280), use_linear_projection=True,
    upcast_attention=True,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)

# SDXL base 1.0's UNet (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json): 2048-dim context (768 + 1280),
# 1/2/10 transformer layers per block, "text_time" added conditioning (pooled 1280 + 6 time ids x 256 = 2816).
SDXL_UNET_CONFIG: dict = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20), block_out_channels=(320, 640, 1280), use_linear_projection=True,
    transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
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
    """Frozen UNet + CLIP text encoder(s) (+ VAE) and the noise schedule's ``alphas_cumprod``.

    ``text_encoder_2`` / ``tokenizer_2``: SDXL's second encoder (``CLIPTextModelWithProjection``); None for SD v1.x
    / v2.x. ``prediction_type``: what the UNet predicts, ``epsilon`` or ``v_prediction`` (SD 2.x 768);
    :meth:`ddim_step` converts. ``clip_sample``: the scheduler's clip_sample_range when clip_sample is on (SD: off).
    ``use_clipped_model_output``: with clip_sample on, re-derive eps from the clipped x0 (diffusers
    ``DDIMScheduler.step(use_clipped_model_output=True)``); off (default) is what the official code's
    ``scheduler.step(...)`` call does. The committed toy model keeps it on (its scheduler_config.json key
    ``_use_clipped_model_output``): every toy number was measured with it, and without it the toy model draws
    noise (judged shape accuracy 0.26 instead of 0.95; 0.96 with clip_sample off).
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer, alphas_cumprod: torch.Tensor,
                 vae: nn.Module | None = None, set_alpha_to_one: bool = False,
                 clip_sample: float | None = None, scheduler_config: dict | None = None,
                 text_encoder_2: nn.Module | None = None, tokenizer_2=None, prediction_type: str = "epsilon",
                 use_clipped_model_output: bool = False) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
        if (text_encoder_2 is None) != (tokenizer_2 is None):
            raise ValueError("DiffusionModel: text_encoder_2 and tokenizer_2 go together (SDXL) or are both None")
        # The folder's raw scheduler_config.json (for generation with other samplers); None: DDIM defaults.
        self.scheduler_config = dict(scheduler_config) if scheduler_config else None
        self.unet, self.text_encoder, self.tokenizer, self.vae = unet, text_encoder, tokenizer, vae
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.final_alpha = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
        self.clip_sample = clip_sample
        self.prediction_type = prediction_type
        self.use_clipped_model_output = use_clipped_model_output
        self.crop_condition: tuple[int, int, int, int] | None = None   # SDXL: see :meth:`time_ids`
        for module in (unet, text_encoder, text_encoder_2, vae):
            if module is not None:
                module.requires_grad_(False).eval()

    @property
    def is_xl(self) -> bool:
        """SDXL: two text encoders, pooled embeddings and ``add_time_ids``."""
        return self.text_encoder_2 is not None

    @classmethod
    def from_folder(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                    base_config: str | Path | None = None, config_flag: str = "--model.base_config"
                    ) -> DiffusionModel:
        """Load a diffusers folder; the family follows from it: ``text_encoder_2/`` present -> SDXL, the
        scheduler config's ``prediction_type`` -> epsilon or v-prediction (SD 2.x 768).

        ``folder`` may also be a single-file SD 1.x / 2.x / XL checkpoint (.safetensors, or .ckpt read with
        weights_only; :mod:`projects.spm.single_file`): its weights, with ``base_config`` (a diffusers folder of
        the same family, named ``config_flag`` in messages) giving the configs, tokenizers and scheduler."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        folder = Path(folder)
        single = None
        if folder.is_file():
            from projects.spm.single_file import load_single_file

            single = load_single_file(folder, base_config, torch_dtype, flag=config_flag)
            folder = single["config"]
        if not folder.is_dir():
            raise FileNotFoundError(f"base model {folder} does not exist (expected a diffusers model folder, or a "
                                    "single-file .safetensors / .ckpt SD checkpoint)")
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        if single is not None:
            unet, text_encoder, tokenizer = single["unet"], single["text_encoder"], single["tokenizer"]
            text_encoder_2, tokenizer_2 = single.get("text_encoder_2"), single.get("tokenizer_2")
        else:
            unet = _load(UNet2DConditionModel, _require(folder, "unet", "config.json"), **kw)
            text_encoder = _load(CLIPTextModel, _require(folder, "text_encoder", "config.json"), **kw)
            tokenizer = AutoTokenizer.from_pretrained(_require(folder, "tokenizer", "tokenizer_config.json"),
                                                      local_files_only=True)
            text_encoder_2 = tokenizer_2 = None
            if (folder / "text_encoder_2").is_dir():  # SDXL
                text_encoder_2 = _load(CLIPTextModelWithProjection,
                                       _require(folder, "text_encoder_2", "config.json"), **kw)
                tokenizer_2 = AutoTokenizer.from_pretrained(
                    _require(folder, "tokenizer_2", "tokenizer_config.json"), local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(_require(folder, "scheduler", "scheduler_config.json"),
                                                  local_files_only=True)
        raw = DDIMScheduler.load_config(folder / "scheduler")
        prediction_type = raw.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{folder}/scheduler/scheduler_config.json: prediction_type {prediction_type!r} is not "
                             f"supported (expected one of {PREDICTION_TYPES})")
        if raw.get("thresholding"):
            raise ValueError(f"{folder}/scheduler/scheduler_config.json: thresholding true is not supported by the "
                             "DDIM roll-out (expected false, as in the SD v1.x / v2.x / XL configs)")
        vae = single["vae"] if single is not None else None
        if single is None and (folder / "vae").is_dir():
            vae = _load(AutoencoderKL, _require(folder, "vae", "config.json"), **kw)
        if (vae is not None and text_encoder_2 is not None and vae.dtype == torch.float16
                and getattr(vae.config, "force_upcast", False)):
            vae = vae.float()  # as StableDiffusionXLPipeline's upcast_vae: the SDXL VAE overflows in float16
        # The raw config's clip_sample: an Euler / PNDM config without the key means no clipping (DDIMScheduler's
        # own default would be True).
        clip = float(scheduler.config.clip_sample_range) if raw.get("clip_sample", False) else None
        return cls(unet, text_encoder, tokenizer, scheduler.alphas_cumprod, vae,
                   bool(scheduler.config.set_alpha_to_one), clip, raw, text_encoder_2, tokenizer_2,
                   prediction_type, bool(raw.get("_use_clipped_model_output", False)))

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The text states [B, L, D] the UNet cross-attends to. SD convention: pad to the tokenizer's max length,
        last_hidden_state; SDXL: :meth:`encode`'s concatenated penultimate states (no pooled embedding)."""
        if self.is_xl:
            return self.encode(prompts).text
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tok.input_ids.to(device))[0]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """The full conditioning of B prompts. SD v1.x / v2.x: :meth:`encode_prompts`. SDXL (official
        ``encode_prompts_xl``, diffusers ``StableDiffusionXLPipeline.encode_prompt``): each tokenizer pads to its max
        length, each encoder's penultimate hidden state ``hidden_states[-2]`` [B, L, 768] and [B, L, 1280] are
        concatenated to [B, L, 2048]; ``pooled`` [B, 1280] is ``text_encoder_2``'s projected ``text_embeds``."""
        if not self.is_xl:
            return Conditioning(self.encode_prompts(prompts))
        states, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(list(prompts), padding="max_length", truncation=True,
                            max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's: text_embeds of CLIPTextModelWithProjection
        return Conditioning(torch.cat(states, dim=-1), pooled)

    # ------------------------------------------------------------------ shapes
    @property
    def latent_scale(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        s = self.latent_scale
        return batch, self.unet.config.in_channels, height // s, width // s

    # ------------------------------------------------------------------ denoising
    def time_ids(self, x: torch.Tensor) -> torch.Tensor:
        """SDXL ``add_time_ids`` [B, 6] for latents ``x`` [B, C, h, w]: original size, crop top-left, target size
        in pixels. (H, W, 0, 0, H, W) by default (official ``get_add_time_ids`` without dynamic crops; the
        pipelines' default); ``crop_condition`` = (original H, original W, top, left) replaces the first four
        (official ``dynamic_crops``: :func:`projects.spm.module.dynamic_crop`)."""
        h, w = (s * self.latent_scale for s in x.shape[-2:])
        first = self.crop_condition or (h, w, 0, 0)
        return torch.tensor([[*first, h, w]], dtype=x.dtype, device=x.device).expand(x.shape[0], -1)

    @contextlib.contextmanager
    def cropped(self, condition: tuple[int, int, int, int] | None) -> Iterator[None]:
        """Within the block every SDXL prediction carries ``condition`` in its ``add_time_ids`` (None: the
        default); the official training passes one ``add_time_ids`` to the roll-out and to every loss call."""
        before, self.crop_condition = self.crop_condition, condition
        try:
            yield
        finally:
            self.crop_condition = before

    def predict(self, x: torch.Tensor, t: torch.Tensor | int, cond: Conditioning | torch.Tensor) -> torch.Tensor:
        """The UNet's raw output (eps, or v for v-prediction) at (x, t, cond) for a batch; ``x`` [1, ...] is
        broadcast to the batch of ``cond``. SDXL: ``added_cond_kwargs`` = the pooled embedding and
        :meth:`time_ids`."""
        cond = as_conditioning(cond)
        if x.shape[0] != cond.batch:
            x = x.expand(cond.batch, *x.shape[1:])
        t = torch.as_tensor(t, device=x.device).expand(cond.batch)
        if getattr(getattr(self.unet, "config", None), "addition_embed_type", None) != "text_time":
            return self.unet(x, t, encoder_hidden_states=cond.text.to(x.dtype)).sample
        if cond.pooled is None:
            raise ValueError("this UNet (SDXL, addition_embed_type 'text_time') needs a Conditioning with a pooled "
                             "embedding; encode prompts with DiffusionModel.encode, not encode_prompts")
        added = {"text_embeds": cond.pooled.to(x.dtype), "time_ids": self.time_ids(x)}
        return self.unet(x, t, encoder_hidden_states=cond.text.to(x.dtype), added_cond_kwargs=added).sample

    def ddim_step(self, x: torch.Tensor, out: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
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

    @staticmethod
    def ddim_timesteps(steps: int, num_train: int = 1000, offset: int = 0) -> list[int]:
        """``leading`` spacing (diffusers 0.18 default, steps_offset 0): 30 steps -> 957, 924, ..., 33, 0."""
        ratio = num_train // steps
        return [int(i * ratio + offset) for i in reversed(range(steps))]

    def guided_eps(self, x: torch.Tensor, t: int, uncond: Conditioning | torch.Tensor,
                   cond: Conditioning | torch.Tensor, guidance: float, rescale: float = 0.0) -> torch.Tensor:
        """Classifier-free guidance with [uncond; cond] in one UNet call. ``x`` [B, ...]; ``uncond`` batch 1.

        Returns the guided raw output (eps, or v for v-prediction: CFG is affine, so guiding v equals guiding eps
        then converting, and :meth:`ddim_step` / the diffusers schedulers convert). ``rescale``: CFG rescale
        (:func:`rescale_guidance`) on the raw output, as the pipelines and the official ``predict_noise_xl`` do.
        """
        cond, uncond = as_conditioning(cond), as_conditioning(uncond)
        out = self.predict(torch.cat([x, x]), t, Conditioning.cat([uncond.expand(cond.batch), cond]))
        e_u, e_c = out.chunk(2)
        guided = e_u + guidance * (e_c - e_u)
        return rescale_guidance(guided, e_c, rescale) if rescale else guided

    @torch.no_grad()
    def rollout(self, x: torch.Tensor, timesteps: list[int], uncond: Conditioning | torch.Tensor,
                cond: Conditioning | torch.Tensor, guidance: float, unet_params: dict | None = None,
                rescale: float = 0.0) -> torch.Tensor:
        """Run DDIM over ``timesteps`` (the consecutive steps of one schedule) with CFG; returns x after them.
        ``rescale``: CFG rescale (official SDXL roll-out ``diffusion_xl``: 0.7; SD v1/v2: none)."""
        ratio = timesteps[0] - timesteps[1] if len(timesteps) > 1 else 1000 // 30
        with swapped_parameters(self.unet, unet_params):
            for t in timesteps:
                x = self.ddim_step(x, self.guided_eps(x, t, uncond, cond, guidance, rescale), t, t - ratio)
        return x

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels) -> images in [0, 1] (decoded in the VAE's dtype)."""
        if self.vae is not None:
            x = self.vae.decode((x / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
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
        cond_all = self.encode(prompts)
        uncond = self.encode([negative])
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
    def denoise(self, noise: torch.Tensor, cond: Conditioning | torch.Tensor, uncond: Conditioning | torch.Tensor,
                guidance: float | torch.Tensor = 7.5, steps: int = 30, sampler="ddim",
                unet_params: dict | None = None, generators: list[torch.Generator] | None = None,
                callback: Callable[[int], None] | None = None, guidance_rescale: float = 0.0) -> torch.Tensor:
        """CFG generation from ``noise`` [B, ...] (on the model's device and dtype) to the final latents.

        ``cond`` [B] / ``uncond`` [1]: :meth:`encode` outputs (SDXL: with pooled embeddings; the time ids follow
        from the latent size), so a family's pipeline (StableDiffusionPipeline / StableDiffusionXLPipeline) and this
        loop give the same latents for the same noise and scheduler. ``guidance_rescale``: as the pipelines' (0).

        ``guidance``: a float or one value per sample [B]. ``sampler``: a name of ``SAMPLERS`` or a diffusers
        scheduler instance (its state is reset by ``set_timesteps``). ``ddim`` runs our :meth:`ddim_step` over the
        DDIMScheduler's timesteps (same numbers as diffusers DDIM, eta 0); the others the generic
        ``scale_model_input`` / ``step`` loop. ``generators``: one per sample, for stochastic samplers (euler_a),
        so a sample's noise does not depend on the rest of the batch. ``callback(i)`` after each step.
        """
        if isinstance(guidance, torch.Tensor):
            guidance = guidance.to(noise.device, torch.float32).view(-1, *([1] * (noise.ndim - 1)))
        with swapped_parameters(self.unet, unet_params):
            return self._denoise(noise, cond, uncond, guidance, steps, sampler, generators, callback,
                                 guidance_rescale)

    def _denoise(self, noise: torch.Tensor, cond: Conditioning | torch.Tensor, uncond: Conditioning | torch.Tensor,
                 guidance: float | torch.Tensor, steps: int, sampler, generators: list[torch.Generator] | None,
                 callback: Callable[[int], None] | None, rescale: float = 0.0) -> torch.Tensor:
        x = noise
        if sampler == "ddim":
            timesteps = self.sampling_timesteps(steps)
            ratio = len(self.alphas_cumprod) // steps
            for i, t in enumerate(timesteps):
                eps = self.guided_eps(x, t, uncond, cond, guidance, rescale)
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
            eps = self.guided_eps(x_in, t.item(), uncond, cond, guidance, rescale)
            kwargs = {"generator": generators} if takes_generator and generators is not None else {}
            x = scheduler.step(eps.to(x.dtype), t, x, **kwargs).prev_sample.to(noise.dtype)
            if callback is not None:
                callback(i)
        return x
