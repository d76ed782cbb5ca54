"""The DPPM mechanism measure: the toy part boxes land on the part in the test input, and the coverage
figures count what they say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from projects.rams_trans.data import TOY_PART_COLORS, read_boxes, write_toy_cub
from projects.rams_trans.mechanism import part_coverage, toy_part_boxes
from projects.rams_trans.module import denormalize
from shared.data.toyworld import COLORS


@pytest.mark.parametrize("resize,crop", [(72, 64), (90, 80)])
def test_part_boxes_cover_the_part_colour_in_the_test_input(tmp_path, resize, crop):
    root = write_toy_cub(tmp_path / "toy", num_train=8, num_test=16, seed=5)
    ds, boxes = toy_part_boxes(root, resize, crop, size=72)
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
