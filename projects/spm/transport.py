"""Facilitated Transport (FT): the per-prompt permeability gamma_c(p) of each SPM (paper Eqs. 10-11;
docs/papers/spm.md §3).

``gamma_c(p) = max(s_f, s_t)`` with
- ``s_f``: cosine similarity of the *flattened* padded ``last_hidden_state`` (L x D, padding included) of the
  target model's own text encoder for p and c (official ``clipcos``: a prompt-level score, not pooled);
- ``s_t``: unigram token overlap ``|T(c) & T(p)| / |T(c)|`` on token-id sets with the special tokens removed
  (official ``tokenuni``).
An SPM with several concept strings (comma-joined file metadata) takes the max over them; ``facilitate_factor``
multiplies gamma (official ``--facilitate_factor``, also applied to fixed multipliers as the official loop does);
``fixed`` replaces FT by given gammas (official ``--spm_multiplier``); ``metric="allone"`` gives gamma = 1.

Batched: one text-encoder call for all prompts, one for all concept strings, one matmul for every s_f, and the
token overlaps as a multi-hot product over the concepts' vocabulary; no Python loop over prompt x concept pairs.

SDXL: the official code has no FT for SDXL (``infer_spm.py`` / ``evaluate_task.py`` load SD v1/v2 pipelines only).
Ours scores s_f on what the SDXL UNet cross-attends to, the concatenated penultimate states of both encoders
[L, 768 + 1280] (``embed=DiffusionModel.encode_prompts``), flattened as for SD: the same "prompt as the UNet sees it"
reading as the official ``clipcos`` on SD's last_hidden_state. The pooled embedding is left out (one vector,
against L x 2048 values it would barely move the cosine). s_t uses the first tokenizer (both SDXL tokenizers are the
same CLIP BPE vocabulary; only the padding token differs, and special tokens are removed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

METRICS = ("clipcos", "tokenuni", "clipcos_tokenuni", "allone")


def tokenize(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """SD convention (as the generation path encodes prompts): pad to ``model_max_length``, truncate; [N, L] ids."""
    return tokenizer(list(texts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    """``last_hidden_state`` [N, L, D] of token ids (on the text encoder's device)."""
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


def clip_cosine(prompt_embeds: torch.Tensor, concept_embeds: torch.Tensor) -> torch.Tensor:
    """s_f [B, S]: cosine between the flattened [L, D] sequences (official ``clipcos``), in float32."""
    if prompt_embeds.shape[1:] != concept_embeds.shape[1:]:
        raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and concept embeddings "
                         f"{tuple(concept_embeds.shape)} differ in [L, D]; pass prompt_embeds from the same text "
                         f"encoder and tokenizer padding (max_length)")
    p = F.normalize(prompt_embeds.flatten(1).float(), dim=1)
    c = F.normalize(concept_embeds.flatten(1).float(), dim=1)
    return p @ c.T


def token_overlap(prompt_ids: torch.Tensor, concept_ids: torch.Tensor, special_ids: Sequence[int]) -> torch.Tensor:
    """s_t [B, S] = |T(c) & T(p)| / |T(c)| over token-id *sets* without special ids (official ``tokenuni``).

    A concept whose set is empty (only special tokens) gets 0 (the official code divides by zero).
    """
    specials = torch.as_tensor(sorted(set(special_ids)), dtype=concept_ids.dtype, device=concept_ids.device)
    vocab = torch.unique(concept_ids)
    vocab = vocab[~torch.isin(vocab, specials)]  # the concepts' non-special vocabulary, U ids
    concept_hot = (concept_ids.unsqueeze(-1) == vocab).any(1).float()  # [S, U]: sets, duplicates count once
    prompt_hot = (prompt_ids.to(vocab.device).unsqueeze(-1) == vocab).any(1).float()  # [B, U]
    return (prompt_hot @ concept_hot.T) / concept_hot.sum(1).clamp_min(1)


def facilitated_gammas(text_encoder, tokenizer, prompts: list[str], concepts: list[list[str]], *,
                       metric: str = "clipcos_tokenuni", facilitate_factor: float = 1.0,
                       fixed: list[float] | None = None, prompt_embeds: torch.Tensor | None = None,
                       embed: Callable[[list[str]], torch.Tensor] | None = None,
                       prompt_ids: torch.Tensor | None = None) -> torch.Tensor:
    """gamma [B, C] (float32, on the text encoder's device) of C SPMs for B prompts.

    ``concepts[c]`` are SPM c's concept strings (the file's ``prompts`` metadata). ``prompt_embeds`` [B, L, D]:
    the prompts' embeddings as used for generation (skips re-encoding them). ``fixed``: one gamma per SPM, FT off.
    ``embed``: strings -> [N, L, D] for s_f (SDXL: ``DiffusionModel.encode_prompts``, see the module docstring);
    default: ``text_encoder``'s last_hidden_state of the padded ids (official ``clipcos``). ``prompt_ids`` [B, L]:
    the ids the prompts were encoded from, when they are not the tokenized text (an attack's token ids).
    """
    if metric not in METRICS:
        raise ValueError(f"FT metric {metric!r} is not one of {METRICS}")
    if isinstance(concepts, str) or any(isinstance(c, str) for c in concepts):   # "circle" would read as c, i, r ...
        raise ValueError(f"concepts must hold one list of concept strings per SPM, e.g. [['circle']] for one SPM; "
                         f"got {concepts!r}")
    device = next(text_encoder.parameters()).device
    batch, num = len(prompts), len(concepts)
    if fixed is not None:
        if len(fixed) != num:
            raise ValueError(f"fixed gammas {list(fixed)} give {len(fixed)} values for {num} SPMs; expected one each")
        return torch.as_tensor(fixed, dtype=torch.float32, device=device).expand(batch, num) * facilitate_factor
    if metric == "allone":
        return torch.full((batch, num), float(facilitate_factor), device=device)
    for c, strings in enumerate(concepts):
        if not strings:
            raise ValueError(f"SPM {c} has no concept strings (empty 'prompts' metadata): Facilitated Transport needs "
                             f"them; pass fixed gammas instead")
    flat = [s for strings in concepts for s in strings]
    owner = torch.tensor([c for c, strings in enumerate(concepts) for _ in strings], device=device)
    concept_ids = tokenize(tokenizer, flat)
    prompt_ids = tokenize(tokenizer, prompts) if prompt_ids is None else prompt_ids
    scores = []
    if "clipcos" in metric:
        if prompt_embeds is None:
            prompt_embeds = encode(text_encoder, prompt_ids) if embed is None else embed(prompts)
        elif prompt_embeds.shape[0] != batch:
            raise ValueError(f"prompt_embeds has {prompt_embeds.shape[0]} rows for {batch} prompts")
        concept_embeds = encode(text_encoder, concept_ids) if embed is None else embed(flat)
        scores.append(clip_cosine(prompt_embeds.to(device), concept_embeds.to(device)))
    if "tokenuni" in metric:
        scores.append(token_overlap(prompt_ids, concept_ids, tokenizer.all_special_ids).to(device))
    per_string = torch.stack(scores).amax(0)  # [B, S]: max(s_f, s_t)
    # Max over each SPM's strings: scatter-reduce the S columns onto their C owners.
    gamma = torch.full((batch, num), -torch.inf, device=device)
    gamma = gamma.scatter_reduce(1, owner.expand(batch, -1), per_string, reduce="amax")
    return gamma * facilitate_factor
