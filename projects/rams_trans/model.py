"""RAMS-Trans (Hu et al., ACM MM 2021): a shared ViT run recurrently on attention-amplified regions.

Scale 1 sees the (augmented, normalised) input; the Dynamic Patch Proposal Module (DPPM) turns that pass's
attention into a box; the box is cropped from the same input tensor, amplified back to the input size and
detached; scale 2 runs the *same* ViT on it with its own CLS token (docs/papers/rams_trans.md §1-3, Fig. 2).
Everything except the per-scale CLS tokens (and their position-embedding slots) is shared, classifier included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from shared.attention import (
    attention_rollout,
    attention_rollout_row,
    cells_to_pixels,
    crop_and_resize,
    mask_to_box,
)
from shared.backbones import ViTBackbone

PatchScore = Literal["column_mean", "cls_row"]
ClsLayout = Literal["per_scale", "all"]

__all__ = ["RAMSTrans", "dppm_boxes", "patch_scores", "rollout_patch_scores"]


def patch_scores(attentions: Sequence[Tensor], num_prefix: int, mode: PatchScore = "column_mean",
                 cls_index: int = 0) -> Tensor:
    """Rollout patch importance ``s [B, N]`` (docs/papers/rams_trans.md §2.3-2.5) without forming the T x T rollout.

    ``J = Â_L ... Â_1`` with ``Â = (A + I) / rowsum`` (shared :func:`attention_rollout`); ``column_mean``
    (official code) is ``s_j = mean_i J[i, j]``, ``cls_row`` (paper reading / commented code) is
    ``s_j = J[cls, j]``. Both are a row vector times ``J``: the shared :func:`attention_rollout_row`
    (O(L T^2) instead of O(L T^3)); equal to ``rollout_patch_scores`` (tested).
    """
    t = attentions[0].shape[-1]
    if mode == "column_mean":
        row = torch.full((t,), 1.0 / t, device=attentions[0].device)
    elif mode == "cls_row":
        row = torch.zeros(t, device=attentions[0].device)
        row[cls_index] = 1.0
    else:
        raise ValueError(f"patch_score must be 'column_mean' or 'cls_row', got {mode!r}")
    return attention_rollout_row(attentions, row)[:, num_prefix:]


def rollout_patch_scores(attentions: Sequence[Tensor], num_prefix: int, mode: PatchScore = "column_mean",
                         cls_index: int = 0) -> Tensor:
    """Reference for :func:`patch_scores` through the full shared :func:`attention_rollout` (tests, panels)."""
    j = attention_rollout(attentions)
    rows = j.mean(1) if mode == "column_mean" else j[:, cls_index]
    return rows[:, num_prefix:]


def dppm_boxes(scores: Tensor, grid: tuple[int, int], patch_size: int, eta: float,
               official_shift: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """DPPM (docs/papers/rams_trans.md §3.1-3.3, §3.8): patch scores ``[B, N]`` -> inclusive pixel boxes ``[B, 4]``.

    ``g = s / max(s)``; mask ``g > eta * mean(g)`` (strict); largest 8-connected component; its cell box times
    the patch size. ``official_shift`` moves x0/y0 one pixel up-left (clamped at 0) as the official code does.
    An empty mask (flat or NaN map) falls back to the whole image (the official code crashes:
    docs/papers/rams_trans.md §3).
    Returns ``(boxes (x0, y0, x1, y1) inclusive pixels, found [B] bool, normalised map g [B, gh, gw])``.
    """
    gh, gw = grid
    g = scores / scores.amax(1, keepdim=True)
    mask = g > eta * g.mean(1, keepdim=True)
    cells, found = mask_to_box(mask.view(-1, gh, gw))
    boxes = cells_to_pixels(cells, patch_size)
    if official_shift:
        boxes[:, :2] = (boxes[:, :2] - 1).clamp_(min=0)
    return boxes, found, g.view(-1, gh, gw)


class RAMSTrans(nn.Module):
    """Shared ViT over ``num_scales`` recurrent scales; returns per-scale logits, boxes, crops and score maps.

    Flags for the paper-vs-official differences (docs/papers/rams_trans.md §10; defaults = the paper, or the
    official code where the paper is silent):

    * ``patch_score``: ``column_mean`` (official code and the summaries, default) or ``cls_row``;
    * ``cls_layout``: ``per_scale`` (paper: each sequence holds only its scale's CLS, default) or ``all``
      (official: ``[cls_1, ..., cls_S, patches]`` at every scale, scale k reads token k);
    * ``eta``: one threshold per scale transition (1.2 official; 1.3 for the commented third scale);
    * ``official_box_shift``: the -1 pixel shift of the box corner (default on, as the official code).

    The final LayerNorm comes from the pretrained weights (ViTBackbone loads it; the official bug is not copied).
    """

    def __init__(self, num_classes: int, backbone: str = "vit_base_patch16_224", img_size: int = 448,
                 patch_size: int | None = None, pretrained: bool | str | None = False, num_scales: int = 2,
                 eta: float | Sequence[float] = 1.2, patch_score: PatchScore = "column_mean",
                 cls_layout: ClsLayout = "per_scale", official_box_shift: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, hidden_dropout: float = 0.0,
                 backbone_kwargs: dict | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"RAMSTrans: num_classes must be >= 1, got {num_classes}")
        if num_scales < 1:
            raise ValueError(f"RAMSTrans: num_scales must be >= 1, got {num_scales}")
        if patch_score not in ("column_mean", "cls_row"):
            raise ValueError(f"RAMSTrans: patch_score must be 'column_mean' or 'cls_row', got {patch_score!r}")
        if cls_layout not in ("per_scale", "all"):
            raise ValueError(f"RAMSTrans: cls_layout must be 'per_scale' or 'all', got {cls_layout!r}")
        etas = [float(eta)] * (num_scales - 1) if isinstance(eta, int | float) else [float(e) for e in eta]
        if len(etas) == 1 and num_scales > 2:
            etas = etas * (num_scales - 1)
        if len(etas) != num_scales - 1 and num_scales > 1:
            raise ValueError(f"RAMSTrans: eta needs one value per scale transition ({num_scales - 1}), got {etas}")
        self.num_scales, self.etas = num_scales, etas
        self.patch_score, self.cls_layout, self.official_box_shift = patch_score, cls_layout, official_box_shift
        self.img_size = img_size
        # ViT-pytorch's "hidden dropout" (embeddings + MLP) = timm pos_drop + proj_drop; its attention output
        # projection uses the attention dropout rate, as in the official code (§1).
        self.vit = ViTBackbone(backbone, img_size=img_size, patch_size=patch_size, pretrained=pretrained,
                               drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                               pos_drop_rate=hidden_dropout, proj_drop_rate=hidden_dropout,
                               attn_proj_drop_rate=attn_drop_rate, **(backbone_kwargs or {}))
        m = self.vit.model
        if m.cls_token is None or m.reg_token is not None or m.no_embed_class:
            raise ValueError(f"RAMSTrans: backbone {backbone!r} must have one CLS token with a position slot")
        # Per-scale CLS tokens and their position slots, all copies of the (pretrained) CLS (§1).
        self.cls_tokens = nn.Parameter(m.cls_token.detach().clone().repeat(num_scales, 1, 1))      # [S, 1, D]
        self.cls_pos = nn.Parameter(m.pos_embed.detach()[:, :1].clone().repeat(num_scales, 1, 1))  # [S, 1, D]
        m.cls_token.requires_grad_(False)  # replaced by cls_tokens (kept for state-dict compatibility)
        self.head = nn.Linear(self.vit.embed_dim, num_classes)  # `part_head`, shared by all scales

    @property
    def grid(self) -> tuple[int, int]:
        return self.vit.grid_size

    def _encode_scale(self, x: Tensor, k: int, need_attention: bool) -> tuple[Tensor, list[Tensor] | None, int]:
        """One scale: ``[CLS(s), patches]`` through the shared encoder; returns (CLS_k output, attentions, P)."""
        patches = self.vit.patch_tokens(x)
        cls = self.cls_tokens + self.cls_pos                                   # [S, 1, D]
        if self.cls_layout == "all":
            prefix, read = cls.view(1, self.num_scales, -1), k
        else:
            prefix, read = cls[k].view(1, 1, -1), 0
        tokens = torch.cat([prefix.expand(x.shape[0], -1, -1), patches], 1)
        out, attn = self.vit.encode(tokens, return_attention=need_attention)
        return out[:, read], attn, prefix.shape[1]

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        """``x [B, 3, S, S]`` -> dict of per-scale lists: ``logits`` (S tensors [B, C]), ``inputs`` (each scale's
        image), and per transition ``boxes`` (inclusive pixels in the previous scale's image), ``found`` and
        ``score_maps`` (normalised DPPM map [B, gh, gw])."""
        if x.ndim != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"RAMSTrans: expected images [B, 3, {self.img_size}, {self.img_size}], "
                             f"got {tuple(x.shape)}")
        out: dict[str, list[Tensor]] = {"logits": [], "inputs": [], "boxes": [], "found": [], "score_maps": []}
        for k in range(self.num_scales):
            last = k == self.num_scales - 1
            feat, attn, n_prefix = self._encode_scale(x, k, need_attention=not last)
            out["logits"].append(self.head(feat))
            out["inputs"].append(x)
            if last:
                break
            with torch.no_grad():  # DPPM is a hard, non-differentiable selection (§3.7)
                scores = patch_scores(attn, n_prefix, self.patch_score,
                                      cls_index=k if self.cls_layout == "all" else 0)
                boxes, found, g = dppm_boxes(scores, self.grid, self.vit.patch_size, self.etas[k],
                                             self.official_box_shift)
                x = crop_and_resize(x, boxes, self.img_size, detach=True)   # amplified, detached (3.5)
            out["boxes"].append(boxes)
            out["found"].append(found)
            out["score_maps"].append(g)
        return out
