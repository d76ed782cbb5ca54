"""DiD model pieces on hand-made inputs: rollout row, re-constraint, map -> box, local views, the full forward."""

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

import projects.did.model as model_module
from projects.did.model import DiD, cls_rollout, instance_boxes, instance_maps, threshold_maps
from shared.attention import attention_rollout, crop_and_resize


def tiny_did(**kw) -> DiD:
    torch.manual_seed(0)
    args = dict(num_classes=6, backbone="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                num_heads=2, hidden_dropout=0.0, top_n=3)
    args.update(kw)
    return DiD(**args).eval()


# ---------------------------------------------------------------------------------------------- rollout
def test_cls_rollout_equals_the_shared_full_rollout_row() -> None:
    gen = torch.Generator().manual_seed(0)
    attn = [torch.softmax(3 * torch.randn(3, 2, 10, 10, generator=gen), -1) for _ in range(4)]
    torch.testing.assert_close(cls_rollout(attn), attention_rollout(attn)[:, 0, 1:])
    torch.testing.assert_close(cls_rollout([a.mean(1) for a in attn], num_prefix_tokens=2),
                               attention_rollout(attn)[:, 0, 2:])


def test_cls_rollout_hand_example() -> None:
    a1 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])   # Â1 = [[1, 0], [0.25, 0.75]]
    a2 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])   # Â2 = [[0.5, 0.5], [0.5, 0.5]]; (Â2 Â1)[0] = [0.625, 0.375]
    torch.testing.assert_close(cls_rollout([a1, a2]), torch.tensor([[0.375]]))


# ---------------------------------------------------------------------------------------- re-constraint
def test_instance_maps_product_and_sum_and_no_gradient_to_class_maps() -> None:
    a = torch.tensor([[[1.0, 2.0], [0.0, 0.5]]])
    s = torch.tensor([[[[1.0, 1.0], [3.0, 2.0]], [[-1.0, 0.0], [1.0, 4.0]]]], requires_grad=True)
    prod = instance_maps(a, s, "product")
    torch.testing.assert_close(prod, torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, 2.0]]]]))
    torch.testing.assert_close(instance_maps(a, s, "sum"), a[:, None] + s.detach())
    assert not prod.requires_grad
    with pytest.raises(ValueError, match="product"):
        instance_maps(a, s, "mean")
    # the class maps' activation before the product: relu keeps the positive evidence, sigmoid gives probabilities
    torch.testing.assert_close(instance_maps(a, s, "product", "relu"), a[:, None] * s.detach().relu())
    torch.testing.assert_close(instance_maps(a, s, "product", "sigmoid"), a[:, None] * s.detach().sigmoid())
    assert instance_maps(a, s, "product", "relu").min() >= 0 and prod.min() < 0
    with pytest.raises(ValueError, match="class_map_activation"):
        instance_maps(a, s, "product", "tanh")


# ------------------------------------------------------------------------------------------ map -> box
def test_threshold_is_the_official_uint8_rule() -> None:
    # min-max -> floor(255 m) > int(0.6 * 255) = 153: 0.6 itself (153) is dropped, 154/255 kept.
    m = torch.tensor([[[0.0, 0.6, 154 / 255, 1.0]]])
    assert threshold_maps(m, (1, 4)).tolist() == [[[False, False, True, True]]]
    assert threshold_maps(m, (1, 4), quantize=False).tolist() == [[[False, False, True, True]]]
    assert threshold_maps(torch.full((1, 2, 2), 3.0), (2, 2)).sum() == 0   # constant map: nothing


def test_boxes_on_hand_made_maps() -> None:
    maps = torch.zeros(3, 16, 16)
    maps[0, 2:5, 3:7] = 1.0          # small blob
    maps[0, 9:15, 8:12] = 1.0        # larger blob (24 > 12 pixels): chosen
    maps[1, 0, 0] = -2.0             # everything else above threshold: one big component but (0, 0)
    maps[2] = 5.0                    # constant: degenerate
    boxes, found = instance_boxes(maps, (16, 16))
    assert boxes.tolist() == [[8, 9, 11, 14], [0, 0, 15, 15], [0, 0, 15, 15]]   # inclusive pixels
    assert found.tolist() == [True, True, False]
    boxes, _ = instance_boxes(maps, (16, 16), empty_box="official")
    assert boxes[2].tolist() == [0, 0, 0, 0]      # the official (0, 0, 1, 1) box: a 1-pixel crop
    # Diagonal neighbours are connected (8-connectivity, like cv2 contours).
    diag = torch.zeros(1, 6, 6)
    diag[0, 1, 1] = diag[0, 2, 2] = diag[0, 3, 3] = 1.0
    assert instance_boxes(diag, (6, 6))[0].tolist() == [[1, 1, 3, 3]]


def official_style_boxes(maps: np.ndarray, size: int, threshold: float = 0.6,
                         measure: str = "contour_area") -> np.ndarray:
    """Per-map loop as the official ``get_bboxes`` (its cv2.resize replaced by F.interpolate): threshold, then
    ``max(cv2.findContours(RETR_TREE), key=cv2.contourArea)``; ``pixels``: scipy's largest 8-connected region."""
    out = []
    for m in maps:
        up = F.interpolate(torch.from_numpy(m)[None, None], size=(size, size), mode="bilinear",
                           align_corners=False)[0, 0].numpy()
        up = (up - up.min()) / (up.max() - up.min())
        u8 = (up * 255).astype(np.uint8)
        mask = u8 > int(threshold * 255)
        if measure == "contour_area":
            contours, _ = cv2.findContours(mask.astype(np.uint8) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
            x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
            out.append([x, y, x + w - 1, y + h - 1])
            continue
        lab, n = ndi.label(mask, structure=np.ones((3, 3)))
        area = np.bincount(lab.ravel())
        area[0] = 0
        ys, xs = np.nonzero(lab == area.argmax())
        out.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return np.array(out)


def smooth_maps(k: int, grid: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.randn(k, 1, grid, grid, generator=gen), 3, 1, 1)[:, 0]


@pytest.mark.parametrize("measure", ["contour_area", "pixels"])
def test_batched_boxes_equal_the_per_sample_official_loop(measure: str) -> None:
    maps = smooth_maps(64, 8, seed=1)
    got, found = instance_boxes(maps, (64, 64), measure=measure)
    assert found.all()
    np.testing.assert_array_equal(got.numpy(), official_style_boxes(maps.numpy(), 64, measure=measure))


def test_region_measure_reaches_the_model_boxes() -> None:
    """A thin band with more pixels against a compact blob: pixels picks the band, the official rule the blob."""
    maps = torch.zeros(1, 12, 12)
    maps[0, 0, :] = maps[0, 1, :4] = 1.0      # 16 px, contour area 3
    maps[0, 5:9, 5:8] = 1.0                   # 12 px, contour area 6
    assert instance_boxes(maps, (12, 12), measure="pixels")[0].tolist() == [[0, 0, 11, 1]]
    assert instance_boxes(maps, (12, 12), measure="contour_area")[0].tolist() == [[5, 5, 7, 8]]
    with pytest.raises(ValueError, match="region_measure must be 'pixels' or 'contour_area', got 'area'"):
        DiD(num_classes=6, backbone="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1,
            region_measure="area")


def blob_maps() -> torch.Tensor:
    """Hand-made 8x8 maps: one or two Gaussian bumps of different heights at varied places and widths."""
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    bump = lambda cx, cy, s, h: h * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    specs = [[(2, 2, 1.0, 1.0)], [(5.5, 1.5, 0.8, 1.0)], [(3.5, 4, 1.6, 1.0)], [(1, 6, 1.2, 1.0), (6, 1, 1.0, 0.7)],
             [(6.2, 6.1, 0.9, 1.0), (2, 2, 1.1, 0.9)], [(0, 0, 2.0, 1.0)], [(4, 1, 1.0, 1.0), (4, 6, 0.7, 0.5)]]
    return torch.stack([sum(bump(*b) for b in spec) for spec in specs])


@pytest.mark.parametrize("resolution,measure", [(16, "pixels"), (32, "pixels"), (32, "contour_area")])
def test_low_resolution_boxes_agree_with_full_resolution(resolution: int, measure: str) -> None:
    """The box_resolution flag: thresholding at a lower resolution moves box edges by at most one cell.
    (Not with contour_area at 4-px cells: on a two-bump map the coarse polygon areas pick the other bump.)"""
    cell = 64 // resolution
    full, _ = instance_boxes(blob_maps(), (64, 64), measure=measure)
    low, _ = instance_boxes(blob_maps(), (64, 64), resolution=(resolution, resolution), measure=measure)
    assert int((low - full).abs().max()) <= cell, (low - full)
    # Random smooth maps can hold two near-equal regions, where a one-cell shift may flip the choice; on
    # most maps the boxes still agree within a cell.
    maps = smooth_maps(64, 8, seed=2)
    full, _ = instance_boxes(maps, (64, 64), measure=measure)
    low, _ = instance_boxes(maps, (64, 64), resolution=(resolution, resolution), measure=measure)
    close = ((low - full).abs() <= cell + 1).all(1).float().mean()
    assert close >= 0.9, close


# -------------------------------------------------------------------------------------------- forward
def test_forward_shapes_topn_and_local_views() -> None:
    model = tiny_did()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out["global"].shape == out["local"].shape == out["fused"].shape == (2, 6)
    assert out["class_maps"].shape == out["instance_maps"].shape == (2, 6, 4, 4)
    assert out["rollout"].shape == (2, 4, 4) and out["boxes"].shape == (2, 3, 4)
    assert out["views"].shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(out["global"], out["class_maps"].mean((2, 3)))
    assert torch.equal(out["top_classes"], out["global"].topk(3, 1).indices)   # predicted, not labels
    torch.testing.assert_close(out["fused"], torch.maximum(out["global"], out["local"]))
    # The views are the crops of the boxes, and the local logits the max over the views' logits.
    boxes = out["boxes"].flatten(0, 1)
    views = crop_and_resize(x.repeat_interleave(3, 0), boxes, 32)
    torch.testing.assert_close(out["views"].flatten(0, 1), views)
    per_view = torch.stack([model.pooled_logits(model.backbone(v[None])[0])[0] for v in views]).view(2, 3, 6)
    torch.testing.assert_close(out["local"], per_view.amax(1), atol=1e-5, rtol=1e-5)
    # Rollout map = the shared rollout's CLS row, instance maps = rollout x class maps.
    _, attn = model.backbone(x, return_attention=True)
    torch.testing.assert_close(out["rollout"], attention_rollout(attn)[:, 0, 1:].view(2, 4, 4))
    torch.testing.assert_close(out["instance_maps"], out["rollout"][:, None] * out["class_maps"])


def test_local_views_in_several_backbone_calls_on_cpu_equal_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Views whose activations would pass the CPU heap's largest block go through the backbone B at a time."""
    model = tiny_did()
    x = torch.randn(2, 3, 32, 32)
    views = torch.zeros(6, 3, 32, 32)
    assert model.views_per_call(views, 2) == 6                           # 6 x 17 tokens x 128 x 4 bytes
    with torch.no_grad():
        one = model(x)
        monkeypatch.setattr(model_module, "CPU_HEAP_MAX_BYTES", 6 * 17 * 128 * 4 - 1)
        assert model.views_per_call(views, 2) == 2
        split = model(x)
    for key in ("global", "local", "fused", "boxes", "views"):
        torch.testing.assert_close(split[key], one[key], atol=1e-6, rtol=1e-6)


def test_gradients_flow_from_both_branches_but_not_through_the_boxes() -> None:
    model = tiny_did().train()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    out["local"].sum().backward()
    assert model.classifier.weight.grad is not None
    assert model.backbone.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert x.grad is None       # the local views are detached crops
    assert not out["views"].requires_grad and not out["instance_maps"].requires_grad


def test_baseline_has_no_local_branch() -> None:
    model = tiny_did(local_views=False)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["local"] is None and torch.equal(out["fused"], out["global"])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="top_n"):
        tiny_did(top_n=7)
    with pytest.raises(ValueError, match="threshold"):
        tiny_did(threshold=1.5)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_did()(torch.randn(2, 1, 32, 32))
