"""The box_resolution check: agreement shares on maps where the answer is known."""

import torch

from projects.did.resolution_check import agreement, random_multipeak_maps


def test_single_bumps_agree_and_a_coarse_tie_breaker_does_not() -> None:
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    bumps = torch.stack([torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8) for cy, cx in [(4, 5), (10, 9), (8, 3)]])
    for rule in agreement(bumps, 64).values():
        assert rule == {"within_cell": 1.0, "iou50": 1.0, "maps": 3}   # one region: the same box within a cell
    maps = random_multipeak_maps(30, grid=8, seed=1)
    got = agreement(maps, 64)
    assert maps.shape == (30, 8, 8) and set(got) == {"pixels", "contour_area"}
    assert all(0.0 <= r["within_cell"] <= 1.0 and 0.0 <= r["iou50"] <= 1.0 and r["maps"] == 30 for r in got.values())
