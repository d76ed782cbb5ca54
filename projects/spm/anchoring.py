"""Latent Anchoring (docs/papers/spm.md §2.1 Eq. 7, §2.3): its knobs (:class:`Anchoring`), the anchor samplers
and how anchors pair with the latents of a step.

* ``paper``: anchor concepts c from a pool of concept strings with P(c) proportional to (1 - |cos(c, c_tar)|)^alpha,
  the cosine taken between flattened text-encoder outputs (the code's embedding-space convention, §3.2).
* ``official``: isotropic random embeddings with the target's shape, unit-normalised, accepted with probability
  1 - cos(c_tar, xi) (no |.|, alpha 1; in 77x768 dims it almost never rejects), scaled to ||c_tar|| * U(0.8, 1.2).
  ``batch_quirk`` reproduces the released code's batch layout: of 4 anchors [u, s1, u, s2, u, s3, u, s4] only
  [u, s3, u, s4] reach the loss (u = the "" embedding), see §2.3.
* ``none``: plain erasing (the paper's ablation).

SDXL (official ``sample_xl``): the text states and the pooled embedding are drawn separately, each with its own
norm, rejection step and scale (all text anchors first, then all pooled ones); paper mode scores the pool on the
text states (:class:`~projects.spm.diffusion.conditioning.Conditioning`) and keeps each concept's pooled embedding
with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from projects.spm.diffusion.conditioning import Conditioning
from shared.data.images import read_utf8


@dataclass(frozen=True)
class Anchoring:
    """The knobs of Latent Anchoring (§8 lists each against the paper and the official code).

    ``mode``: ``paper`` (concept pool, P proportional to (1-|cos|)^``alpha``), ``official`` (random embeddings at
    the target's norm; ``official_batch_quirk`` keeps only [u, s3, u, s4]), ``none`` (plain erasing).
    ``strength``: lambda of Eq. 8. ``samples``: anchors per step. ``concept_pool``: a text file, one concept a line
    (None: the tokenizer's whole words). ``uncond`` (ours, paper mode): add the unconditional "" to every step's
    anchors, which the official batch quirk does by accident; without it the membrane can move the CFG negative
    branch with the target. ``official_pairing``: with several latents per step, pair anchor j with latent j mod B
    as the official loop does (:func:`anchor_batch`); default: every anchor at every latent.
    """

    mode: Literal["paper", "official", "none"] = "paper"
    strength: float = 1000.0
    samples: int = 4
    alpha: float = 1.0
    concept_pool: str | None = None
    uncond: bool = False
    official_batch_quirk: bool = True
    official_pairing: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("paper", "official", "none"):
            raise ValueError(f"model.anchoring.mode must be paper, official or none; got {self.mode!r}")
        if int(self.samples) < 1 and self.mode != "none":
            raise ValueError(f"model.anchoring.samples must be >= 1; got {self.samples}")

    def pool(self, tokenizer, encode: Callable[[list[str]], torch.Tensor | Conditioning],
             targets: torch.Tensor | Conditioning) -> ConceptPool | None:
        """The paper mode's concept pool over ``targets`` (None in the other modes)."""
        if self.mode != "paper":
            return None
        concepts = read_concept_pool(self.concept_pool) if self.concept_pool else vocabulary_words(tokenizer)
        return ConceptPool(concepts, encode, targets, self.alpha)

    def draw(self, target_index: int, targets: Conditioning, uncond: Conditioning,
             pool: ConceptPool | None) -> Conditioning | None:
        """This step's anchors for target ``target_index`` of ``targets`` (None: no anchoring)."""
        if self.mode == "none":
            return None
        if self.mode == "official":
            return official_anchors(targets[target_index:target_index + 1], self.samples, uncond,
                                    self.official_batch_quirk)
        anchors = pool.sample(target_index, self.samples)
        if self.uncond:  # ours, off by default: also pin the CFG unconditional ""
            anchors = Conditioning.cat([anchors, uncond.to(anchors.dtype)])
        return anchors


def anchor_batch(x: torch.Tensor, anchors: Conditioning, official_pairing: bool = False
                 ) -> tuple[torch.Tensor, Conditioning]:
    """The (latent, anchor) rows of the anchoring loss for B latents ``x`` [B, ...] and N ``anchors``.

    Ours (default): every anchor at every latent, N*B rows [x_1: a_1..a_N, x_2: a_1..a_N, ...].
    ``official_pairing``: N rows, anchor j at latent x_(j mod B), as the official loop's
    ``denoised_latents.repeat(N // B, ...)`` pairs them (§2.3; with the batch quirk's anchors [u, s3, u, s4] and
    B = 2: (x1, u), (x2, s3), (x1, u), (x2, s4)); N must be a multiple of B (the official code asserts it).
    """
    b, n = x.shape[0], anchors.batch
    if not official_pairing:
        return x.repeat_interleave(n, 0), anchors.repeat(b)
    if n % b:
        raise ValueError(f"model.anchoring.official_pairing: {n} anchor rows are not a multiple of batch_size {b} "
                         f"(the official loop asserts sampling_batch_size % batch_size == 0)")
    return x.repeat(n // b, *([1] * (x.ndim - 1))), anchors


def read_concept_pool(path: str | Path) -> list[str]:
    """Concept strings, one per line (blank lines and ``#`` comments skipped); clear error when unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"concept pool file {path} does not exist (expected a text file, one concept a line)")
    lines = [line.strip() for line in read_utf8(path, "concept pool file").splitlines()]
    concepts = [line for line in lines if line and not line.startswith("#")]
    if not concepts:
        raise ValueError(f"concept pool file {path} holds no concept strings (expected one concept a line)")
    return concepts


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
