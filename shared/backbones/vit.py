"""A timm ViT exposed in pieces, with an attention-capturing forward for RAMS-Trans (DPPM) and DiD (rollout).

Both papers run Google's ViT-B (TransFG / ViT-pytorch port) and read each layer's post-softmax attention
probabilities, taken before attention dropout. Their checkpoints are 224-px ImageNet-21k ``.npz`` files whose
position grid is resized with ``scipy.ndimage.zoom(order=1)``, which is bilinear with corners aligned
(``align_corners=True``); :func:`adapt_vit_state_dict` does the same.
"""

from __future__ import annotations

import copy
import logging
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Attention, resample_abs_pos_embed, resample_patch_embed
from timm.models._manipulate import checkpoint_seq
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from shared.backbones.factory import create_timm_model
from shared.backbones.weights import (
    Pretrained,
    load_into,
    read_state_dict,
    resolve_pretrained,
    weights_file_in,
)

logger = logging.getLogger(__name__)


class ViTBackbone(nn.Module):
    """A timm ViT (no head) whose token pipeline is exposed for custom sequences and attention capture.

    ``forward(x)`` equals timm's ``forward_features(x)``; ``forward(x, return_attention=True)`` also returns
    each layer's attention probabilities averaged over heads ([B, T, T], rows sum to 1).
    """

    def __init__(self, name: str = "vit_base_patch16_224", pretrained: Pretrained = False, img_size: int = 224,
                 patch_size: int | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_proj_drop_rate: float | None = None, **timm_kwargs) -> None:
        """``pos_drop_rate`` + ``proj_drop_rate`` = ViT-pytorch's "hidden dropout" (embeddings and MLP).

        timm applies ``proj_drop_rate`` after the attention output projection too; ViT-pytorch (the official
        code of RAMS-Trans and DiD) uses its ``attention_dropout_rate`` there. ``attn_proj_drop_rate`` sets
        that dropout on its own (None: timm's behaviour, ``proj_drop_rate``)."""
        super().__init__()
        kwargs = dict(pretrained=False, num_classes=0, img_size=img_size, drop_rate=drop_rate,
                      attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, pos_drop_rate=pos_drop_rate,
                      proj_drop_rate=proj_drop_rate, **timm_kwargs)
        if patch_size is not None:
            kwargs["patch_size"] = patch_size
        self.model: VisionTransformer = create_timm_model(name, "ViTBackbone", **kwargs)
        if not isinstance(self.model, VisionTransformer):
            raise ValueError(f"ViTBackbone: {name!r} is a {type(self.model).__name__}, not a timm VisionTransformer")
        m = self.model
        if attn_proj_drop_rate is not None:
            for block in m.blocks:
                block.attn.proj_drop = nn.Dropout(attn_proj_drop_rate)
        self.name = name
        self.embed_dim: int = m.embed_dim
        self.depth: int = len(m.blocks)
        self.num_heads: int = m.blocks[0].attn.num_heads
        ph, pw = m.patch_embed.patch_size
        if ph != pw:
            raise ValueError(f"ViTBackbone: non-square patches {ph}x{pw} are not supported")
        self.patch_size: int = ph
        self.grid_size: tuple[int, int] = tuple(m.patch_embed.grid_size)
        self.num_prefix_tokens: int = m.num_prefix_tokens
        self.num_patches: int = self.grid_size[0] * self.grid_size[1]
        self.has_class_token: bool = m.cls_token is not None
        # The capture path re-implements timm's plain pre-norm Block/Attention; other block types are refused.
        self._capturable = all(type(b) is Block and type(b.attn) is Attention for b in m.blocks)
        path = resolve_pretrained(pretrained, f"ViTBackbone({name})", timm_name=name)
        if path is not None:
            load_vit_weights(m, path, f"ViTBackbone({name})")

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus the patch part of the position embedding: [B, N, D] (no prefix tokens)."""
        m = self.model
        x = m.patch_embed(x)
        if m.pos_embed is not None:
            x = x + (m.pos_embed if m.no_embed_class else m.pos_embed[:, self.num_prefix_tokens:])
        return x

    def prefix_tokens_embedded(self) -> torch.Tensor:
        """The prefix tokens (CLS, then registers) plus their position embedding: [1, P, D]."""
        m = self.model
        parts = [t for t in (m.cls_token, m.reg_token) if t is not None]
        if not parts:
            return m.patch_embed.proj.weight.new_zeros(1, 0, self.embed_dim)
        prefix = torch.cat(parts, dim=1)
        if m.pos_embed is not None and not m.no_embed_class:
            prefix = prefix + m.pos_embed[:, :self.num_prefix_tokens]
        return prefix

    def cls_token_embedded(self) -> torch.Tensor:
        """The CLS token plus its position embedding: [1, 1, D] (RAMS-Trans copies it into cls1 and cls2)."""
        if not self.has_class_token:
            raise ValueError(f"ViTBackbone({self.name}) has no class token")
        return self.prefix_tokens_embedded()[:, :1]

    def encode(self, tokens: torch.Tensor, return_attention: bool = False
               ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Run an embedded sequence [B, T, D] through the encoder.

        Returns the tokens after the final norm and, with ``return_attention``, one [B, T, T] head-averaged
        post-softmax attention map per layer (else ``None``).
        """
        m = self.model
        x = m.norm_pre(m.patch_drop(m.pos_drop(tokens)))  # as in timm's _pos_embed / forward_features
        if not return_attention:
            if m.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint_seq(m.blocks, x)
            else:
                x = m.blocks(x)
            return m.norm(x), None
        if not self._capturable:
            raise NotImplementedError(f"ViTBackbone({self.name}): attention capture supports timm's plain "
                                      "Block/Attention only")
        checkpointing = m.grad_checkpointing and torch.is_grad_enabled()
        scratch = None
        if x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
            # CPU inference: one [B, H, T, T] buffer for every layer. Fresh allocations this large are mmapped
            # and page-faulted anew in each layer, which costs ~20% at ViT-B/16 448 (CUDA caches them anyway).
            scratch = x.new_empty(x.shape[0], self.num_heads, x.shape[1], x.shape[1])
        attentions = []
        for block in m.blocks:
            if checkpointing:  # recompute in backward: keeps [B, H, T, T] per layer out of memory
                x, attn = checkpoint(block_with_attention, block, x, use_reentrant=False)
            else:
                x, attn = block_with_attention(block, x, scratch)
            attentions.append(attn)
        return m.norm(x), attentions

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """timm's standard sequence (prefix + patches) through :meth:`encode`; tokens are [B, P + N, D]."""
        patches = self.patch_tokens(x)
        prefix = self.prefix_tokens_embedded()
        if prefix.shape[1]:
            patches = torch.cat([prefix.expand(x.shape[0], -1, -1), patches], dim=1)
        return self.encode(patches, return_attention)


def block_with_attention(block: Block, x: torch.Tensor, scratch: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One timm ``Block`` that also returns its head-mean attention probabilities ``[B, T, T]``.

    Same submodules and order as timm's ``Block.forward`` / ``Attention.forward``. Probabilities are read
    before ``attn_drop`` as in the papers and carry no gradient: both papers use them only for a
    non-differentiable box selection. Without autograd the output reuses the explicit probabilities (one
    ``Q K^T``); under autograd the output goes through fused SDPA (its cheap backward, no [B, H, T, T] kept for
    backward) and the probabilities are recomputed without gradient. ``scratch`` ([B, H, T, T]) receives the
    scores and then, in place, the probabilities.
    """
    a = block.attn
    B, T, _ = x.shape
    h = block.norm1(x)
    gate = a.gate(h).sigmoid() if a.gate is not None else None
    q, k, v = a.qkv(h).reshape(B, T, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = a.q_norm(q), a.k_norm(k)
    training_graph = torch.is_grad_enabled() and q.requires_grad
    with torch.no_grad():
        if scratch is None:
            probs = torch.matmul(q * a.scale, k.transpose(-2, -1)).softmax(dim=-1)
        else:
            probs = torch.softmax(torch.matmul(q * a.scale, k.transpose(-2, -1), out=scratch), -1, out=scratch)
        attn_mean = probs.mean(dim=1)
    if training_graph:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=a.attn_drop.p if a.training else 0.0)
    else:
        out = torch.matmul(a.attn_drop(probs), v)
    out = a.norm(out.transpose(1, 2).reshape(B, T, a.attn_dim))
    if gate is not None:
        out = out * gate
    out = a.proj_drop(a.proj(out))
    x = x + block.drop_path1(block.ls1(out))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, attn_mean


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Resize a [1, P + H*W, D] position table to ``new_grid``, keeping the P prefix entries.

    Bilinear with aligned corners = the papers' ``scipy.ndimage.zoom(order=1)`` over (gs, gs, D).
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot infer a square position grid from {n} patch positions")
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=[side, side],
                                  num_prefix_tokens=num_prefix_tokens, interpolation="bilinear",
                                  antialias=False, align_corners=True)


def adapt_vit_state_dict(state: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Resize the position table to the model's grid and the patch kernel to its patch size when they differ."""
    state = dict(state)
    pos = state.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape != model.pos_embed.shape:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        state["pos_embed"] = resize_pos_embed(pos, tuple(model.patch_embed.grid_size), prefix)
        logger.info("resized pos_embed %s -> %s", tuple(pos.shape), tuple(state["pos_embed"].shape))
    w = state.get("patch_embed.proj.weight")
    target = model.patch_embed.proj.weight
    if w is not None and w.shape[-2:] != target.shape[-2:]:
        # FlexiViT's pseudo-inverse resize (timm): the kernel keeps its response to resized patches.
        state["patch_embed.proj.weight"] = resample_patch_embed(w, list(target.shape[-2:]))
        logger.info("resampled patch_embed kernel %s -> %s", tuple(w.shape[-2:]), tuple(target.shape[-2:]))
    return state


def read_npz_state_dict(path: Path, model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Google JAX ``.npz`` -> a timm state dict at the checkpoint's own grid and patch size.

    timm's ``load_pretrained`` (``_load_weights``) converts into a twin model built at the checkpoint's native
    size; the caller then resizes like any other checkpoint, so every format gets the same (scipy-like) resize.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = npz.files
            kernel = next((k for k in keys if k.endswith("embedding/kernel") and "pos" not in k), None)
            pos_key = next((k for k in keys if k.endswith("pos_embedding")), None)
            if kernel is None or pos_key is None:
                raise KeyError("no embedding/kernel or pos_embedding")
            patch = int(npz[kernel].shape[0])
            n = int(np.prod(npz[pos_key].shape[:-1]))
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        side = math.isqrt(n - prefix)
        twin = copy.deepcopy(model)  # same architecture arguments, checkpoint-sized patch grid
        twin.set_input_size(img_size=(side * patch, side * patch), patch_size=(patch, patch))
        twin.load_pretrained(str(path))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # object arrays, truncated, ...
        reason = str(err).strip("'\"").split(". ")[0]  # numpy's own advice (allow_pickle) is not repeated
        raise ValueError(f"{path}: not a Google ViT .npz checkpoint of this architecture ({type(err).__name__}: "
                         f"{reason}); expected a complete .npz of plain arrays as released by "
                         "google-research/vision_transformer") from None
    return twin.state_dict()


def load_vit_weights(model: VisionTransformer, path: Path, what: str) -> None:
    """Load .safetensors / .pth / .bin / .npz (or a model folder) into ``model``, resizing where needed."""
    file = weights_file_in(path) if path.is_dir() else path
    state = read_npz_state_dict(file, model) if file.suffix == ".npz" else read_state_dict(file)
    load_into(model, adapt_vit_state_dict(state, model), what, classifier="head", source=file)


__all__ = ["ViTBackbone", "adapt_vit_state_dict", "block_with_attention", "load_vit_weights", "resize_pos_embed"]
