"""A prompt with k token slots whose input embeddings an attack chooses, encoded with gradients.

The slots sit right after the start token (UnlearnDiffAtk's ``prefix_k`` insertion) or, for concept inversion's
one learned word, in place of the concept's token (:func:`concept_slot_ids`). Each slot holds a placeholder id (the
start token's, which no CLIP pooling picks) and a forward hook on each encoder's token embedding replaces the
slots' rows by the attack's vectors, so the encoders run unchanged: causal mask, positions, SDXL's penultimate
states and pooled embedding all follow (:meth:`DiffusionModel.encode_ids`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from projects.spm.diffusion.conditioning import Conditioning
from projects.spm.diffusion.model import DiffusionModel


def padded(tokenizer, prompt: str, row: list[int], k: int) -> list[int]:
    """``row`` ([start, ..., end], ``k`` of its ids attack slots) padded to the encoder's length; refuses a prompt
    that would lose its end token."""
    length = tokenizer.model_max_length
    if len(row) > length:
        raise ValueError(f"prompt {prompt!r} is {len(row) - k} tokens; with {k} attack slot(s) it exceeds the text "
                         f"encoder's {length}: shorten it or lower the slot count")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else row[-1]
    return row + [pad] * (length - len(row))


def slot_ids(model: DiffusionModel, prompts: Sequence[str], k: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(ids, slots)``: one [B, L] id tensor per text encoder with ``k`` slots after the start token, and the
    boolean slot mask [B, L] (the same for every encoder). A slot holds the start token's id as a placeholder."""
    ids = []
    for tokenizer, _ in model.text_encoders:
        rows = []
        for prompt in prompts:
            words = tokenizer(prompt, truncation=False).input_ids            # [start, ..., end]
            rows.append(padded(tokenizer, prompt, [words[0], *[words[0]] * k, *words[1:]], k))
        ids.append(torch.tensor(rows))
    slots = torch.zeros(len(prompts), ids[-1].shape[1], dtype=torch.bool)
    slots[:, 1:1 + k] = True
    return ids, slots


def concept_slot_ids(model: DiffusionModel, prompt: str, concept: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(ids, slots)`` as :func:`slot_ids` with one slot *in place of* the concept's token (concept inversion's
    placement in Pham et al.: the learned word stands where the concept word stood). The concept is one token;
    the prompt must hold it exactly once."""
    ids, slots = [], None
    for tokenizer, _ in model.text_encoders:
        words = tokenizer(prompt, truncation=False).input_ids
        concept_id = tokenizer(concept, add_special_tokens=False).input_ids
        at = [i for i, w in enumerate(words) if [w] == concept_id]
        if len(at) != 1:
            raise ValueError(f"prompt {prompt!r} holds the concept {concept!r} {len(at)} times; concept inversion "
                             "in place of the word (--ci_placement replace) needs it exactly once")
        words[at[0]] = words[0]                      # the placeholder id, as in slot_ids
        ids.append(torch.tensor([padded(tokenizer, prompt, words, 0)]))
        slots = torch.zeros(1, ids[-1].shape[1], dtype=torch.bool)
        slots[0, at[0]] = True
    return ids, slots


@contextlib.contextmanager
def slot_vectors(model: DiffusionModel, slots: torch.Tensor, vectors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block each encoder's token embedding returns ``vectors[e]`` [k, D_e] (or [B, k, D_e]) at the
    ``slots`` [B, L] positions; gradients flow into the vectors."""
    handles = []

    def hook(vec: torch.Tensor):
        def replace(module, inputs, output: torch.Tensor) -> torch.Tensor:
            mask = slots.to(output.device)
            batch = mask.shape[0]
            source = vec.to(output.dtype)
            source = source.expand(batch, *source.shape[-2:]) if source.ndim == 2 else source
            return output.masked_scatter(mask.unsqueeze(-1), source.reshape(-1, source.shape[-1]))
        return replace

    try:
        for (_, encoder), vec in zip(model.text_encoders, vectors, strict=True):
            handles.append(encoder.get_input_embeddings().register_forward_hook(hook(vec)))
        yield
    finally:
        for h in handles:
            h.remove()


def encode_with_slots(model: DiffusionModel, ids: list[torch.Tensor], slots: torch.Tensor,
                      vectors: Sequence[torch.Tensor]) -> Conditioning:
    """The conditioning of ``ids`` with the slot rows replaced by ``vectors`` (one per encoder), with gradients."""
    with slot_vectors(model, slots, vectors):
        return model.encode_ids(ids)


def embedding_tables(model: DiffusionModel) -> list[torch.Tensor]:
    """Each text encoder's token embedding table [V, D_e] (frozen), cut to the shortest vocabulary."""
    tables = [encoder.get_input_embeddings().weight.detach() for _, encoder in model.text_encoders]
    vocab = min(t.shape[0] for t in tables)
    return [t[:vocab] for t in tables]


def with_tokens(model: DiffusionModel, prompt: str, tokens: Sequence[int]) -> str:
    """The attacked prompt as text: the discrete slot tokens decoded, then the prompt (what generation and the
    judge see; re-tokenising decoded text can merge or split tokens, as in every hard-prompt attack)."""
    words = model.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()
    return f"{words} {prompt}".strip()
