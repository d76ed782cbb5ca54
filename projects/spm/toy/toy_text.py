"""The toy text encoder's pretraining: a CLIP text transformer taught what a caption names, position by position.

It plays SD's frozen, pretrained CLIP text encoder for the toy world. The first toy encoder was trained jointly
with the UNet on one caption form and gave "circle" no stable meaning inside a phrase (NOTES.md, "Why phrases escape
erasure"), so an SPM trained on the bare word never met the phrases. Here the encoder is trained alone, before the
UNet, on the compositional grammar of ``scenes.grammar_caption`` ("circle", "a circle", "a red circle", "a circle
in red", ...): two linear probe heads read, at EVERY position p of the padded sequence (all of it reaches the
UNet's cross-attention), the shape and the colour named by tokens 0..p, or "none". The encoder is causal, so the
targets are cumulative: a word is known from its own position on, padding included.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from projects.spm.toy.scenes import TOY_COLORS, TOY_SHAPES, grammar_caption

NONE = 0  # probe class 0 = "not named (yet)"; shape / colour k is class k + 1


def word_token_ids(tokenizer, words: tuple[str, ...]) -> torch.Tensor:
    """The single token id of each word (the grammar's concept words must be whole tokens)."""
    ids = []
    for word in words:
        tokens = tokenizer(word, add_special_tokens=False).input_ids
        if len(tokens) != 1:
            raise ValueError(f"toy tokenizer splits {word!r} into {len(tokens)} tokens; every shape and colour "
                             "word must be one token (rebuild the tokenizer from scenes.grammar_vocabulary())")
        ids.append(tokens[0])
    return torch.tensor(ids)


def position_targets(input_ids: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] probe targets: the class (index in ``word_ids`` + 1) of the word named at or before each position,
    0 before any; a caption names at most one word of the set."""
    match = input_ids.unsqueeze(-1) == word_ids.view(1, 1, -1)   # [B, L, W]
    here = match.int().argmax(-1) + 1                               # class of the word at each position
    here = torch.where(match.any(-1), here, torch.zeros_like(here))
    return torch.cummax(here, dim=1).values


class CaptionProbes(nn.Module):
    """Shape and colour heads over every position's output [B, L, D] -> two [B, L, classes + 1] logits."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shape = nn.Linear(dim, len(TOY_SHAPES) + 1)
        self.color = nn.Linear(dim, len(TOY_COLORS) + 1)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.shape(hidden), self.color(hidden)


def sample_captions(rng: np.random.Generator, n: int, partial: float = 0.3) -> list[str]:
    return [grammar_caption(rng, TOY_SHAPES[rng.integers(len(TOY_SHAPES))],
                            TOY_COLORS[rng.integers(len(TOY_COLORS))], partial)[0] for _ in range(n)]


def pretrain_text_encoder(text_encoder: nn.Module, tokenizer, steps: int = 1500, batch_size: int = 256,
                          lr: float = 1e-3, seed: int = 0, log=print) -> dict:
    """Train ``text_encoder`` (in place) with the position probes; returns held-out probe accuracies."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    shape_ids, color_ids = word_token_ids(tokenizer, TOY_SHAPES), word_token_ids(tokenizer, TOY_COLORS)

    def batch(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return ids, position_targets(ids, shape_ids), position_targets(ids, color_ids)

    probes = CaptionProbes(text_encoder.config.hidden_size)
    params = list(text_encoder.parameters()) + list(probes.parameters())
    opt = torch.optim.AdamW(params, lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    text_encoder.train()
    start = time.perf_counter()
    for step in range(steps):
        ids, shape_t, color_t = batch(sample_captions(rng, batch_size))
        shape_logits, color_logits = probes(text_encoder(ids)[0])
        loss = F.cross_entropy(shape_logits.flatten(0, 1), shape_t.flatten()) + \
            F.cross_entropy(color_logits.flatten(0, 1), color_t.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"toy text encoder step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f}s)")
    text_encoder.eval()
    ids, shape_t, color_t = batch(sample_captions(np.random.default_rng(seed + 1000), 2000))
    with torch.no_grad():
        shape_logits, color_logits = probes(text_encoder(ids)[0])
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "train_s": round(time.perf_counter() - start, 1),
            "heldout_shape_acc_all_positions": round((shape_logits.argmax(-1) == shape_t).float().mean().item(), 4),
            "heldout_color_acc_all_positions": round((color_logits.argmax(-1) == color_t).float().mean().item(), 4),
            "heldout_shape_acc_last_position": round((shape_logits[:, -1].argmax(-1) == shape_t[:, -1])
                                                     .float().mean().item(), 4)}


def phrase_cosines(text_encoder: nn.Module, tokenizer) -> dict:
    """Cosine of full padded outputs (what the UNet reads) with bare "circle": the measure the diagnosis used."""
    prompts = ["circle", "a red circle", "a blue circle", "a yellow circle", "a circle in red", "a red square",
               "square", ""]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        out = text_encoder(ids)[0].flatten(1)
    cos = F.cosine_similarity(out, out[:1], dim=1)
    return {p or '""': round(c.item(), 3) for p, c in zip(prompts, cos, strict=True)}
