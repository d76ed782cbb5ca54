"""Do boxes thresholded at ``box_resolution`` match the full-resolution ones? (§10 row 5: the cheap option)

Every map is thresholded at the input size (the official code) and at a quarter of it (the paper configs' old
``box_resolution: 112`` of 448: 4-px cells), with each region rule (``pixels``, ``contour_area``):

* a trained toy model's own top-N instance maps on the toy validation images (8x8 grid: 64 px vs 16 px);
* random multi-peak maps on the paper's grid (28x28 sums of 1-4 Gaussian bumps + 10 % noise: 448 px vs 112 px).

Reported per set and rule: the share of boxes whose four edges all lie within one cell of the full-resolution
box, and the share with IoU >= 0.5 with it (below 0.5: another region was picked).

    python -m projects.did.resolution_check --ckpt logs/did/<run>/checkpoints/last.ckpt [--random_maps 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from projects.did.data import DiDData
from projects.did.mechanism import box_iou, discover_boxes
from projects.did.model import instance_boxes
from projects.did.module import DiDModule
from shared.errors import run_with_clear_errors
from shared.study import rebuild_toy_run


def agreement(maps: Tensor, size: int, factor: int = 4, threshold: float = 0.6) -> dict[str, dict[str, float]]:
    """``maps [K, h, w]`` -> per rule: ``within_cell`` and ``iou50`` shares of the low-resolution boxes."""
    out = {}
    for measure in ("pixels", "contour_area"):
        full, _ = instance_boxes(maps, (size, size), threshold, None, measure=measure)
        low, _ = instance_boxes(maps, (size, size), threshold, (size // factor, size // factor), measure=measure)
        iou = box_iou(low[:, None], (full + full.new_tensor([0, 0, 1, 1]))[:, None].double())[:, 0, 0]
        out[measure] = {"within_cell": round(((low - full).abs() <= factor).all(1).float().mean().item(), 4),
                        "iou50": round((iou >= 0.5).float().mean().item(), 4), "maps": len(maps)}
    return out


def random_multipeak_maps(n: int, grid: int = 28, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    maps = torch.zeros(n, grid, grid, dtype=torch.float64)
    for i in range(n):
        for _ in range(int(torch.randint(1, 5, (1,), generator=gen))):
            cy, cx, height = (torch.rand(3, generator=gen) * torch.tensor([grid, grid, 1.0])).tolist()
            width = 1.0 + 4.0 * float(torch.rand(1, generator=gen))
            maps[i] += (0.3 + height) * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
        maps[i] += 0.1 * torch.rand(grid, grid, generator=gen, dtype=torch.float64)
    return maps.float()


@torch.no_grad()
def toy_model_maps(ckpt: str | Path) -> tuple[Tensor, int]:
    """The top-N instance maps a trained toy DiD computes on its validation images, ``[M * N, h, w]``."""
    module, data, _ = rebuild_toy_run(ckpt, DiDModule, DiDData, "the box_resolution check")
    data.prepare_data()
    data.setup("validate")
    model = module.net.eval()
    chosen, size = [], 0
    for x, _ in DataLoader(data.val_set, batch_size=128, shuffle=False):
        out = discover_boxes(model, x)
        maps, top = out["instance_maps"], out["top_classes"]
        h, w = maps.shape[-2:]
        chosen.append(maps.gather(1, top[:, :, None, None].expand(-1, -1, h, w)).flatten(0, 1))
        size = x.shape[-1]
    return torch.cat(chosen), size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a toy DiD run's checkpoint")
    p.add_argument("--random_maps", type=int, default=200)
    args = p.parse_args(argv)

    def run() -> dict:
        maps, size = toy_model_maps(args.ckpt)
        return {"toy_model": {"ckpt": str(args.ckpt), "input": size, **agreement(maps, size)},
                "random_multipeak_448": agreement(random_multipeak_maps(args.random_maps), 448)}

    print(json.dumps(run_with_clear_errors(run), indent=1))


if __name__ == "__main__":
    main()
