"""The frozen text-to-image model SPM is trained on: the text encoder(s), the UNet call and the VAE decoder.

Three families (docs/papers/spm.md §2.4 "SDXL variant", §4): SD v1.x (one CLIP text encoder, epsilon), SD v2.x
(linear ``proj_in``/``proj_out``, often v-prediction: the folder's ``prediction_type``) and SDXL (a second text
encoder ``text_encoder_2`` / ``tokenizer_2``, pooled embeddings and ``add_time_ids``). A prompt's conditioning is a
:class:`~projects.spm.diffusion.conditioning.Conditioning`; a plain ``[B, L, D]`` tensor is accepted wherever one is
(SD v1.x / v2.x). The noise schedule and the DDIM step are :class:`~projects.spm.diffusion.ddim.DDIM`
(``model.ddim``); the samplers are :mod:`projects.spm.diffusion.sampling`.

Pure nn.Module code (no Lightning). Without ``vae/`` the UNet works in pixel space (the toy model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from projects.spm.diffusion.conditioning import Conditioning, as_conditioning
from projects.spm.diffusion.ddim import DDIM
from projects.spm.diffusion.loading import load_components


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


class DiffusionModel(nn.Module):
    """Frozen UNet + CLIP text encoder(s) (+ VAE) and the noise schedule (``ddim``).

    ``text_encoder_2`` / ``tokenizer_2``: SDXL's second encoder (``CLIPTextModelWithProjection``); None for SD v1.x
    / v2.x. ``scheduler_config``: the folder's raw scheduler_config.json (for generation with other samplers);
    None: DDIM defaults.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer, ddim: DDIM, vae: nn.Module | None = None,
                 scheduler_config: dict | None = None, text_encoder_2: nn.Module | None = None,
                 tokenizer_2=None) -> None:
        super().__init__()
        if (text_encoder_2 is None) != (tokenizer_2 is None):
            raise ValueError("DiffusionModel: text_encoder_2 and tokenizer_2 go together (SDXL) or are both None")
        self.scheduler_config = dict(scheduler_config) if scheduler_config else None
        self.unet, self.text_encoder, self.tokenizer, self.vae = unet, text_encoder, tokenizer, vae
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.ddim = ddim
        self.crop_condition: tuple[int, int, int, int] | None = None   # SDXL: see :meth:`time_ids`
        for module in (unet, text_encoder, text_encoder_2, vae):
            if module is not None:
                module.requires_grad_(False).eval()

    @classmethod
    def from_folder(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                    base_config: str | Path | None = None, config_flag: str = "--model.base.config"
                    ) -> DiffusionModel:
        """Load a diffusers folder or a single-file checkpoint (:func:`~.loading.load_components`)."""
        return cls(**load_components(folder, torch_dtype, base_config, config_flag))

    @property
    def is_xl(self) -> bool:
        """SDXL: two text encoders, pooled embeddings and ``add_time_ids``."""
        return self.text_encoder_2 is not None

    # ------------------------------------------------------------------ text
    @property
    def text_encoders(self) -> list[tuple]:
        """``[(tokenizer, text_encoder)]``: one pair (SD v1.x / v2.x) or two (SDXL)."""
        pairs = [(self.tokenizer, self.text_encoder)]
        return pairs + [(self.tokenizer_2, self.text_encoder_2)] if self.is_xl else pairs

    def tokenize(self, prompts: list[str]) -> list[torch.Tensor]:
        """One [B, L] id tensor per text encoder: each tokenizer pads to its max length and truncates."""
        return [tokenizer(list(prompts), padding="max_length", truncation=True,
                          max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
                for tokenizer, _ in self.text_encoders]

    def encode_ids(self, ids: list[torch.Tensor]) -> Conditioning:
        """The conditioning of token ids (:meth:`tokenize`'s layout); gradients flow, so an attack can optimise
        what it feeds the encoders' token embeddings (:mod:`projects.spm.attacks.text`). SD v1.x / v2.x: the
        encoder's ``last_hidden_state``. SDXL (official ``encode_prompts_xl``, diffusers
        ``StableDiffusionXLPipeline.encode_prompt``): each encoder's penultimate hidden state ``hidden_states[-2]``
        [B, L, 768] and [B, L, 1280] concatenated to [B, L, 2048]; ``pooled`` [B, 1280] is ``text_encoder_2``'s
        projected ``text_embeds``."""
        if not self.is_xl:
            return Conditioning(self.text_encoder(ids[0].to(next(self.text_encoder.parameters()).device))[0])
        states, pooled = [], None
        for (_, encoder), token_ids in zip(self.text_encoders, ids, strict=True):
            out = encoder(token_ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's: text_embeds of CLIPTextModelWithProjection
        return Conditioning(torch.cat(states, dim=-1), pooled)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The text states [B, L, D] the UNet cross-attends to (:meth:`encode` without SDXL's pooled embedding)."""
        return self.encode(prompts).text

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """The full conditioning of B prompts: :meth:`encode_ids` of :meth:`tokenize` (SD convention: pad to the
        tokenizer's max length)."""
        return self.encode_ids(self.tokenize(prompts))

    # ------------------------------------------------------------------ shapes
    @property
    def latent_scale(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        s = self.latent_scale
        return batch, self.unet.config.in_channels, height // s, width // s

    # ------------------------------------------------------------------ the UNet call
    def time_ids(self, x: torch.Tensor) -> torch.Tensor:
        """SDXL ``add_time_ids`` [B, 6] for latents ``x`` [B, C, h, w]: original size, crop top-left, target size
        in pixels. (H, W, 0, 0, H, W) by default (official ``get_add_time_ids`` without dynamic crops; the
        pipelines' default); ``crop_condition`` = (original H, original W, top, left) replaces the first four
        (official ``dynamic_crops``: :func:`projects.spm.rollout.dynamic_crop`)."""
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

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels) -> images in [0, 1] (decoded in the VAE's dtype)."""
        if self.vae is not None:
            x = self.vae.decode((x / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return ((x.float() + 1) / 2).clamp(0, 1)
