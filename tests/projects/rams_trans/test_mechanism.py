"""The DPPM mechanism measure: the toy part boxes land on the part in the test input, and the coverage
figures count what they say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from projects.rams_trans.data import (
    TOY_PART_COLORS,
    CUBDataset,
    FGVCDataModule,
    build_transforms,
    read_boxes,
    toy_part_boxes,
    write_toy_cub,
)
from projects.rams_trans.mechanism import part_coverage
from projects.rams_trans.viz import CYAN, GREEN, dppm_panels
from shared.data.toyworld import COLORS
from shared.panels import denormalize


@pytest.mark.parametrize("resize,crop", [(72, 64), (90, 80)])
def test_part_boxes_cover_the_part_colour_in_the_test_input(tmp_path, resize, crop):
    root = write_toy_cub(tmp_path / "toy", num_train=8, num_test=16, seed=5)
    ds = CUBDataset(root, "test", build_transforms(False, resize, crop))
    boxes = toy_part_boxes(ds, root, resize, crop, size=72)
    assert boxes.shape == (16, 4) and len(ds) == 16
    for (x, label), (x0, y0, x1, y1) in zip((ds[i] for i in range(len(ds))), boxes.tolist(), strict=True):
        rgb = torch.tensor(COLORS[TOY_PART_COLORS[label // 4]], dtype=torch.float32) / 255
        img = denormalize(x)                                                  # [3, crop, crop] in [0, 1]
        near = ((img - rgb[:, None, None]).abs().amax(0) < 0.12)              # part-coloured pixels
        inside = near[y0:y1, x0:x1].sum()
        assert inside >= 4, (label, (x0, y0, x1, y1))
        # the box is tight: it is a small fraction of the image (the part covers ~2% of it)
        assert (x1 - x0) * (y1 - y0) < 0.12 * crop * crop


def test_part_box_file_has_one_line_per_image(tmp_path):
    root = write_toy_cub(tmp_path / "toy", num_train=8, num_test=8, seed=1)
    assert len(read_boxes(root / "part_boxes.txt")) == 16 and len(read_boxes(root / "bounding_boxes.txt")) == 16


class FixedBoxes(nn.Module):
    """Stands in for RAMSTrans: returns the given scale-1 boxes whatever the input."""

    num_scales, img_size = 2, 64

    def __init__(self, boxes: list[list[int]]) -> None:
        super().__init__()
        self.boxes, self.seen = torch.tensor(boxes), 0

    def forward(self, x):
        b = self.boxes[self.seen:self.seen + len(x)]
        self.seen += len(x)
        return {"boxes": [b], "found": [torch.ones(len(b), dtype=torch.bool)]}


def test_part_coverage_counts_whole_part_centre_and_area():
    part = torch.tensor([[10, 10, 20, 20], [10, 10, 20, 20], [10, 10, 20, 20]])   # exclusive ends
    boxes = [[10, 10, 19, 19],   # inclusive: exactly the part -> inside
             [0, 0, 14, 14],     # misses the centre (14.5, 14.5) -> neither
             [12, 12, 40, 40]]   # holds the centre, not the whole part
    ds = [(torch.zeros(3, 64, 64), 0)] * 3
    got = part_coverage(FixedBoxes(boxes), ds, part, batch_size=2)
    assert got["part_in_box"] == pytest.approx(1 / 3)
    assert got["centre_in_box"] == pytest.approx(2 / 3)
    areas = [100, 225, 29 * 29]
    assert got["box_area"] == pytest.approx(sum(areas) / 3 / 64 ** 2)
    with pytest.raises(ValueError, match="num_scales"):
        m = FixedBoxes(boxes)
        m.num_scales = 1
        part_coverage(m, ds, part)


def test_datamodule_exposes_the_part_boxes_and_the_panel_draws_them_beside_the_dppm_box(tmp_path):
    dm = FGVCDataModule("toy", str(tmp_path / "toy"), toy_num_train=8, toy_num_test=8)
    dm.setup("fit")
    assert dm.test_part_boxes.shape == (8, 4)
    x = torch.stack([dm.test_set[i][0] for i in range(2)])
    out = {"inputs": [x, x], "boxes": [torch.tensor([[0, 0, 63, 63], [8, 8, 40, 40]])],
           "score_maps": [torch.rand(2, 8, 8)], "found": [torch.ones(2, dtype=torch.bool)]}
    truth = torch.tensor([[10, 12, 20, 22], [30, 30, 41, 44]])
    images, captions = dppm_panels(out, truth)
    strip = images[1]                                                  # image | heat map | crop, 2 px apart
    assert tuple(strip[30, 30]) == CYAN and tuple(strip[43, 40]) == CYAN  # part box corners (inclusive)
    assert tuple(strip[8, 66 + 8]) == GREEN                            # DPPM box on the heat map tile
    assert "part (cyan) [30, 30, 41, 44]" in captions[1]
    assert "part" not in dppm_panels(out)[1][0]

