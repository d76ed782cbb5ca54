"""DiD bench rows (``make bench BENCH=did``).

* training-step overhead: one DiD step (global view with attention capture + rollout + boxes + N local views)
  over (1 + N) plain ViT-baseline steps at the same size (the N local views are N extra images);
* the discovery step (rollout -> instance maps -> top-N -> threshold -> largest region -> box -> crops) batched
  vs a per-sample loop like the official code's (full 785x785 rollout per image, per-map resize / threshold /
  connected components, per-crop resize).

``pipeline_loader`` (the COCO training DataLoader on COCO-layout files) serves ``shared/bench/pipeline.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from projects.did.data import DiDData
from projects.did.model import DiD
from projects.did.module import DiDModule, Loss, Optimization
from shared.bench import BenchCase, GpuRow, PipelineRow, register, register_gpu_row, register_pipeline_row, switches
from shared.bench.gpu import TINY_VIT
from shared.bench.photos import write_photos
from shared.bench.pipeline import epoch_batches, paper_data
from shared.bench.registry import device_target
from shared.bench.steps import paper_config, train_step

BOX_TARGET = device_target(gpu=10.0, cpu=1.0)   # the box steps vs a per-sample loop
CONFIGS = Path(__file__).parent / "configs"


def train_step_case(config: str | Path, batch: int, device: str = "cpu", switch: str | None = None,
                    **net: object) -> BenchCase:
    """The training step of ``config`` (its DiD with N local views, its loss, optimizer and gradient clip; random
    weights; ``net`` overrides model arguments) vs (1 + N) steps of the same module with ``local_views: false`` (the
    ViT baseline, same weights; the N local views are N extra images), ``batch`` random images with random
    labels. Both run ``DiDModule.training_step`` (``shared.bench.steps``).

    ``switch`` (``shared/bench/switches.py``: ``fused`` or ``compile``): instead the DiD step with that switch vs
    the same step without it (twins with the same weights, no dropout). Each step returns its loss."""
    switches.check(switch, ("fused", "compile"))
    cfg = paper_config(config)
    m, clip = cfg["model"], cfg["trainer"].get("gradient_clip_val")
    net_args = {**m["net"]["init_args"], "pretrained": False, **net}
    loss, optim = Loss(**m.get("loss", {})), Optimization(**m.get("optim", {}))
    torch.manual_seed(0)

    def module(local_views: bool) -> DiDModule:
        return DiDModule(DiD(**{**net_args, "local_views": local_views}), loss, optim)

    did = module(True)
    if switch is None:
        base = module(False)
        base.load_state_dict(did.state_dict())
    else:
        base = switches.plain_twin(did)
    did, base = did.to(device), base.to(device)
    if switch == "compile":
        switches.compile_method(did.net.backbone, "encode")
    size, classes, n = net_args["img_size"], net_args["num_classes"], did.net.top_n
    x = torch.randn(batch, 3, size, size).to(device)
    t = (torch.rand(batch, classes) < 0.3).float().to(device)
    steps = {which: train_step(which, (x, t), optim.build(which.parameters(), **switches.optimizer_kwargs(
        switch if which is did else None)), clip) for which in (did, base)}

    def vit_steps() -> None:
        for _ in range(1 + n):
            steps[base]()

    return BenchCase(method=steps[did], baseline=vit_steps if switch is None else steps[base],
                     details={"config": Path(config).name, "backbone": net_args["backbone"], "img_size": size,
                              "batch": batch, "top_n": n, "box_resolution": net_args.get("box_resolution"),
                              "region_measure": net_args.get("region_measure", "contour_area"),
                              "optimizer": optim.name, "gradient_clip": clip, "device": device,
                              "threads": torch.get_num_threads(),
                              "ratio_meaning": "DiD step / (1 + N) ViT-baseline steps" if switch is None
                              else f"DiD step with / without {switch}", **({"switch": switch} if switch else {})})


@register("did: train step / (1+N) ViT steps (toy, 64px, B=16)", target=1.10, kind="overhead", repeats=7,
          warmup=2)
def _toy_step() -> BenchCase:
    return train_step_case(CONFIGS / "toy.yaml", 16)


@register("did: train step / (1+N) ViT steps (ViT-B/16 448, B=1)", target=1.10, kind="overhead", repeats=3,
          warmup=1)
def _vitb_step() -> BenchCase:
    return train_step_case(CONFIGS / "coco.yaml", 1)


# ----------------------------------------------------------------------------------------------------------
# Discovery step: batched vs the official per-sample loop
# ----------------------------------------------------------------------------------------------------------
def official_style_discover(x: torch.Tensor, attentions: list[torch.Tensor], s: torch.Tensor, logits: torch.Tensor,
                            top_n: int, threshold: float = 0.6) -> torch.Tensor:
    """Per image: full rollout (T x T products), then per top class: resize, min-max, uint8 threshold,
    largest 8-connected region (scipy, in place of cv2 contours), box, crop + resize (§3, §5)."""
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


# ----------------------------------------------------------------------------------------------------------
# Input pipeline (shared/bench/pipeline.py): the training DataLoader of configs/coco.yaml + one_gpu.yaml
# ----------------------------------------------------------------------------------------------------------
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
"""COCO's 80 category ids (1..90 with 10 gaps)."""


def write_bench_coco(root, samples: int, files: int, size: tuple[int, int] = (640, 480), val: int = 2):
    """A COCO 2014 folder (``annotations/instances_{train,val}2014.json`` with 1-3 boxes an image over the 80
    categories, ``{train,val}2014/COCO_<split>2014_<id>.jpg``): ``samples`` training images cycling over ``files``
    photo-like JPEGs of ``size`` (COCO's photos are about 640x480), ``val`` validation images."""
    root = Path(root)
    w, h = size
    categories = [{"id": c, "name": f"category_{c}", "supercategory": "thing"} for c in COCO_CATEGORY_IDS]
    for split, n in (("train", samples), ("val", val)):
        names = [f"COCO_{split}2014_{k:012d}.jpg" for k in range(min(files, n))]
        write_photos(root / f"{split}2014", names, size, seed=len(split))
        images = [{"id": i, "file_name": names[i % len(names)], "width": w, "height": h} for i in range(n)]
        anns = [{"id": len(images) * j + i + 1, "image_id": i, "iscrowd": 0, "area": w * h / 16,
                 "category_id": COCO_CATEGORY_IDS[(7 * i + 13 * j) % 80], "bbox": [w / 8, h / 8, w / 4, h / 4]}
                for i in range(n) for j in range(1 + i % 3)]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return root


def pipeline_loader(root, workers: int, files: int, tiny: bool = False):
    """The training DataLoader of configs/coco.yaml + one_gpu.yaml (resize 512 -> multi-scale crop -> 448 + flip,
    batch 8 per GPU) over a COCO folder written under ``root``; ``tiny``: 64x48 JPEGs, 64 px, batch 2."""
    data = paper_data(CONFIGS / "coco.yaml", CONFIGS / "one_gpu.yaml")
    size = (640, 480)
    if tiny:
        data.update(img_size=64, batch_size=2)
        size = (64, 48)
    samples = data["batch_size"] * epoch_batches(data["batch_size"], workers, tiny)
    write_bench_coco(root, samples, min(files, samples), size)
    dm = DiDData(**{**data, "root": str(root), "num_workers": workers})
    dm.setup("fit")
    resize = dm.hparams.train_resize or round(data["img_size"] * 512 / 448)
    return dm.train_dataloader(), {"layout": "COCO 2014", "image_files": f"{size[0]}x{size[1]} JPEG q90",
                                   "distinct_files": min(files, samples), "samples": samples,
                                   "transforms": f"resize {resize} -> multi-scale crop -> {data['img_size']} + flip"}


# ----------------------------------------------------------------------------------------------------------
# make bench-gpu: the paper-size step, and its loader next to it
# ----------------------------------------------------------------------------------------------------------
def gpu_step(device: str, tiny: bool, batch: int | None = None, switch: str | None = None
             ) -> tuple[BenchCase, int, int]:
    if tiny:
        arch = {k: v for k, v in TINY_VIT.items() if k != "mlp_ratio"}
        case = train_step_case(CONFIGS / "coco.yaml", batch or 2, device, switch, num_classes=10,
                               backbone="vit_tiny_patch16_224", img_size=32, patch_size=8, hidden_dropout=0.0, **arch)
    else:
        case = train_step_case(CONFIGS / "coco.yaml", batch or 8, device, switch)
    b, n = case.details["batch"], case.details["top_n"]
    return case, b, b if switch else (1 + n) * b  # the baseline is (1 + N) plain-ViT steps (a switch: its twin)


GPU_STEP = register_gpu_row(GpuRow(
    "did: train step / (1+N) ViT steps",
    "configs/coco.yaml + one_gpu.yaml: ViT-B/16, 448x448, batch 8 per GPU, top-4 local views, SGD", gpu_step,
    switches=("fused", "compile")))
register_pipeline_row(PipelineRow(
    "pipeline/did: COCO loader vs train step",
    "configs/coco.yaml + one_gpu.yaml: 640x480 JPEG, resize 512 -> multi-scale crop -> 448 + flip, batch 8 per GPU",
    pipeline_loader, GPU_STEP.name))
