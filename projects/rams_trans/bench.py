"""Bench rows for RAMS-Trans (``make bench BENCH=rams_trans``).

* one RAMS-Trans training step (2 scales: global pass with attention capture, DPPM, crop, local pass, summed CE,
  backward, SGD step) over TWO training steps of the plain ViT (the same module with one scale, timm's fused
  attention) at the same input size: ViT-B/16 at 448 (batch 2, CPU) and the toy size. Target <= 1.10.
* DPPM (rollout scores + threshold + largest 8-connected component + crop-and-resize, batched) against a
  per-sample loop like the official code (per image: full T x T rollout product, column mean, scipy labelling,
  largest region, crop, F.interpolate). Target >= 10x.

``pipeline_loader`` (the CUB training DataLoader on CUB-layout files) serves ``shared/bench/pipeline.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from projects.rams_trans.data import FGVCDataModule
from projects.rams_trans.model import RAMSTrans, dppm_boxes, patch_scores
from projects.rams_trans.module import Optimization, RAMSTransModule
from shared.attention import crop_and_resize
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
    """The training step of ``config`` (its RAMS-Trans, 2 scales, its loss, optimizer and gradient clip; random
    weights; ``net`` overrides model arguments) vs two steps of the same module with one scale (the plain ViT,
    same weights), ``batch`` random images. Both run ``RAMSTransModule.training_step`` (``shared.bench.steps``).

    ``switch`` (``shared/bench/switches.py``: ``fused`` or ``compile``): instead the RAMS-Trans step with that
    switch vs the same step without it (twins with the same weights, no dropout). Each step returns its loss."""
    switches.check(switch, ("fused", "compile"))
    cfg = paper_config(config)
    m, clip = cfg["model"], cfg["trainer"].get("gradient_clip_val")
    net_args = {**m["net"]["init_args"], "pretrained": False, **net}
    optim = Optimization(**m.get("optim", {}))
    torch.manual_seed(0)

    def module(num_scales: int) -> RAMSTransModule:
        return RAMSTransModule(RAMSTrans(**{**net_args, "num_scales": num_scales}),
                               m.get("local_loss_weight", 1.0), m.get("report", "local"), optim)

    rams = module(2)
    if switch is None:
        base = module(1)
        base.load_state_dict({k: (v[:1] if k.endswith(("cls_tokens", "cls_pos")) else v)
                             for k, v in rams.state_dict().items()})
    else:
        base = switches.plain_twin(rams)
    rams, base = rams.to(device), base.to(device)
    if switch == "compile":
        switches.compile_method(rams.net.vit, "encode")
    # At random init the mask is often empty (whole-image fallback); the crop costs the same either way.
    size, classes = net_args["img_size"], net_args["num_classes"]
    x = torch.randn(batch, 3, size, size).to(device)
    y = torch.randint(0, classes, (batch,)).to(device)
    steps = {}
    for which in (rams, base):
        opt = optim.build([p for p in which.parameters() if p.requires_grad],
                          **switches.optimizer_kwargs(switch if which is rams else None))
        steps[which] = train_step(which, (x, y), opt, clip)

    def two_vit_steps() -> None:
        steps[base]()
        steps[base]()

    patch = rams.net.vit.patch_size
    return BenchCase(method=steps[rams], baseline=two_vit_steps if switch is None else steps[base],
                     details={"config": Path(config).name, "backbone": net_args["backbone"], "img_size": size,
                              "patch": patch, "batch": batch, "tokens": (size // patch) ** 2 + 1,
                              "optimizer": optim.name, "gradient_clip": clip, "device": device,
                              "threads": torch.get_num_threads(), **({"switch": switch} if switch else {})})


@register("rams_trans: train step / 2 ViT steps (ViT-B/16 448, batch 2, CPU)", target=1.10, kind="overhead",
          repeats=3, warmup=1)
def _vitb_row() -> BenchCase:
    return train_step_case(CONFIGS / "cub.yaml", 2)


@register("rams_trans: train step / 2 ViT steps (toy: 64 px, patch 8, 4x64, batch 32)", target=1.10,
          kind="overhead", repeats=10, warmup=2)
def _toy_row() -> BenchCase:
    return train_step_case(CONFIGS / "toy.yaml", 32)


def official_style_dppm(attentions, images, grid: int, patch: int, eta: float, num_prefix: int):
    """Per-sample loop in the manner of the official ``get_coordi_attention`` + crop (notes §2-3)."""
    crops = []
    s = images.shape[-1]
    for i in range(images.shape[0]):
        joint = None
        for a in attentions:                                 # [B, T, T] head-averaged
            aug = a[i] + torch.eye(a.shape[-1])
            aug = aug / aug.sum(-1, keepdim=True)
            joint = aug if joint is None else aug @ joint
        v = joint.mean(0)[num_prefix:]
        g = (v / v.max()).reshape(grid, grid).numpy()
        mask = g > eta * g.mean()
        lab, num = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
        if num == 0:
            y0, y1, x0, x1 = 0, s - 1, 0, s - 1
        else:
            area = np.bincount(lab.ravel())
            area[0] = 0
            rows, cols = np.nonzero(lab == area.argmax())
            y0, x0 = max(rows.min() * patch - 1, 0), max(cols.min() * patch - 1, 0)
            y1, x1 = (rows.max() + 1) * patch - 1, (cols.max() + 1) * patch - 1
        crop = images[i:i + 1, :, y0:y1 + 1, x0:x1 + 1]
        crops.append(F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=True))
    return torch.cat(crops).detach()


def _dppm_case(img_size: int, patch: int, batch: int, layers: int) -> BenchCase:
    grid = img_size // patch
    t = grid * grid + 1
    gen = torch.Generator().manual_seed(0)
    # Peaky softmax maps with a few favoured patches, so the threshold keeps a few blobs.
    bias = torch.zeros(batch, 1, t)
    bias[:, :, 1:] = 3.0 * torch.nn.functional.avg_pool2d(torch.rand(batch, 1, grid, grid, generator=gen), 3, 1, 1,
                                                           count_include_pad=False).flatten(1).unsqueeze(1)
    atts = [torch.softmax(torch.randn(batch, t, t, generator=gen) + bias, -1) for _ in range(layers)]
    images = torch.randn(batch, 3, img_size, img_size, generator=gen)

    def ours():
        boxes, _, _ = dppm_boxes(patch_scores(atts, 1), (grid, grid), patch, 1.2)
        return crop_and_resize(images, boxes, img_size)

    return BenchCase(method=ours, baseline=lambda: official_style_dppm(atts, images, grid, patch, 1.2, 1),
                     details={"img_size": img_size, "patch": patch, "grid": grid, "batch": batch,
                              "layers": layers, "device": "cpu"})


@register("rams_trans: DPPM batched vs official-style per-sample loop (448/16, 12 layers, B=8)", target=BOX_TARGET,
          kind="speedup", repeats=5, warmup=1)
def _dppm_vitb_row() -> BenchCase:
    return _dppm_case(448, 16, 8, 12)


@register("rams_trans: DPPM batched vs official-style per-sample loop (toy 64/8, 4 layers, B=32)", target=BOX_TARGET,
          kind="speedup")
def _dppm_toy_row() -> BenchCase:
    return _dppm_case(64, 8, 32, 4)


# ----------------------------------------------------------------------------------------------------------
# Input pipeline (shared/bench/pipeline.py): the training DataLoader of configs/cub.yaml on CUB-layout files
# ----------------------------------------------------------------------------------------------------------
def write_bench_cub(root, samples: int, files: int, size: tuple[int, int] = (500, 375), test: int = 2,
                    num_classes: int = 200):
    """A CUB-200-2011 folder (``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
    ``images/<class>/<name>.jpg``): ``samples`` training ids and ``test`` test ids over ``files`` photo-like JPEGs
    of ``size`` (CUB's photos are at most 500 px a side)."""
    root = Path(root)
    names = [f"{k % num_classes + 1:03d}.Bird_{k % num_classes + 1}/Bird_{k:04d}.jpg" for k in range(files)]
    write_photos(root / "images", names, size)
    rows = [(i + 1, names[i % files], int(i < samples)) for i in range(samples + test)]
    (root / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _ in rows))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {int(rel[:3])}\n" for i, rel, _ in rows))
    (root / "train_test_split.txt").write_text("".join(f"{i} {flag}\n" for i, _, flag in rows))
    return root


def pipeline_loader(root, workers: int, files: int, tiny: bool = False):
    """configs/cub.yaml's training DataLoader (square resize 600 -> random crop 448 + flip, batch 16) over a CUB
    folder of 500x375 JPEGs written under ``root`` (one timed epoch's worth); ``tiny``: 64x48, 72 -> 64, batch 2."""
    data = paper_data(CONFIGS / "cub.yaml")
    size = (500, 375)
    if tiny:
        data.update(resize=72, crop=64, batch_size=2)
        size = (64, 48)
    samples = data["batch_size"] * epoch_batches(data["batch_size"], workers, tiny)
    write_bench_cub(root, samples, min(files, samples), size, num_classes=data["num_classes"])
    dm = FGVCDataModule(**{**data, "root": str(root), "num_workers": workers})
    dm.setup("fit")
    return dm.train_dataloader(), {"layout": "CUB-200-2011", "image_files": f"{size[0]}x{size[1]} JPEG q90",
                                   "distinct_files": min(files, samples), "samples": samples,
                                   "transforms": f"resize {data['resize']} -> random crop {data['crop']} + flip"}


# ----------------------------------------------------------------------------------------------------------
# make bench-gpu: the paper-size step, and its loader next to it
# ----------------------------------------------------------------------------------------------------------
def gpu_step(device: str, tiny: bool, batch: int | None = None, switch: str | None = None
             ) -> tuple[BenchCase, int, int]:
    case = (train_step_case(CONFIGS / "cub.yaml", batch or 2, device, switch, backbone="vit_tiny_patch16_224",
                            img_size=32, patch_size=8, backbone_kwargs=TINY_VIT) if tiny
            else train_step_case(CONFIGS / "cub.yaml", batch or 16, device, switch))
    b = case.details["batch"]
    return case, b, b if switch else 2 * b        # the baseline is two plain-ViT steps (a switch: its twin)


GPU_STEP = register_gpu_row(GpuRow(
    "rams_trans: train step / 2 ViT steps", "configs/cub.yaml: ViT-B/16, 448x448, batch 16, 2 scales, SGD",
    gpu_step, switches=("fused", "compile")))
register_pipeline_row(PipelineRow(
    "pipeline/rams_trans: CUB loader vs train step",
    "configs/cub.yaml: 500x375 JPEG, square resize 600 -> random crop 448 + flip, batch 16", pipeline_loader,
    GPU_STEP.name))
