"""``mask_to_box(measure="contour_area")``: DiD's official region rule, checked against OpenCV itself.

The official ``get_bboxes`` runs ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` and keeps
``max(contours, key=cv2.contourArea)`` (docs/papers/did.md §5.4); that per-sample loop is the reference here.
"""

import cv2
import numpy as np
import pytest
import torch

from shared.attention import mask_to_box


def official_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    contours, _ = cv2.findContours(mask.astype(np.uint8) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return (0, 0, mask.shape[1], mask.shape[0])  # our fallback for an empty map (official: (0, 0, 1, 1))
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return (x, y, x + w, y + h)


def boxes(masks: np.ndarray, measure: str) -> list[tuple[int, ...]]:
    out, _ = mask_to_box(torch.from_numpy(masks), measure, labelling="device")
    assert torch.equal(out, mask_to_box(torch.from_numpy(masks), measure, labelling="c")[0])   # CPU's default
    return [tuple(b) for b in out.tolist()]


def crafted() -> dict[str, np.ndarray]:
    m = {k: np.zeros((12, 12), bool) for k in ("two_equal_blobs", "band_vs_blob", "line_vs_square",
                                                 "ring_vs_solid", "border_regions", "single_pixels")}
    m["two_equal_blobs"][1:4, 1:4] = m["two_equal_blobs"][7:10, 6:9] = True      # tie: OpenCV lists the later first
    m["band_vs_blob"][0, 0:12] = m["band_vs_blob"][1, 0:4] = True                  # 16 px, thin: contour area 3
    m["band_vs_blob"][5:9, 5:8] = True                                             # 12 px, compact: area 6
    m["line_vs_square"][2, 1:11] = True                                            # 10 px, area 0
    m["line_vs_square"][6:8, 6:8] = True                                           # 4 px, area 1
    m["ring_vs_solid"][0:7, 0:7] = True                                            # a ring: its hole counts
    m["ring_vs_solid"][1:6, 1:6] = False
    m["ring_vs_solid"][8:12, 5:12] = True                                          # 28 px > 24 px, area 18 < 36
    m["border_regions"][:, 0] = m["border_regions"][11, :] = True                 # an L on two borders
    m["border_regions"][4:9, 4:10] = True
    m["single_pixels"][3, 3] = m["single_pixels"][8, 9] = True                     # all areas 0: tie
    return m


@pytest.mark.parametrize("name", list(crafted()))
def test_crafted_maps_pick_the_official_region(name):
    mask = crafted()[name]
    assert boxes(mask[None], "contour_area") == [official_box(mask)]


def test_the_two_rules_differ_where_the_issue_says():
    m = crafted()
    pixels = boxes(np.stack([m["two_equal_blobs"], m["band_vs_blob"], m["line_vs_square"], m["ring_vs_solid"]]),
                   "pixels")
    contour = boxes(np.stack([m["two_equal_blobs"], m["band_vs_blob"], m["line_vs_square"], m["ring_vs_solid"]]),
                    "contour_area")
    assert pixels == [(1, 1, 4, 4), (0, 0, 12, 2), (1, 2, 11, 3), (5, 8, 12, 12)]     # first / most pixels
    assert contour == [(6, 7, 9, 10), (5, 5, 8, 9), (6, 6, 8, 8), (0, 0, 7, 7)]      # later / largest polygon


@pytest.mark.parametrize("shape,density", [((5, 5), 0.3), ((9, 7), 0.5), ((28, 28), 0.45), ((33, 40), 0.55)])
def test_random_maps_in_one_batch_match_opencv(shape, density):
    masks = np.random.default_rng(shape[0]).random((300, *shape)) < density
    assert boxes(masks, "contour_area") == [official_box(m) for m in masks]


def test_smooth_multi_peak_and_nested_maps_match_opencv():
    rng = np.random.default_rng(0)
    maps = []
    for i in range(200):
        h, w = 28, 28
        if i % 2:  # thresholded sums of blobs, like class maps
            yy, xx = np.mgrid[:h, :w]
            z = sum(np.exp(-((yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2) / rng.uniform(2, 40))
                    for _ in range(rng.integers(1, 5))) + 0.1 * rng.random((h, w))
            maps.append(z > 0.6 * z.max())
        else:      # XOR of rectangles: rings, holes, components inside holes
            m = np.zeros((h, w), bool)
            for _ in range(rng.integers(1, 7)):
                y0, x0 = rng.integers(0, h), rng.integers(0, w)
                m[y0:y0 + rng.integers(1, 14), x0:x0 + rng.integers(1, 14)] ^= True
            maps.append(m)
    maps = np.stack(maps)
    assert boxes(maps, "contour_area") == [official_box(m) for m in maps]


def test_empty_map_and_bad_measure():
    out, found = mask_to_box(torch.zeros(1, 4, 5, dtype=torch.bool), "contour_area")
    assert out.tolist() == [[0, 0, 5, 4]] and not found[0]
    with pytest.raises(ValueError, match="measure must be 'pixels' or 'contour_area', got 'area'"):
        mask_to_box(torch.ones(1, 2, 2, dtype=torch.bool), "area")
