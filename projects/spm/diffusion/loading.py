"""Reading a base model from disk: a diffusers folder (unet/, text_encoder/, tokenizer/, scheduler/, optional vae/;
SDXL: text_encoder_2/, tokenizer_2/) or a single-file checkpoint (:mod:`.single_file`), offline, every error one
line naming the folder or file."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

from projects.spm.diffusion.ddim import DDIM, PREDICTION_TYPES
from projects.spm.diffusion.single_file import load_single_file
from shared.backbones.weights import not_safetensors, torch_load


def load_components(folder: str | Path, torch_dtype: torch.dtype | None = None,
                    base_config: str | Path | None = None, config_flag: str = "--model.base.config") -> dict:
    """The parts of a :class:`~projects.spm.diffusion.model.DiffusionModel`: ``unet``, ``text_encoder``,
    ``tokenizer``, ``text_encoder_2`` / ``tokenizer_2`` (SDXL, else None), ``vae`` (None: pixel space), ``ddim``
    and ``scheduler_config`` (the folder's raw scheduler_config.json). The family follows from the folder:
    ``text_encoder_2/`` present -> SDXL, the scheduler config's ``prediction_type`` -> epsilon or v-prediction.

    ``folder`` may also be a single-file SD 1.x / 2.x / XL checkpoint (.safetensors, or .ckpt read with
    weights_only): its weights, with ``base_config`` (a diffusers folder of the same family, named ``config_flag``
    in messages) giving the configs, tokenizers and scheduler."""
    folder = Path(folder)
    single = None
    if folder.is_file():
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
            text_encoder_2 = _load(CLIPTextModelWithProjection, _require(folder, "text_encoder_2", "config.json"),
                                   **kw)
            tokenizer_2 = AutoTokenizer.from_pretrained(_require(folder, "tokenizer_2", "tokenizer_config.json"),
                                                        local_files_only=True)
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
    ddim = DDIM(scheduler.alphas_cumprod, bool(scheduler.config.set_alpha_to_one), clip, prediction_type,
                bool(raw.get("_use_clipped_model_output", False)))
    return dict(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, ddim=ddim, vae=vae, scheduler_config=raw,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


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
