"""Tiny random models for the SPM tests: diffusers pipelines shaped like SD v1.x, SD v2.x and SDXL (CPU, about a
second each; the session fixtures of ``conftest.py`` build them once), and ``TINY``, the toy UNet at smaller widths.

The pipelines keep what tells the families apart (SD1: conv ``proj_in``, one CLIP text encoder, epsilon; SD2: linear
``proj_in``, per-block head counts, v-prediction, ``steps_offset`` 1; SDXL: two text encoders, pooled embeddings and
``add_time_ids`` through ``addition_embed_type="text_time"``, ``transformer_layers_per_block`` > 1, Euler) at widths
of 16-64, with the toy model's CLIP BPE tokenizer (16 positions). Used by the SPM tests only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from projects.spm.network import SPMNetwork
from projects.spm.toy.toy_base import TOY_UNET_CONFIG

REPO = Path(__file__).resolve().parents[3]
TOY_TOKENIZER = REPO / "projects/spm/toy_model/tokenizer"

# SD's DDIM-family schedule (scaled_linear 0.00085..0.012), as the SD v1.4 / v2.1 / XL scheduler configs give it.
_SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False)


# The toy UNet at widths 16-32 (random weights in every test that uses it).
TINY = {**TOY_UNET_CONFIG, "block_out_channels": (16, 32, 32), "cross_attention_dim": 32, "attention_head_dim": 8}


def write_random_spm(unet, path: Path, prompts: list[str], seed: int, scale: float = 0.3) -> Path:
    """An SPM file for ``unet`` with random (non-zero) ups, so it changes the images; ``unet`` is left as it was."""
    net = SPMNetwork(unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in net.adapters.values():
            adapter.lora_up.weight.copy_(torch.randn(adapter.lora_up.weight.shape, generator=g) * scale)
    net.save(path, prompts)
    net.remove()
    return path


def _tokenizer():
    return AutoTokenizer.from_pretrained(TOY_TOKENIZER, local_files_only=True)


def _text_encoder(tokenizer, hidden: int, with_projection: bool = False, projection_dim: int = 32):
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                            projection_dim=projection_dim, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _vae():
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=32)


def tiny_pipeline(family: str = "sd1", seed: int = 0):
    """A random ``StableDiffusionPipeline`` (``sd1``, ``sd2``) or ``StableDiffusionXLPipeline`` (``sdxl``); 16x16
    latents, 32x32 images."""
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    common = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
                  block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    if family == "sd1":
        unet = UNet2DConditionModel(cross_attention_dim=32, attention_head_dim=8, **common)
        scheduler = DDIMScheduler(**_SD_SCHEDULE, steps_offset=1)
        return StableDiffusionPipeline(vae=_vae(), text_encoder=_text_encoder(tokenizer, 32), tokenizer=tokenizer,
                                       unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    if family == "sd2":
        unet = UNet2DConditionModel(cross_attention_dim=48, attention_head_dim=(2, 4), use_linear_projection=True,
                                    **common)
        scheduler = DDIMScheduler(**_SD_SCHEDULE, steps_offset=1, prediction_type="v_prediction")
        return StableDiffusionPipeline(vae=_vae(), text_encoder=_text_encoder(tokenizer, 48), tokenizer=tokenizer,
                                       unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    if family == "sdxl":
        text_encoder, text_encoder_2 = _text_encoder(tokenizer, 32), _text_encoder(tokenizer, 32, True, 32)
        xl = dict(common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        unet = UNet2DConditionModel(cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True,
                                    transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                                    **xl)
        scheduler = EulerDiscreteScheduler(**{k: v for k, v in _SD_SCHEDULE.items()
                                              if k not in ("clip_sample", "set_alpha_to_one")},
                                           steps_offset=1, timestep_spacing="leading")
        return StableDiffusionXLPipeline(vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=_tokenizer(), unet=unet,
                                         scheduler=scheduler)
    raise ValueError(f"family must be sd1, sd2 or sdxl; got {family!r}")
