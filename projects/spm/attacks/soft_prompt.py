"""The soft-prompt attack of UnlearnDiffAtk (Zhang et al., ECCV 2024; OPTML-Group/Diffusion-MU-Attack).

k token slots in front of the prompt, each a distribution over the tokenizer's vocabulary (logits [k, V]); the
slots' input embeddings are the distributions' mixtures of each encoder's token table (a continuous relaxation, so
every step moves the objective). The objective is the erased model's denoising loss on noised latents of images
the *base* model made for the concept: the attack looks for words that make the erased UNet denoise those images
as if the concept were asked for. At the end each slot is discretised to its most likely token, so what is
generated and judged is a real prompt of real vocabulary ids. Defaults as the released attack config (k 5,
40 iterations, AdamW lr 0.01, weight decay 0.1, prefix insertion).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from projects.spm.attacks.target import Attacked, ErasedModel, descend
from projects.spm.attacks.text import embedding_tables, encode_with_slots, slot_ids, with_tokens

DEFAULTS = {"k": 5, "steps": 40, "lr": 0.01, "weight_decay": 0.1, "temperature": 1.0}


def relaxed_vectors(logits: torch.Tensor, tables: list[torch.Tensor], temperature: float) -> list[torch.Tensor]:
    """Each encoder's slot embeddings [k, D_e]: softmax(logits / temperature) @ its token table."""
    probs = (logits / temperature).softmax(-1)
    return [probs @ table.to(probs) for table in tables]


def soft_prompt_attack(target: ErasedModel, prompt: str, x0: torch.Tensor, *, k: int = 5, steps: int = 40,
                       lr: float = 0.01, weight_decay: float = 0.1, temperature: float = 1.0, batch: int = 4,
                       seed: int = 0, on_step: Callable[[float], None] | None = None) -> Attacked:
    """Optimise k slot distributions against ``target`` on the concept latents ``x0`` [N, ...] (``batch`` of
    them per step); returns the discretised prompt. FT: each step's gammas are those of the current discrete
    prompt on the current relaxed text states."""
    model = target.model
    tables = embedding_tables(model)
    ids, slots = slot_ids(model, [prompt], k)
    gen = torch.Generator().manual_seed(seed)
    logits = (1e-3 * torch.randn(k, tables[0].shape[0], generator=gen)).requires_grad_(True)
    opt = torch.optim.AdamW([logits], lr=lr, weight_decay=weight_decay)
    trace = []
    for _ in range(steps):
        cond = encode_with_slots(model, ids, slots, relaxed_vectors(logits, tables, temperature))
        tokens = logits.argmax(-1).tolist()
        pick = torch.randint(0, x0.shape[0], (min(batch, x0.shape[0]),), generator=gen)
        gammas = target.gammas([with_tokens(model, prompt, tokens)], cond, filled(ids, slots, tokens)[0])
        loss = target.denoising_loss(cond, x0[pick], gammas, gen)
        descend(opt, loss, trace, on_step)
    tokens = logits.argmax(-1).tolist()
    real = filled(ids, slots, tokens)
    with torch.no_grad():
        cond = model.encode_ids(real)
    text = with_tokens(model, prompt, tokens)
    return Attacked(prompt, text, cond, target.gammas([text], cond, real[0]), tokens, trace)


def filled(ids: list[torch.Tensor], slots: torch.Tensor, tokens: list[int]) -> list[torch.Tensor]:
    """``ids`` with the slots holding ``tokens``: the real prompt the UNet is conditioned on."""
    out = [i.clone() for i in ids]
    for i in out:
        i[slots] = torch.tensor(tokens).repeat(i.shape[0])
    return out
