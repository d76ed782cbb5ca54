"""DiD bench rows (``make bench BENCH=did``).

* training-step overhead: one DiD step (global view with attention capture + rollout + boxes + N local views)
  over (1 + N) plain ViT-baseline steps at the same size (the N local views are N extra images);
* the discovery step (rollout -> instance maps -> top-N -> threshold -> largest region -> box -> crops) batched
  vs a per-sample loop like the official code's (full 785x785 rollout per image, per-map resize / threshold /
  connected components, per-crop resize).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from shared.bench import BenchCase, register
from shared.bench.registry import device_target

BOX_TARGET = device_target(gpu=10.0, cpu=1.0)   # the box steps vs a per-sample loop (issue 18)


def train_step_case(cfg: dict, batch: int, name: str, device: str = "cpu") -> BenchCase:
    """One DiD step (global + top-N local views) vs (1 + N) ViT-baseline steps with the same weights."""
    from projects.did.model import DiD

    torch.manual_seed(0)
    did = DiD(**cfg, local_views=True)
    base = DiD(**cfg, local_views=False)
    base.load_state_dict(did.state_dict())
    did, base = did.to(device), base.to(device)
    n = did.top_n
    size = cfg["img_size"]
    x = torch.randn(batch, 3, size, size).to(device)
    y = (torch.rand(batch, cfg["num_classes"]) < 0.3).float().to(device)
    opts = {m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for m in (did, base)}

    def step(model: DiD) -> None:
        with torch.inference_mode(False), torch.enable_grad():   # the bench timer runs under inference_mode
            out = model(x)
            loss = F.binary_cross_entropy_with_logits(out["global"], y)
            if out["local"] is not None:
                loss = loss + F.binary_cross_entropy_with_logits(out["local"], y)
            opts[model].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opts[model].step()

    def baseline() -> None:
        for _ in range(1 + n):
            step(base)

    return BenchCase(method=lambda: step(did), baseline=baseline,
                     details={"setting": name, "batch": batch, "top_n": n, "img_size": size,
                              "ratio_meaning": "DiD step / (1 + N) ViT-baseline steps"})


@register("did: train step / (1+N) ViT steps (toy, 64px, B=16)", target=1.10, kind="overhead", repeats=7,
          warmup=2)
def _toy_step() -> BenchCase:
    cfg = dict(num_classes=10, backbone="vit_tiny_patch16_224", img_size=64, patch_size=8, embed_dim=64, depth=4,
               num_heads=2, hidden_dropout=0.0)
    return train_step_case(cfg, 16, "toy")


COCO_VITB_448 = dict(num_classes=80, backbone="vit_base_patch16_224", img_size=448, hidden_dropout=0.1)
"""configs/coco.yaml's model (random init): ViT-B/16 at 448, 80 classes, top-4 local views."""


@register("did: train step / (1+N) ViT steps (ViT-B/16 448, B=1)", target=1.10, kind="overhead", repeats=3,
          warmup=1)
def _vitb_step() -> BenchCase:
    return train_step_case(COCO_VITB_448, 1, "ViT-B/16 448")


# ----------------------------------------------------------------------------------------------------------
# Discovery step: batched vs the official per-sample loop
# ----------------------------------------------------------------------------------------------------------
def official_style_discover(x: torch.Tensor, attentions: list[torch.Tensor], s: torch.Tensor, logits: torch.Tensor,
                            top_n: int, threshold: float = 0.6) -> torch.Tensor:
    """Per image: full rollout (T x T products), then per top class: resize, min-max, uint8 threshold,
    largest 8-connected region (scipy, in place of cv2 contours), box, crop + resize (did.md 3, 5)."""
    b, _, h_img, w_img = x.shape
    gh, gw = s.shape[-2:]
    views = []
    for i in range(b):
        joint = None
        for a in attentions:
            a = a[i] + torch.eye(a.shape[-1])
            a = a / a.sum(-1, keepdim=True)
            joint = a if joint is None else a @ joint
        cam = joint[0, 1:].view(gh, gw)
        for c in logits[i].topk(top_n).indices.tolist():
            m = F.interpolate((cam * s[i, c])[None, None], size=(h_img, w_img), mode="bilinear",
                              align_corners=False)[0, 0].numpy()
            m = (m - m.min()) / max(m.max() - m.min(), 1e-12)
            mask = (m * 255).astype(np.uint8) > int(threshold * 255)
            lab, num = ndi.label(mask, structure=np.ones((3, 3)))
            if num:
                area = np.bincount(lab.ravel())
                area[0] = 0
                ys, xs = np.nonzero(lab == area.argmax())
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            else:
                x0, y0, x1, y1 = 0, 0, w_img, h_img
            views.append(F.interpolate(x[i:i + 1, :, y0:y1, x0:x1], size=(h_img, w_img), mode="bilinear",
                                       align_corners=True))
    return torch.cat(views)


def _discover_case(batch: int, box_resolution: int | None) -> BenchCase:
    from projects.did.model import DiD

    torch.manual_seed(0)
    model = DiD(80, "vit_tiny_patch16_224", img_size=448, patch_size=16, embed_dim=32, depth=12, num_heads=2,
                box_resolution=box_resolution).eval()
    t = 785
    gen = torch.Generator().manual_seed(0)
    attn = [torch.softmax(4 * torch.randn(batch, t, t, generator=gen), -1) for _ in range(12)]
    s = F.avg_pool2d(torch.randn(batch, 80, 28, 28, generator=gen), 3, 1, 1)
    logits = s.mean((2, 3))
    x = torch.randn(batch, 3, 448, 448, generator=gen)
    return BenchCase(method=lambda: model.discover(x, s, logits, attn),
                     baseline=lambda: official_style_discover(x, attn, s, logits, model.top_n),
                     details={"batch": batch, "top_n": model.top_n, "img_size": 448, "tokens": t,
                              "box_resolution": box_resolution or 448})


@register("did: discovery batched vs per-sample loop (B=8, 448, full-res boxes)", target=BOX_TARGET, kind="speedup",
          repeats=5, warmup=1)
def _discover_full() -> BenchCase:
    return _discover_case(8, None)


@register("did: discovery batched vs per-sample loop (B=8, 448, boxes at 112)", target=BOX_TARGET, kind="speedup",
          repeats=5, warmup=1)
def _discover_low() -> BenchCase:
    return _discover_case(8, 112)
