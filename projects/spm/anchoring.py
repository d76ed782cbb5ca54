"""Latent Anchoring samplers (paper Eq. 7; official ``src/engine/sampling.py::sample``).

* ``paper``: anchor concepts c from a pool of concept strings with P(c) proportional to (1 - |cos(c, c_tar)|)^alpha,
  the cosine taken between flattened text-encoder outputs (the code's embedding-space convention, spec 3.2).
* ``official``: isotropic random embeddings with the target's shape, unit-normalised, accepted with probability
  1 - cos(c_tar, xi) (no |.|, alpha 1; in 77x768 dims it almost never rejects), scaled to ||c_tar|| * U(0.8, 1.2).
  ``batch_quirk`` reproduces the released code's batch layout: of 4 anchors [u, s1, u, s2, u, s3, u, s4] only
  [u, s3, u, s4] reach the loss (u = the "" embedding), see spec 2.3.

SDXL (official ``sample_xl``): the text states and the pooled embedding are drawn separately, each with its own
norm, rejection step and scale (all text anchors first, then all pooled ones); paper mode scores the pool on the
text states (:class:`~projects.spm.model.Conditioning`) and keeps each concept's pooled embedding with them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from projects.spm.model import Conditioning


def flat_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between flattened embeddings: a [N, L, D], b [L, D] or [1, L, D] -> [N]."""
    return torch.nn.functional.cosine_similarity(a.flatten(1).float(), b.reshape(1, -1).float(), dim=1)


def official_anchors(target: torch.Tensor | Conditioning, n: int, uncond: torch.Tensor | Conditioning | None = None,
                     batch_quirk: bool = True, generator: torch.Generator | None = None) -> torch.Tensor | Conditioning:
    """``n`` random anchor embeddings the way the official code draws them; target/uncond [1, L, D] -> [n, L, D].
    A :class:`Conditioning` gives one: text anchors as above, then (SDXL) pooled anchors [n, P] drawn the same way
    from the pooled target (official ``sample_xl``)."""
    if isinstance(target, Conditioning):
        u = uncond if uncond is None or isinstance(uncond, Conditioning) else Conditioning(uncond)
        text = official_anchors(target.text, n, None if u is None else u.text, batch_quirk, generator)
        if target.pooled is None:
            return Conditioning(text)
        u_pooled = None if u is None else u.pooled.unsqueeze(1)
        pooled = official_anchors(target.pooled.unsqueeze(1), n, u_pooled, batch_quirk, generator).squeeze(1)
        return Conditioning(text, pooled)
    target = target.reshape(1, *target.shape[-2:]).float()
    norm = target.norm()
    accepted: list[torch.Tensor] = []
    while sum(a.shape[0] for a in accepted) < n:  # vectorised rejection sampling, usually one round
        xi = torch.randn((2 * n, *target.shape[1:]), generator=generator, device=target.device)
        xi = xi / xi.flatten(1).norm(dim=1).view(-1, 1, 1)
        accept_p = (1 - flat_cosine(xi, target)).clamp(0, 1)
        keep = torch.rand(2 * n, generator=generator, device=target.device) < accept_p
        accepted.append(xi[keep])
    xi = torch.cat(accepted)[:n]
    scale = torch.empty(n, 1, 1, device=target.device).uniform_(0.8, 1.2, generator=generator)
    anchors = xi * norm * scale
    if batch_quirk:
        if uncond is None:
            raise ValueError("official_anchors(batch_quirk=True) needs the unconditional embedding")
        # predict_noise splits [u, s1, u, s2, ..., u, sn] into halves and keeps the second one.
        layout = torch.stack([uncond.reshape(anchors.shape[1:]).float().expand_as(anchors), anchors], 1)
        anchors = layout.flatten(0, 1)[n:]
    return anchors.to(target.dtype)


def _text(emb: torch.Tensor | Conditioning) -> torch.Tensor:
    return emb.text if isinstance(emb, Conditioning) else emb


class ConceptPool:
    """The paper's anchor distribution over a pool of concept strings, for one or more targets.

    ``encode`` maps a list of strings to embeddings [N, L, D] or :class:`Conditioning` (the cosines use their text
    states). Pool embeddings are cached on the device when they fit in ``cache_bytes``; otherwise the sampled
    strings are encoded each step.
    """

    def __init__(self, concepts: list[str], encode: Callable[[list[str]], torch.Tensor | Conditioning],
                 targets: torch.Tensor | Conditioning, alpha: float = 1.0, chunk: int = 256,
                 cache_bytes: int = 256 * 2**20) -> None:
        if not concepts:
            raise ValueError("ConceptPool: the concept pool is empty")
        self.concepts, self.encode = concepts, encode
        cos, cached = [], []
        for start in range(0, len(concepts), chunk):
            emb = encode(concepts[start:start + chunk])
            cos.append(torch.stack([flat_cosine(_text(emb), t) for t in _text(targets)], 1))  # [chunk, T]
            cached.append(emb)
        cos = torch.cat(cos)  # [P, T]
        # The target itself (|cos| = 1) never anchors: weight 0 for any alpha (at alpha 0, 0^0 would give it 1).
        far = (1 - cos.abs()).clamp_min(0)
        self.probs = torch.where(far > 1e-6, far ** alpha, torch.zeros_like(far)).T.contiguous()  # [T, P]
        if (self.probs.sum(1) <= 0).any():
            raise ValueError("ConceptPool: every pool concept has |cos| = 1 with the target; give a wider pool")
        size = sum(_text(e).numel() * _text(e).element_size() for e in cached)
        if size > cache_bytes:
            self.embeddings = None
        else:
            self.embeddings = Conditioning.cat(cached) if isinstance(cached[0], Conditioning) else torch.cat(cached)

    def sample(self, target_index: int, n: int, generator: torch.Generator | None = None
               ) -> torch.Tensor | Conditioning:
        idx = torch.multinomial(self.probs[target_index], n, replacement=True, generator=generator)
        if self.embeddings is not None:
            return self.embeddings[idx.to(_text(self.embeddings).device)]
        return self.encode([self.concepts[i] for i in idx.tolist()])


def vocabulary_words(tokenizer, min_len: int = 3) -> list[str]:
    """The default concept pool: the tokenizer's whole-word alphabetic tokens (CLIP ``</w>`` words, or WordPiece)."""
    vocab = list(tokenizer.get_vocab())
    bpe = any(t.endswith("</w>") for t in vocab)
    words = set()
    for token in vocab:
        if bpe and not token.endswith("</w>"):
            continue
        word = token.removesuffix("</w>")
        if word.isalpha() and len(word) >= min_len:
            words.add(word)
    return sorted(words)
