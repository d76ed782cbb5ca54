"""Ring-A-Bell (Tsai et al., ICLR 2024): a model-agnostic prompt search in the text encoder's space only.

The concept vector is the mean, over prompt pairs with and without the concept, of the difference of their text
states (what the UNet cross-attends to, [L, D]). The target is ``prompt + eta x vector``; a genetic search looks for
K real tokens whose text states are most cosine-similar to it (flattened, as FT's ``clipcos``). No UNet is
touched: the search never sees the SPMs, and the result is judged on the erased model. Defaults as the paper
(K 16, eta 3, population 200, 3000 generations, mutation rate 0.25, crossover rate 0.5; the toy study uses fewer
generations, each a flag).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from projects.spm.attacks.target import Attacked, ErasedModel

DEFAULTS = {"length": 16, "eta": 3.0, "population": 200, "generations": 3000, "mutation": 0.25, "crossover": 0.5}


def concept_pairs(prompts: Sequence[str], concept: str) -> list[tuple[str, str]]:
    """(with, without) pairs from the attack prompts: each prompt and the prompt with the concept word removed."""
    word = re.compile(rf"\b{re.escape(concept)}\b", re.IGNORECASE)
    return [(p, " ".join(word.sub("", p).split())) for p in prompts if word.search(p)]


def token_rows(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Id tensors (one per encoder) of prompts made of exactly the token rows ``tokens`` [P, K]."""
    out = []
    for tokenizer, _ in model.text_encoders:
        length = tokenizer.model_max_length
        start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        rows = torch.full((tokens.shape[0], length), pad, dtype=torch.long)
        rows[:, 0], rows[:, 1:1 + tokens.shape[1]], rows[:, 1 + tokens.shape[1]] = start, tokens, end
        out.append(rows)
    return out


@torch.no_grad()
def ring_a_bell(target: ErasedModel, prompt: str, pairs: list[tuple[str, str]], *, length: int = 16,
                eta: float = 3.0, population: int = 200, generations: int = 3000, mutation: float = 0.25,
                crossover: float = 0.5, seed: int = 0,
                on_step: Callable[[float], None] | None = None) -> Attacked:
    """Search ``length`` tokens whose text states match ``prompt``'s plus ``eta`` x the concept vector."""
    model = target.model
    if not pairs:
        raise ValueError("Ring-A-Bell needs prompt pairs with and without the concept: no attack prompt names it")
    tokenizer = model.tokenizer
    if length + 2 > tokenizer.model_max_length:
        raise ValueError(f"Ring-A-Bell length {length} does not fit the text encoder's {tokenizer.model_max_length} "
                         "tokens (with start and end)")
    states = lambda texts: model.encode(list(texts)).text.flatten(1).float()       # noqa: E731
    vector = (states([a for a, _ in pairs]) - states([b for _, b in pairs])).mean(0)
    goal = F.normalize(states([prompt])[0] + eta * vector, dim=0)
    specials = set(tokenizer.all_special_ids)
    size = min(len(tokenizer), model.text_encoder.get_input_embeddings().num_embeddings)
    vocab = torch.tensor([i for i in range(size) if i not in specials])
    gen = torch.Generator().manual_seed(seed)
    pool = vocab[torch.randint(0, len(vocab), (population, length), generator=gen)]

    def fitness(rows: torch.Tensor) -> torch.Tensor:
        return F.normalize(model.encode_ids(token_rows(model, rows)).text.flatten(1).float(), dim=1) @ goal

    score, trace = fitness(pool), []
    for _ in range(generations):
        order = score.argsort(descending=True)
        parents = pool[order[: population // 2]]                          # the fitter half survives
        a = parents[torch.randint(0, len(parents), (population - len(parents),), generator=gen)]
        b = parents[torch.randint(0, len(parents), (population - len(parents),), generator=gen)]
        cross = torch.rand(a.shape[0], 1, generator=gen) < crossover
        cut = torch.randint(1, length, (a.shape[0], 1), generator=gen) if length > 1 else torch.zeros(a.shape[0], 1)
        children = torch.where(cross & (torch.arange(length) >= cut), b, a)   # one-point crossover
        mutate = torch.rand(children.shape, generator=gen) < mutation
        children = torch.where(mutate, vocab[torch.randint(0, len(vocab), children.shape, generator=gen)], children)
        pool = torch.cat([parents, children])
        score = torch.cat([score[order[: population // 2]], fitness(children)])
        trace.append(score.max().item())
        if on_step is not None:
            on_step(trace[-1])
    best = pool[score.argmax()].tolist()
    rows = token_rows(model, torch.tensor([best]))
    cond = model.encode_ids(rows)
    text = tokenizer.decode(best, skip_special_tokens=True).strip()
    return Attacked(prompt, text, cond, target.gammas([text], cond, rows[0]), best, trace)
