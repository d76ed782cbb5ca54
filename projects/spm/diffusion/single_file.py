"""Single-file SD 1.x / 2.x / XL checkpoints in the original (CompVis / Stability "LDM") key layout, as community
models ship them (ChilloutMix, DreamShaper, ...), loaded as diffusers components with no hub access.

The file gives the weights; ``config``, a local diffusers folder of the same family, gives every component's config
and the tokenizers (its ``*.json`` and tokenizer files are enough, no weights needed). diffusers' single-file
converters map the keys: ``UNet2DConditionModel`` / ``AutoencoderKL.from_single_file`` and, for the text encoders,
``create_diffusers_clip_model_from_ldm`` (what ``StableDiffusion(XL)Pipeline.from_single_file`` calls per
component). Offline by construction: the checkpoint is read here and handed over as a state dict (so diffusers never
resolves a path or URL), ``config`` is always an existing local folder passed as ``str`` (a repo id, or a folder
that does not exist, sends diffusers to the hub: the pipeline loader even retries with ``local_files_only=False``),
plus ``local_files_only=True``. ``.ckpt`` files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import logging
import re
from functools import partial
from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer

from shared.backbones.weights import not_safetensors, torch_load

logger = logging.getLogger(__name__)

# family: (name in messages, an example base_config folder)
FAMILIES = {"sd1": ("SD v1.x", "stable-diffusion-v1-5"), "sd2": ("SD v2.x", "stable-diffusion-2-1"),
            "sdxl": ("SDXL", "stable-diffusion-xl-base-1.0")}
# family: the text encoders in the file, (component, key prefix, transformers class)
TEXT_ENCODERS = {
    "sd1": (("text_encoder", "cond_stage_model.transformer.", "CLIPTextModel"),),
    "sd2": (("text_encoder", "cond_stage_model.model.", "CLIPTextModel"),),
    "sdxl": (("text_encoder", "conditioner.embedders.0.transformer.", "CLIPTextModel"),
             ("text_encoder_2", "conditioner.embedders.1.model.", "CLIPTextModelWithProjection")),
}
UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def load_single_file(path: str | Path, config: str | Path | None, torch_dtype: torch.dtype | None = None,
                     flag: str = "--model.base.config") -> dict:
    """Load a single-file checkpoint with ``config`` (a diffusers folder of the same family) for the configs.

    Returns ``{"family": "sd1" | "sd2" | "sdxl", "unet", "vae", "text_encoder", "tokenizer", "scheduler_config"
    (the folder's raw scheduler_config.json), "config" (the folder)}``, plus ``text_encoder_2`` / ``tokenizer_2``
    for SDXL. The folder also decides what the file cannot say: the scheduler (SD 2.x: v-prediction for the 768-v
    models, epsilon for the 512 "base" ones) and the VAE's scaling factor. A file without a VAE (``*_noVAE``) takes
    the folder's ``vae/`` weights. Floating-point weights load as float32 unless ``torch_dtype`` says otherwise.
    ``flag`` names the option that sets ``config`` in messages. Every error is one line naming the file and what was
    expected.
    """
    path = Path(path).expanduser()
    state = read_checkpoint(path)
    family = checkpoint_family(path, state)
    folder = config_folder(path, config, family, flag)
    kw = dict(config=str(folder), local_files_only=True, torch_dtype=torch_dtype)

    parts: dict = {"family": family, "config": folder}
    parts["unet"] = _component(path, folder, "unet", lambda: UNet2DConditionModel.from_single_file(
        _prefixed(state, UNET_PREFIX), subfolder="unet", **kw))
    if any(k.startswith(VAE_PREFIX) for k in state):
        parts["vae"] = _component(path, folder, "vae", lambda: AutoencoderKL.from_single_file(
            _prefixed(state, VAE_PREFIX), subfolder="vae", **kw))
    else:
        parts["vae"] = _folder_vae(path, folder, torch_dtype)
    for name, prefix, cls_name in TEXT_ENCODERS[family]:
        parts[name] = _component(path, folder, name, partial(_text_encoder, cls_name, _prefixed(state, prefix),
                                                             name, folder, torch_dtype))
        tokenizer = name.replace("text_encoder", "tokenizer")
        parts[tokenizer] = AutoTokenizer.from_pretrained(folder / tokenizer, local_files_only=True)
    parts["scheduler_config"] = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return parts


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors: .safetensors with safetensors, anything else with ``torch.load(weights_only=True)``
    (a ``{"state_dict": ...}`` wrapper, as Lightning / LDM ``.ckpt`` files have, is unwrapped)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found (expected a single-file SD checkpoint, "
                                f"{' / '.join(CHECKPOINT_SUFFIXES)}, or a diffusers model folder)")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"{path}: unsupported checkpoint format {path.suffix!r} (expected a single-file SD "
                         f"checkpoint, {' / '.join(CHECKPOINT_SUFFIXES)}, or a diffusers model folder)")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(not_safetensors(path, err)) from None
    state = torch_load(path, mmap=True, advice="convert it to .safetensors where you trust the file, or use a "
                                               ".safetensors release of the model")
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict ({{name: tensor}}, or {{'state_dict': ...}}), "
                         f"got {type(state).__name__}")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def checkpoint_family(path: Path, state: dict) -> str:
    """``sd1`` (CLIP ``cond_stage_model.transformer.*``), ``sd2`` (OpenCLIP ``cond_stage_model.model.*``) or
    ``sdxl`` (``conditioner.embedders.0.transformer.*`` + ``conditioner.embedders.1.model.*``), from the keys."""
    prefixes = {".".join(k.split(".")[:4]) + "." for k in state}

    def has(prefix: str) -> bool:
        return any(p.startswith(prefix) for p in prefixes)

    if not has(UNET_PREFIX):
        raise ValueError(f"{path}: no {UNET_PREFIX}* tensors (keys begin {sorted(state)[:3]}); expected a full SD "
                         "1.x / 2.x / XL checkpoint in the original CompVis / Stability layout (a LoRA or SPM file, "
                         "a UNet-only file or a diffusers-layout file is not one)")
    if has("conditioner.embedders.1.model."):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        raise ValueError(f"{path}: an SDXL refiner checkpoint (OpenCLIP only, conditioner.embedders.0.model.*); "
                         "expected an SD 1.x / 2.x / XL base model")
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer."):
        return "sd1"
    raise ValueError(f"{path}: no text encoder (neither cond_stage_model.transformer.* (SD v1.x), "
                     "cond_stage_model.model.* (SD v2.x) nor conditioner.embedders.* (SDXL)); expected a full SD "
                     "checkpoint with its text encoder")


def folder_family(folder: Path) -> str:
    """A diffusers folder's family: ``sdxl`` with a second text encoder, else ``sd2`` with linear ``proj_in``
    (``use_linear_projection``), else ``sd1``."""
    index = _read_json(folder / "model_index.json")
    if "text_encoder_2" in index:
        return "sdxl"
    return "sd2" if _read_json(folder / "unet" / "config.json").get("use_linear_projection") else "sd1"


def config_folder(path: Path, config: str | Path | None, family: str, flag: str) -> Path:
    """``config`` as a folder with everything the family needs, else one line saying what is missing."""
    name, example = FAMILIES[family]
    need = (f"a single-file checkpoint needs {flag} <diffusers folder of the same family ({name}: e.g. a local "
            f"{example} folder; its configs and tokenizer files are enough)>")
    if config is None:
        raise FileNotFoundError(f"{path}: {need}; none given")
    folder = Path(config).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: {need}; {folder} is not a folder")
    wanted = ["model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"]
    for encoder, _, _ in TEXT_ENCODERS[family]:
        wanted += [f"{encoder}/config.json", f"{encoder.replace('text_encoder', 'tokenizer')}/tokenizer_config.json"]
    missing = [rel for rel in wanted if not (folder / rel).is_file()]
    for encoder, _, _ in TEXT_ENCODERS[family]:
        tokenizer = folder / encoder.replace("text_encoder", "tokenizer")
        if not ((tokenizer / "tokenizer.json").is_file() or (tokenizer / "vocab.json").is_file()):
            missing.append(f"{tokenizer.name}/tokenizer.json (or vocab.json + merges.txt)")
    if "model_index.json" not in missing and "unet/config.json" not in missing:  # the family first: it says more
        found = folder_family(folder)
        if found != family:
            raise ValueError(f"{path}: an {name} checkpoint, but {flag} {folder} is an {FAMILIES[found][0]} "
                             f"folder; {need}")
    if missing:
        raise FileNotFoundError(f"{path}: {need}; {folder} lacks {', '.join(missing)}")
    return folder


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{file}: not a readable JSON file ({err}); expected a diffusers config, as written by "
                         "save_pretrained") from None


def _prefixed(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _text_encoder(cls_name: str, state: dict, subfolder: str, folder: Path, torch_dtype):
    """diffusers' CLIP / OpenCLIP converter on this encoder's tensors only (the SDXL pair is told apart by prefix,
    not by width)."""
    return create_diffusers_clip_model_from_ldm(getattr(transformers, cls_name), state, subfolder=subfolder,
                                                config=str(folder), torch_dtype=torch_dtype, local_files_only=True)


def _component(path: Path, folder: Path, name: str, load):
    """Run a diffusers loader; a shape that does not fit the folder's config, a tensor the file lacks (diffusers
    leaves it on the meta device, silently) or a converter's KeyError is one line."""
    expected = (f"expected {path.name}'s {name} to match {folder}/{name}/config.json (a base_config of the same "
                "model: same widths, layers and heads)")
    try:
        module = load()
    except (KeyError, ValueError, RuntimeError, IndexError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        shape = re.search(r"because (\S+) expected shape (.*?), but got (.*?)\. ", text)
        if shape:
            reason = f"{shape.group(1)} has shape {shape.group(3)} in the file, {shape.group(2)} in the config"
        elif "meta tensor" in text:  # a tensor the file lacks, left on the meta device and then moved
            reason = "tensors the config asks for are missing from the file"
        else:
            reason = f"{type(err).__name__}: {text[:160]}"
        raise ValueError(f"{path}: cannot load the {name} ({reason}); {expected}") from None
    missing = [n for n, p in module.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{path}: {len(missing)} {name} tensors are missing from the file (first, in diffusers "
                         f"names: {missing[:3]}); {expected}")
    return module


def _folder_vae(path: Path, folder: Path, torch_dtype):
    """The folder's VAE weights for a checkpoint without one."""
    vae = folder / "vae"
    if not any((vae / f).is_file() for f in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")):
        raise FileNotFoundError(f"{path}: has no VAE ({VAE_PREFIX}*) and {vae} has no weights; expected a "
                                "checkpoint with its VAE, or a base_config folder with vae/ weights")
    logger.info("%s: no VAE in the file; using %s", path, vae)
    return AutoencoderKL.from_pretrained(vae, local_files_only=True, **({"torch_dtype": torch_dtype}
                                                                        if torch_dtype is not None else {}))
