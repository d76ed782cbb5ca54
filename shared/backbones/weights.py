"""The one weights rule every backbone builder follows.

* a path (str / Path): it must exist, else ``FileNotFoundError`` with the path in the message;
* ``True``: an EXISTING local timm / Hugging Face cache only (never the network); if nothing is cached, one
  warning line and random init;
* ``False`` / ``None``: random init, silently.

Files are read without unpickling arbitrary objects: ``.safetensors`` with safetensors, ``.pth``/``.pt``/``.bin``
with ``torch.load(weights_only=True)``. Google JAX ``.npz`` ViT checkpoints are handled in ``vit.py``. A file that
cannot be read (a pickled object, truncated, another format) is one ``ValueError`` line naming it; so is a file that
lacks one of the model's tensors outside the classifier, or holds one with another shape (:func:`load_into`).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import snapshot_download, try_to_load_from_cache
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import get_pretrained_cfg
from torch import nn

logger = logging.getLogger(__name__)

Pretrained = bool | str | Path | None

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
# File names timm / transformers use for weights inside a Hugging Face model folder, best first.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                   "open_clip_pytorch_model.bin")
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")
_STRIP_PREFIXES = ("module.", "model.")


def ensure_offline() -> None:
    """Make Hugging Face cache look-ups local-only (unless the user set HF_HUB_OFFLINE themselves)."""
    # Cache look-ups must never reach the network (there is none, and a timeout would stall every build).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def resolve_pretrained(pretrained: Pretrained, what: str, *, timm_name: str | None = None,
                       hf_repo: str | None = None) -> Path | None:
    """Apply the weights rule; return the file or folder to load, or ``None`` for random init.

    ``what`` names the caller in messages; ``timm_name`` / ``hf_repo`` say which cache to look into for ``True``.
    """
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        found = find_cached_weights(timm_name=timm_name, hf_repo=hf_repo)
        if found is None:
            logger.warning("%s: no local pretrained weights for %s (pass pretrained=/path/to/weights); "
                           "starting from random init", what, timm_name or hf_repo or "this model")
        else:
            logger.info("%s: using cached pretrained weights %s", what, found)
        return found
    path = Path(pretrained).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{what}: pretrained weights file not found: {path} (expected a .safetensors / .pth / .bin / .npz "
            "file, or a Hugging Face model folder)")
    return path


def find_cached_weights(*, timm_name: str | None = None, hf_repo: str | None = None) -> Path | None:
    """Look for already-downloaded weights in the local timm / Hugging Face / torch.hub caches (offline)."""
    ensure_offline()
    if timm_name is not None:
        found = _find_timm_cache(timm_name)
        if found is not None:
            return found
    if hf_repo is not None:
        try:
            folder = Path(snapshot_download(hf_repo, local_files_only=True))
        except Exception:  # not cached (or not a valid repo id): the caller falls back to random init
            return None
        return folder if (folder / "config.json").is_file() else None
    return None


def _find_timm_cache(name: str) -> Path | None:
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except Exception:
        cfg = None
    if cfg is None:
        return None
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
        for filename in names:
            hit = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    if cfg.url:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if hub_file.is_file():
            return hub_file
    return None


def weights_file_in(folder: Path) -> Path:
    """The weights file inside a model folder (Hugging Face layout first, then any single weights file)."""
    for filename in HF_WEIGHT_FILES:
        if (folder / filename).is_file():
            return folder / filename
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: expected one weights file ({', '.join(HF_WEIGHT_FILES)} or a single "
                                f"{'/'.join(WEIGHT_SUFFIXES)} file), found {[p.name for p in files]}")
    return files[0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors / .pth / .pt / .bin (never unpickling arbitrary objects)."""
    path = weights_file_in(path) if path.is_dir() else path
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(not_safetensors(path, err)) from None
    elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        state = torch_load(path)
        for key in _WRAPPER_KEYS:  # training checkpoints wrap the weights: {"state_dict": {...}, ...}
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    else:
        raise ValueError(f"{path}: unsupported weights format {path.suffix!r} (use .safetensors / .pth / .bin)")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {_strip_prefix(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def torch_load(path: Path, mmap: bool = False,
               advice: str = "convert it to .safetensors in an environment where you trust the file"):
    """``torch.load(weights_only=True)`` on the CPU; a refused pickle or an unreadable file is one line naming it
    (``advice`` says what to do about a refused object)."""
    try:  # mmap reads only the zip format (every torch.save since PyTorch 1.6)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except OSError:
        raise  # a missing or unreadable file says so itself
    except Exception as err:  # the unpickler fails in many ways on a file that torch.save did not write
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:
            raise ValueError(
                f"{path}: holds a pickled {refused.group(1)} object, which is not read (only tensors and plain "
                f"containers are loaded, with torch.load(weights_only=True)); {advice}") from None
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0].split('. ')[0][:120]}"
        raise ValueError(f"{path}: not a readable PyTorch file ({reason}); expected a complete file written by "
                         "torch.save (truncated or renamed? copy or download it again)") from None


def not_safetensors(path: Path, err: Exception) -> str:
    """The one-line message for a .safetensors file safetensors cannot read (truncated, or not safetensors)."""
    return (f"{path}: not a readable .safetensors file ({err}); expected a complete safetensors file "
            "(truncated or renamed? copy or download it again)")


def _strip_prefix(key: str) -> str:
    stripped = True
    while stripped:  # "module.model.blocks.0..." -> "blocks.0..."
        stripped = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str,
              classifier: str | Iterable[str] | None = None, source: str | Path | None = None,
              strict: bool = True) -> None:
    """Load ``state``; drop classifier keys whose shape differs; log missing/unexpected keys once.

    A file of which no tensor matches the model is an error naming it (``source``), never a silent random init.
    With ``strict`` (the default) a non-classifier key the file lacks, or has with another shape, is an error
    listing the first ones; ``strict=False`` skips them and logs what it skipped.
    """
    own = model.state_dict()
    origin = f" in {source}" if source is not None else ""
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    dropped = [k for k in state if is_head(k) and (k not in own or own[k].shape != state[k].shape)]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape and k not in dropped]
    if wrong and strict:
        shapes = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
        raise ValueError(f"{what}: {len(wrong)} tensors{origin} have another shape than the model's (file vs model: "
                         f"{shapes}{', ...' if len(wrong) > 3 else ''}); expected weights of the same architecture "
                         "(check the backbone's size arguments)")
    state = {k: v for k, v in state.items() if k not in dropped and k not in wrong}
    result = model.load_state_dict(state, strict=False)
    if own and len(state) == len(result.unexpected_keys):
        raise ValueError(f"{what}: none of the {len(state)} tensors{origin} matches this model (the file's keys "
                         f"begin {sorted(state)[:3]}, the model's {sorted(own)[:3]}); expected weights of the same "
                         "architecture")
    missing = [k for k in result.missing_keys if not is_head(k)]
    if missing and strict:
        raise ValueError(f"{what}: {len(missing)} of the model's tensors are missing{origin} (first: {missing[:5]}); "
                         "expected weights of the same architecture (a deliberate partial load: "
                         "load_into(..., strict=False))")
    msg = f"{what}: loaded {len(state) - len(result.unexpected_keys)} tensors"
    if dropped:
        msg += f"; dropped classifier keys {dropped} (different number of classes)"
    if wrong:
        msg += f"; skipped keys of another shape {wrong}"
    if result.missing_keys or result.unexpected_keys:
        msg += f"; missing keys {result.missing_keys}; unexpected keys {result.unexpected_keys}"
    (logger.warning if result.missing_keys else logger.info)(msg)
