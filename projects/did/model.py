"""DiD (Hu et al., ICME 2022): diverse instance discovery on a pure ViT, as a plain ``nn.Module``.

Paper module -> code (§2-§5 of docs/papers/did.md):

* semantic category-aware module (SCM): a 1x1 classifier over the final patch tokens gives class maps
  ``S [B, C, h, w]``; the global logits are their spatial mean (:meth:`DiD.class_maps`);
* spatial relationship-aware module (SRM): attention rollout over all layers, CLS row over the patches
  (:func:`cls_rollout`, equal to ``shared.attention.attention_rollout(...)[:, 0]``);
* re-constraint: rollout map times the detached class maps -> instance-aware maps (:func:`instance_maps`);
* WSOL-style local feature extraction: top-N predicted classes -> upsample, min-max, threshold, largest
  connected component, box (:func:`instance_boxes`) -> crop + resize of the input (``crop_and_resize``) ->
  the same ViT + classifier on the N local views -> class-wise max over the views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.attention import RegionMeasure, attention_rollout_row, crop_and_resize, mask_to_box
from shared.backbones.vit import ViTBackbone

Reconstraint = Literal["product", "sum"]
EmptyBox = Literal["full", "official"]
ClassMapActivation = Literal["none", "relu", "sigmoid"]

CPU_HEAP_MAX_BYTES = 32 * 2**20
"""glibc's mmap threshold ceiling on 64-bit: a larger CPU tensor is a fresh ``mmap`` whose every 4 KiB page faults
(and is zeroed by the kernel) on first write, each time it is allocated."""


# ----------------------------------------------------------------------------------------------------------
# SRM: class-agnostic rollout map (CLS row only)
# ----------------------------------------------------------------------------------------------------------
def cls_rollout(attentions: Sequence[Tensor], num_prefix_tokens: int = 1) -> Tensor:
    """CLS row of the attention rollout over the patch columns: ``[B, N]`` (§3).

    ``attention_rollout(attentions)[:, 0, P:]`` computed as ``e_0^T Â_L ... Â_1`` by the shared
    :func:`~shared.attention.attention_rollout_row` (no T x T x T products at 785 tokens).
    """
    if not attentions:
        raise ValueError("cls_rollout: got an empty list of attention maps")
    cls_row = torch.zeros(attentions[0].shape[-1], device=attentions[0].device)
    cls_row[0] = 1.0
    return attention_rollout_row(attentions, cls_row)[:, num_prefix_tokens:]


# ----------------------------------------------------------------------------------------------------------
# Re-constraint and the map -> box step
# ----------------------------------------------------------------------------------------------------------
def instance_maps(rollout_map: Tensor, class_maps: Tensor, mode: Reconstraint = "product",
                  activation: ClassMapActivation = "none") -> Tensor:
    """Instance-aware maps ``M [B, C, h, w]`` = rollout ``[B, h, w]`` (x or +) detached class maps (§4).

    ``product`` is the official (TS-CAM style) re-constraint; ``sum`` is the commented-out alternative.
    ``activation`` is applied to the class maps first: ``none`` (official: the raw logits maps), ``relu`` (only
    positive evidence, as CAMs are usually rectified) or ``sigmoid`` (per-location class probabilities).
    """
    a = rollout_map[:, None].to(class_maps.dtype)
    s = class_maps.detach()
    if activation == "relu":
        s = s.relu()
    elif activation == "sigmoid":
        s = s.sigmoid()
    elif activation != "none":
        raise ValueError(f"class_map_activation must be 'none', 'relu' or 'sigmoid', got {activation!r}")
    if mode == "product":
        return a * s
    if mode == "sum":
        return a + s
    raise ValueError(f"reconstraint must be 'product' or 'sum', got {mode!r}")


def threshold_maps(maps: Tensor, size: tuple[int, int], threshold: float = 0.6, quantize: bool = True) -> Tensor:
    """Upsample ``[K, h, w]`` maps to ``size`` and keep the pixels above ``threshold`` of the min-max range.

    Official steps (§5.2-5.3): ``cv2.resize`` (bilinear, half-pixel centres = ``align_corners=False``),
    min-max to [0, 1], ``uint8(255 m)`` and ``THRESH_TOZERO`` at ``int(0.6 * 255) = 153``, i.e. a pixel stays
    when ``floor(255 m) > 153``; ``quantize=False`` uses ``m > threshold`` instead. A constant map (the
    official code divides by zero there) gives an empty mask, which the caller turns into the fallback box.
    """
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin((1, 2), keepdim=True)
    span = up.amax((1, 2), keepdim=True) - lo
    norm = (up - lo) / span.clamp_min(1e-12)
    mask = (norm * 255).floor() > int(threshold * 255) if quantize else norm > threshold
    return mask & (span > 1e-12)


def instance_boxes(maps: Tensor, image_size: tuple[int, int], threshold: float = 0.6,
                   resolution: tuple[int, int] | None = None, quantize: bool = True,
                   empty_box: EmptyBox = "full", measure: RegionMeasure = "contour_area") -> tuple[Tensor, Tensor]:
    """Boxes of the largest 8-connected above-threshold region of each map, in input pixels.

    ``maps [K, h, w]`` -> ``(boxes [K, 4] int64 INCLUSIVE (x0, y0, x1, y1), found [K] bool)``, ready for
    ``crop_and_resize``. The official code thresholds at the input size (``resolution=None``); a smaller
    ``resolution`` thresholds there and scales the box out to the input size (the cells' outer pixel edges),
    much cheaper and within one cell of the full-size box. Components are 8-connected; ``measure`` picks the
    region (``shared.attention.mask_to_box``): ``contour_area`` is the official rule (largest ``cv2.contourArea``,
    ties to the last region in raster order), ``pixels`` the largest pixel count (ties to the first); they differ
    on near-equal regions and thin bands (a 1-px band has contour area 0). No region: ``empty_box="full"`` uses
    the whole image; ``"official"`` the code's degenerate ``(0, 0, 1, 1)`` box, i.e. a 1-pixel crop.
    """
    h_img, w_img = image_size
    res = tuple(resolution) if resolution is not None else (h_img, w_img)
    mask = threshold_maps(maps, res, threshold, quantize)
    cells, found = mask_to_box(mask, measure)                              # exclusive, in ``res`` cells
    if res != (h_img, w_img):
        sx, sy = w_img / res[1], h_img / res[0]
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float64, device=cells.device)
        px = cells.double() * scale
        px = torch.cat([px[:, :2].floor(), px[:, 2:].ceil()], 1).long()
        cells = torch.minimum(px, torch.tensor([w_img, h_img, w_img, h_img], device=cells.device))
    boxes = cells - cells.new_tensor([0, 0, 1, 1])                          # inclusive last pixel
    if empty_box == "official":
        boxes = torch.where(found[:, None], boxes, torch.zeros_like(boxes))
    elif empty_box != "full":
        raise ValueError(f"empty_box must be 'full' or 'official', got {empty_box!r}")
    return boxes, found


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------
class DiD(nn.Module):
    """ViT + SCM + SRM + re-constraint + N local views, all through one shared backbone and classifier.

    ``forward(x)`` returns a dict: ``global``, ``local`` (None without local views) and ``fused``
    (class-wise max of the two, MCAR convention) logits ``[B, C]``; with local views also ``class_maps``
    ``[B, C, h, w]``, ``rollout`` ``[B, h, w]``, ``instance_maps`` ``[B, C, h, w]``, ``top_classes`` ``[B, N]``,
    ``boxes`` ``[B, N, 4]`` (inclusive input pixels), ``found`` ``[B, N]`` and ``views`` ``[B, N, 3, H, W]``.
    ``local_views=False`` is the paper's ViT baseline (GAP over patch tokens + 1x1 classifier).
    ``class_map_activation`` acts on the class maps before the re-constraint (``none``: the official raw maps).
    """

    def __init__(self, num_classes: int, backbone: str = "vit_base_patch16_224", img_size: int = 448,
                 patch_size: int | None = None, embed_dim: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, pretrained: bool | str = False, hidden_dropout: float = 0.1,
                 attn_dropout: float = 0.0, drop_path_rate: float = 0.0, reset_final_norm: bool = True,
                 local_views: bool = True, top_n: int = 4, threshold: float = 0.6,
                 reconstraint: Reconstraint = "product", box_resolution: int | None = None,
                 quantize_threshold: bool = True, empty_box: EmptyBox = "full",
                 region_measure: RegionMeasure = "contour_area",
                 class_map_activation: ClassMapActivation = "none") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if local_views and not 1 <= top_n <= num_classes:
            raise ValueError(f"top_n must be in [1, num_classes={num_classes}], got {top_n}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if reconstraint not in ("product", "sum"):
            raise ValueError(f"reconstraint must be 'product' or 'sum', got {reconstraint!r}")
        if empty_box not in ("full", "official"):
            raise ValueError(f"empty_box must be 'full' or 'official', got {empty_box!r}")
        if region_measure not in ("pixels", "contour_area"):
            raise ValueError(f"region_measure must be 'pixels' or 'contour_area', got {region_measure!r}")
        if class_map_activation not in ("none", "relu", "sigmoid"):
            raise ValueError(f"class_map_activation must be 'none', 'relu' or 'sigmoid', got {class_map_activation!r}")
        arch = {k: v for k, v in dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads).items() if v is not None}
        self.backbone = ViTBackbone(backbone, pretrained=pretrained, img_size=img_size, patch_size=patch_size,
                                    pos_drop_rate=hidden_dropout, proj_drop_rate=hidden_dropout,
                                    attn_proj_drop_rate=attn_dropout,  # ViT-pytorch: attention rate there
                                    attn_drop_rate=attn_dropout, drop_path_rate=drop_path_rate, **arch)
        if pretrained and reset_final_norm:
            # Official quirk (§1): the final encoder LayerNorm is not loaded from the checkpoint.
            self.backbone.model.norm.reset_parameters()
        self.classifier = nn.Linear(self.backbone.embed_dim, num_classes)  # = Conv2d(D, C, 1) on the token grid
        self.num_classes = num_classes
        self.img_size = img_size
        self.local_views = local_views
        self.top_n = top_n
        self.threshold = threshold
        self.reconstraint = reconstraint
        self.box_resolution = box_resolution
        self.quantize_threshold = quantize_threshold
        self.empty_box = empty_box
        self.region_measure = region_measure
        self.class_map_activation = class_map_activation

    def class_maps(self, tokens: Tensor) -> Tensor:
        """SCM: 1x1 classifier over the patch tokens -> ``[B, C, h, w]`` (§2)."""
        gh, gw = self.backbone.grid_size
        patches = tokens[:, self.backbone.num_prefix_tokens:]
        return self.classifier(patches).transpose(1, 2).reshape(tokens.shape[0], self.num_classes, gh, gw)

    def pooled_logits(self, tokens: Tensor) -> Tensor:
        """GAP over the patch tokens then the classifier (= the mean of the class maps), ``[B, C]``."""
        return self.classifier(tokens[:, self.backbone.num_prefix_tokens:].mean(1))

    def views_per_call(self, views: Tensor, batch: int) -> int:
        """How many of the ``N * B`` local views ``[N * B, 3, H, W]`` one backbone call takes: all of them, except on
        a CPU when the widest activation of that call (the MLP's hidden tokens) would pass
        :data:`CPU_HEAP_MAX_BYTES`; then ``batch`` (= B, each call shaped like the global pass). At ViT-B/16 448
        the one call's [N * B, 785, 3072] activations cost about a million page faults per training step, the DiD
        step's whole extra CPU time over (1 + N) plain-ViT steps; small inputs (the toy task) stay one call."""
        if views.device.type != "cpu":
            return len(views)
        tokens = self.backbone.num_prefix_tokens + self.backbone.num_patches
        hidden = self.backbone.model.blocks[0].mlp.fc1.out_features
        return len(views) if len(views) * tokens * hidden * views.element_size() <= CPU_HEAP_MAX_BYTES else batch

    @torch.no_grad()
    def discover(self, x: Tensor, s: Tensor, global_logits: Tensor, attentions: Sequence[Tensor]
                 ) -> dict[str, Tensor]:
        """SRM + re-constraint + boxes + local views (no gradient anywhere, as in the official code)."""
        b, _, h_img, w_img = x.shape
        gh, gw = self.backbone.grid_size
        rollout = cls_rollout(attentions, self.backbone.num_prefix_tokens).view(b, gh, gw)
        maps = instance_maps(rollout, s, self.reconstraint, self.class_map_activation)
        top = global_logits.topk(self.top_n, dim=1).indices               # predicted classes, never the labels
        chosen = maps.gather(1, top[:, :, None, None].expand(-1, -1, gh, gw))
        res = None if self.box_resolution is None else (self.box_resolution, self.box_resolution)
        boxes, found = instance_boxes(chosen.flatten(0, 1), (h_img, w_img), self.threshold, res,
                                      self.quantize_threshold, self.empty_box, self.region_measure)
        repeated = x.detach()[:, None].expand(-1, self.top_n, -1, -1, -1).flatten(0, 1)
        views = crop_and_resize(repeated, boxes, (h_img, w_img), detach=True)
        return {"rollout": rollout, "instance_maps": maps, "top_classes": top,
                "boxes": boxes.view(b, self.top_n, 4), "found": found.view(b, self.top_n),
                "views": views.view(b, self.top_n, *views.shape[1:])}

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"DiD expects images [B, 3, H, W], got {tuple(x.shape)}")
        tokens, attentions = self.backbone(x, return_attention=self.local_views)
        s = self.class_maps(tokens)
        global_logits = s.mean((2, 3))
        if not self.local_views:
            return {"global": global_logits, "local": None, "fused": global_logits, "class_maps": s}
        out = self.discover(x, s, global_logits.detach(), attentions)
        b, n = out["top_classes"].shape
        views = out["views"].flatten(0, 1)
        per_call = self.views_per_call(views, b)
        if per_call >= len(views):
            local_tokens, _ = self.backbone(views)                        # one call on the N*B views
        else:
            local_tokens = torch.cat([self.backbone(v)[0] for v in views.split(per_call)])
        local_logits = self.pooled_logits(local_tokens).view(b, n, -1).amax(1)
        fused = torch.maximum(global_logits, local_logits)
        return {"global": global_logits, "local": local_logits, "fused": fused, "class_maps": s, **out}
