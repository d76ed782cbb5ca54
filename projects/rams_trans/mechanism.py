"""Does the DPPM box contain the discriminative part? The mechanism measure of the toy task.

The toy CUB writer records every image's part box (``part_boxes.txt``, CUB ``bounding_boxes.txt`` form). On
the test split, through the test transform (square resize, centre crop), this compares it with the scale-1
DPPM box of a trained RAMS-Trans:

* ``part_in_box``: the whole part box lies inside the DPPM box (inclusive pixels);
* ``centre_in_box``: the part's centre does;
* ``box_area``: the DPPM box's area as a fraction of the input; ``found``: the mask was non-empty.

    python -m projects.rams_trans.mechanism --ckpt logs/rams_trans/<run>/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from projects.rams_trans.data import CUBDataset, FGVCDataModule, build_transforms, toy_part_boxes
from projects.rams_trans.model import RAMSTrans
from projects.rams_trans.module import RAMSTransModule
from shared.errors import run_with_clear_errors
from shared.study import rebuild_toy_run


@torch.no_grad()
def part_coverage(model: RAMSTrans, ds: CUBDataset, part: torch.Tensor, batch_size: int = 100) -> dict[str, float]:
    """Fractions of test images whose scale-1 DPPM box holds the part (whole / centre), mean box area."""
    if model.num_scales < 2:
        raise ValueError("part_coverage needs num_scales >= 2 (the ViT baseline has no DPPM box)")
    model.eval()
    boxes, found = [], []
    for i in range(0, len(ds), batch_size):
        x = torch.stack([ds[j][0] for j in range(i, min(len(ds), i + batch_size))])
        out = model(x)
        boxes.append(out["boxes"][0])
        found.append(out["found"][0])
    b, f = torch.cat(boxes), torch.cat(found)                         # inclusive pixels
    inside = (b[:, 0] <= part[:, 0]) & (b[:, 1] <= part[:, 1]) & (b[:, 2] >= part[:, 2] - 1) & \
             (b[:, 3] >= part[:, 3] - 1)
    cx, cy = (part[:, 0] + part[:, 2] - 1) / 2, (part[:, 1] + part[:, 3] - 1) / 2
    centre = (b[:, 0] <= cx) & (cx <= b[:, 2]) & (b[:, 1] <= cy) & (cy <= b[:, 3])
    area = ((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)).double() / model.img_size ** 2
    return {"part_in_box": float(inside.double().mean()), "centre_in_box": float(centre.double().mean()),
            "box_area": float(area.mean()), "found": float(f.double().mean()), "n": len(ds)}


def measure_checkpoint(ckpt: str | Path) -> dict[str, float]:
    """Rebuild a toy run's model and test split from its Lightning checkpoint (our own file: weights only)."""
    module, _, dm = rebuild_toy_run(ckpt, RAMSTransModule, FGVCDataModule, "the DPPM part-coverage measure")
    root = Path(dm["root"])
    size = json.loads((root / "toy_args.json").read_text())["size"]
    ds = CUBDataset(root, "test", build_transforms(False, dm["resize"], dm["crop"]))
    return part_coverage(module.net, ds, toy_part_boxes(ds, root, dm["resize"], dm["crop"], size))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    print(json.dumps(run_with_clear_errors(measure_checkpoint, p.parse_args().ckpt)))


if __name__ == "__main__":
    main()
