"""Concept inversion (Pham et al., ICLR 2024, "Circumventing Concept Erasure Methods for Text-to-Image Generative
Models"): textual inversion of one new word against the erased model.

One slot in front of the prompt holds a learned embedding per text encoder (initialised at the token table's
mean), trained to minimise the erased model's denoising loss on images of the concept that the *base* model made.
Generation uses the learned embedding itself (the attack's point: a word the erasure never saw). With FT on, the
strength the inverted prompt receives is FT on its own text states (the learned word included) and on the
template's tokens. Defaults as textual inversion (Gal et al. 2023) used by the paper: 1000 steps, Adam lr 5e-3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from projects.spm.attacks.target import Attacked, ErasedModel, descend
from projects.spm.attacks.text import embedding_tables, encode_with_slots, slot_ids

DEFAULTS = {"steps": 1000, "lr": 5e-3}
PLACEHOLDER = "<concept>"


def concept_inversion(target: ErasedModel, prompt: str, x0: torch.Tensor, *, steps: int = 1000, lr: float = 5e-3,
                      batch: int = 4, seed: int = 0, on_step: Callable[[float], None] | None = None) -> Attacked:
    """Learn the embedding of a word put in front of ``prompt`` (may be empty) on the concept latents ``x0``."""
    model = target.model
    ids, slots = slot_ids(model, [prompt], 1)
    vectors = [t.mean(0, keepdim=True).clone().float().requires_grad_(True) for t in embedding_tables(model)]
    opt = torch.optim.Adam(vectors, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    trace = []
    for _ in range(steps):
        cond = encode_with_slots(model, ids, slots, vectors)
        pick = torch.randint(0, x0.shape[0], (min(batch, x0.shape[0]),), generator=gen)
        loss = target.denoising_loss(cond, x0[pick], target.gammas([prompt], cond, ids[0]), gen)
        descend(opt, loss, trace, on_step)
    with torch.no_grad():
        cond = encode_with_slots(model, ids, slots, vectors)
    return Attacked(prompt, f"{PLACEHOLDER} {prompt}".strip(), cond, target.gammas([prompt], cond, ids[0]), None,
                    trace)
