"""What the UNet is conditioned on: text states, plus SDXL's pooled embedding (:class:`Conditioning`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)  # no field-wise == on tensors
class Conditioning:
    """What the UNet is conditioned on for a batch of B prompts.

    ``text`` [B, L, D]: the cross-attention states (SD v1.x / v2.x: the text encoder's last_hidden_state; SDXL:
    both encoders' penultimate hidden states concatenated, D = 768 + 1280). ``pooled`` [B, P] or None: SDXL's
    pooled embedding of ``text_encoder_2`` (``text_embeds``). SDXL's ``add_time_ids`` are not stored: they follow
    from the latent size (:meth:`DiffusionModel.predict`). The batch operations act on every field along dim 0, so
    code written for ``[B, L, D]`` tensors runs unchanged for all three families.
    """

    text: torch.Tensor
    pooled: torch.Tensor | None = None

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        return Conditioning(fn(self.text), None if self.pooled is None else fn(self.pooled))

    @property
    def batch(self) -> int:
        return self.text.shape[0]

    def __len__(self) -> int:
        return self.batch

    @property
    def dtype(self) -> torch.dtype:
        return self.text.dtype

    def __getitem__(self, index) -> Conditioning:
        """Rows ``index`` (a slice or an index tensor; an int keeps the batch dim)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def expand(self, batch: int) -> Conditioning:
        """A batch-1 conditioning broadcast to ``batch`` rows (a view)."""
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    def repeat(self, times: int) -> Conditioning:
        """``[c_1..c_B] * times`` (tiled, as ``Tensor.repeat``)."""
        return self._map(lambda t: t.repeat(times, *([1] * (t.ndim - 1))))

    def repeat_interleave(self, times: int) -> Conditioning:
        """``[c_1 x times, c_2 x times, ...]``."""
        return self._map(lambda t: t.repeat_interleave(times, 0))

    def to(self, *args, **kwargs) -> Conditioning:
        return self._map(lambda t: t.to(*args, **kwargs))

    @staticmethod
    def cat(items: Sequence[Conditioning | torch.Tensor]) -> Conditioning:
        """Concatenate along the batch; all items have a pooled embedding or none does."""
        items = [as_conditioning(c) for c in items]
        has_pooled = {c.pooled is not None for c in items}
        if len(has_pooled) > 1:
            raise ValueError("Conditioning.cat: some conditionings have a pooled embedding (SDXL) and some not")
        pooled = torch.cat([c.pooled for c in items]) if has_pooled == {True} else None
        return Conditioning(torch.cat([c.text for c in items]), pooled)


def as_conditioning(cond: Conditioning | torch.Tensor) -> Conditioning:
    """A ``[B, L, D]`` text-state tensor (SD v1.x / v2.x) as a :class:`Conditioning`; a Conditioning as is."""
    return cond if isinstance(cond, Conditioning) else Conditioning(cond)
