"""The model an attack works against: the base model with its SPMs on, at the strength a prompt receives.

An attack optimises through the same erased model it is judged on. With Facilitated Transport on, each SPM's
strength is the gamma the attacked prompt itself gets (paper Eqs. 10-11, :func:`facilitated_gammas` on the
prompt's own text states), recomputed whenever the prompt changes: a token optimised against the membrane at
full strength could receive a small gamma and be judged against a different model. With FT off the gammas are the
fixed multipliers. Without SPMs it is the base model (the attack's reference row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from projects.spm.composition import SPMComposition
from projects.spm.diffusion.conditioning import Conditioning
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import denoise
from projects.spm.transport import facilitated_gammas


@dataclass
class Attacked:
    """What an attack hands to generation and the judge for one prompt."""

    prompt: str                       # the prompt attacked
    text: str                         # the attacked prompt as text (decoded tokens, or "<v> ..." for an embedding)
    cond: Conditioning                # what generation conditions on: real token ids, or the learned embedding
    gammas: torch.Tensor              # [1, C] the SPMs' strengths this conditioning receives
    tokens: list[int] | None = None   # the discrete adversarial token ids (soft prompt, Ring-A-Bell)
    trace: list[float] = field(default_factory=list)   # the objective per step (Ring-A-Bell: best fitness)


def descend(opt: torch.optim.Optimizer, loss: torch.Tensor, trace: list[float],
            on_step: Callable[[float], None] | None) -> None:
    """One optimiser step of an attack on ``loss``; the value goes to ``trace`` and ``on_step`` (a progress bar)."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    trace.append(loss.item())
    if on_step is not None:
        on_step(trace[-1])


class ErasedModel:
    """``model`` + the SPMs of ``spm_files`` (none: the base model), FT on or at ``multipliers``."""

    def __init__(self, model: DiffusionModel, spm_files: list[str | Path] = (), ft: bool = True,
                 multipliers: list[float] | None = None) -> None:
        self.model, self.ft = model, ft
        self.comp = SPMComposition.from_files(model.unet, list(spm_files)) if spm_files else None
        if self.comp is not None:
            self.comp.to(model.ddim.alphas_cumprod.device)
        n = self.comp.num_spms if self.comp is not None else 0
        values = list(multipliers or [1.0])
        self.fixed = None if ft else (values * n if len(values) == 1 else values)
        if self.fixed is not None and len(self.fixed) != n:
            raise ValueError(f"{len(values)} multipliers for {n} SPMs; expected 1 or {n}")

    @property
    def concepts(self) -> list[list[str]]:
        return self.comp.concepts if self.comp is not None else []

    def gammas(self, prompts: list[str], cond: Conditioning, ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C] strengths the prompts receive: FT on their own text states ``cond`` and token overlap (from
        ``ids`` [B, L], the first tokenizer's ids ``cond`` was encoded from, else the tokenized ``prompts``), or
        the fixed multipliers. [B, 0] for the base model."""
        if self.comp is None:
            return torch.zeros(len(prompts), 0)
        m = self.model
        return facilitated_gammas(m.text_encoder, m.tokenizer, prompts, self.concepts, fixed=self.fixed,
                                  prompt_embeds=cond.text.detach(), embed=m.encode_prompts, prompt_ids=ids).cpu()

    @contextlib.contextmanager
    def applied(self, gammas: torch.Tensor) -> Iterator[None]:
        if self.comp is None:
            yield
        else:
            with self.comp.applied(gammas):
                yield

    def denoising_loss(self, cond: Conditioning, x0: torch.Tensor, gammas: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
        """The attacks' objective: MSE of the erased UNet's output at (x_t, t, cond) against the true noise (or
        v), for x_t the latents ``x0`` [N, ...] noised at random timesteps; ``cond`` is batch 1 or N."""
        ddim = self.model.ddim
        t = torch.randint(0, ddim.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        a = ddim.alphas_cumprod[t].view(-1, *[1] * (x0.ndim - 1)).to(x0)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if ddim.prediction_type == "v_prediction" else noise
        cond = cond.expand(x0.shape[0]) if cond.batch == 1 else cond
        with self.applied(gammas):          # one gamma row serves the whole batch (SPMComposition repeats it)
            out = self.model.predict(x_t, t, cond)       # a timestep per sample
        return F.mse_loss(out.float(), target.float())

    @torch.no_grad()
    def latents(self, cond: Conditioning, gammas: torch.Tensor, seeds: list[int], steps: int, guidance: float,
                negative: str = "") -> torch.Tensor:
        """Final latents [N, ...] (pixels for the toy model), one per (conditioning row, seed) pair: ``cond`` [N]
        or [1] (repeated); sample i's noise depends only on its seed, as in ``generate``."""
        m = self.model
        n = len(seeds)
        cond = cond.expand(n) if cond.batch == 1 else cond
        size = m.unet.config.sample_size * m.latent_scale
        device, dtype = m.ddim.alphas_cumprod.device, next(m.unet.parameters()).dtype
        noise = torch.cat([torch.randn(m.latent_shape(1, size, size), generator=torch.Generator().manual_seed(s))
                           for s in seeds]).to(device, dtype)
        with self.applied(gammas):
            return denoise(m, noise, cond.to(device), m.encode([negative]), guidance, steps)

    def generate(self, *args, **kwargs) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] of :meth:`latents`."""
        return self.model.decode(self.latents(*args, **kwargs)).cpu()
