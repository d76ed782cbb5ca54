"""Concept inversion (Pham et al., ICLR 2024, "Circumventing Concept Erasure Methods for Text-to-Image Generative
Models"): textual inversion of one new word against the erased model.

One slot holds a learned embedding per text encoder (initialised at the token table's mean), trained to minimise
the erased model's denoising loss on images of the concept that the *base* model made. Placement: ``replace`` (the
paper's: the learned word stands in place of the concept word, "a red <concept>", so the prompt no longer holds the
erased word) or ``prefix`` (in front of the whole prompt, "<concept> a red circle", which keeps the word and with
it FT's full strength: the UnlearnDiffAtk placement). Generation uses the learned embedding itself (the attack's
point: a word the erasure never saw). With FT on, the strength the inverted prompt receives is FT on its own text
states (the learned word included) and on its real tokens. Defaults as textual inversion (Gal et al. 2023) used by
the paper: 1000 steps, Adam lr 5e-3.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from projects.spm.attacks.target import Attacked, ErasedModel, descend
from projects.spm.attacks.text import concept_slot_ids, embedding_tables, encode_with_slots, slot_ids

DEFAULTS = {"steps": 1000, "lr": 5e-3, "placement": "replace"}
PLACEMENTS = ("replace", "prefix")
PLACEHOLDER = "<concept>"


def concept_inversion(target: ErasedModel, prompt: str, x0: torch.Tensor, *, concept: str = "",
                      placement: str = "replace", steps: int = 1000, lr: float = 5e-3, batch: int = 4, seed: int = 0,
                      on_step: Callable[[float], None] | None = None) -> Attacked:
    """Learn the embedding of a word in place of ``concept`` in ``prompt`` (``placement`` replace) or in front of
    ``prompt`` (prefix; the prompt may be empty) on the concept latents ``x0``."""
    model = target.model
    if placement not in PLACEMENTS:
        raise ValueError(f"concept inversion placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
    if placement == "replace":
        ids, slots = concept_slot_ids(model, prompt, concept)
        text = re.sub(rf"(?<!\w){re.escape(concept)}(?!\w)", PLACEHOLDER, prompt, count=1, flags=re.IGNORECASE)
    else:
        ids, slots = slot_ids(model, [prompt], 1)
        text = f"{PLACEHOLDER} {prompt}".strip()
    vectors = [t.mean(0, keepdim=True).clone().float().requires_grad_(True) for t in embedding_tables(model)]
    opt = torch.optim.Adam(vectors, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    trace = []
    for _ in range(steps):
        cond = encode_with_slots(model, ids, slots, vectors)
        pick = torch.randint(0, x0.shape[0], (min(batch, x0.shape[0]),), generator=gen)
        loss = target.denoising_loss(cond, x0[pick], target.gammas([text], cond, ids[0]), gen)
        descend(opt, loss, trace, on_step)
    with torch.no_grad():
        cond = encode_with_slots(model, ids, slots, vectors)
    return Attacked(prompt, text, cond, target.gammas([text], cond, ids[0]), None, trace)
