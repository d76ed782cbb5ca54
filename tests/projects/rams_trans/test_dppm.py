"""DPPM (rollout -> score map -> threshold -> largest 8-connected component -> pixel box) and the model's flags."""

from __future__ import annotations

import pytest
import torch

from projects.rams_trans.model import RAMSTrans, dppm_boxes, patch_scores, rollout_patch_scores

TINY = dict(backbone="vit_tiny_patch16_224", img_size=32, patch_size=8,
            backbone_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0})


def attention_on(cells: list[tuple[int, int]], grid: int, num_prefix: int, layers: int = 3) -> list[torch.Tensor]:
    """Every token attends uniformly to the patches in ``cells`` (row, col), in every layer.

    Then a patch outside ``cells`` keeps only its identity mass (column 2^-L e_j), so exactly ``cells`` pass any
    threshold eta * mean with eta around 1.
    """
    t = num_prefix + grid * grid
    a = torch.zeros(t, t)
    idx = [num_prefix + r * grid + c for r, c in cells]
    a[:, idx] = 1.0 / len(idx)
    return [a.expand(2, t, t).clone() for _ in range(layers)]


def test_patch_scores_equal_the_full_shared_rollout() -> None:
    gen = torch.Generator().manual_seed(0)
    atts = [torch.softmax(torch.randn(3, 4, 18, 18, generator=gen), -1) for _ in range(4)]  # [B, H, T, T]
    for mode, cls_index in (("column_mean", 0), ("cls_row", 0), ("cls_row", 1)):
        fast = patch_scores(atts, 2, mode, cls_index)
        ref = rollout_patch_scores(atts, 2, mode, cls_index)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-7)
    assert patch_scores(atts, 2).shape == (3, 16)


def test_hand_made_attention_gives_the_box_of_the_largest_8_connected_component() -> None:
    # A diagonal (8-connected only) of 4 cells + a separate 3-cell blob; the diagonal wins.
    diag = [(1, 1), (2, 2), (3, 3), (4, 4)]
    blob = [(0, 6), (0, 7), (1, 7)]
    atts = attention_on(diag + blob, grid=8, num_prefix=1)
    s = patch_scores(atts, 1)
    boxes, found, g = dppm_boxes(s, (8, 8), patch_size=4, eta=1.2, official_shift=False)
    assert found.all()
    assert g.shape == (2, 8, 8) and torch.allclose(g.amax((1, 2)), torch.ones(2))
    # cells x 1..4, y 1..4 -> pixels 4 .. 5*4-1 (inclusive)
    assert boxes[0].tolist() == [4, 4, 19, 19]
    shifted, _, _ = dppm_boxes(s, (8, 8), patch_size=4, eta=1.2, official_shift=True)
    assert shifted[0].tolist() == [3, 3, 19, 19]   # official: y0 = r0 * P - 1, x0 = c0 * P - 1


def test_mask_touching_the_border_and_the_top_left_corner() -> None:
    cells = [(r, c) for r in range(0, 3) for c in range(5, 8)] + [(7, 0)]   # top-right 3x3 block + lone cell
    s = patch_scores(attention_on(cells, grid=8, num_prefix=2), 2)
    boxes, found, _ = dppm_boxes(s, (8, 8), patch_size=16, eta=1.2)
    assert found.all() and boxes[0].tolist() == [5 * 16 - 1, 0, 127, 3 * 16 - 1]   # y0 clamped at 0
    corner = patch_scores(attention_on([(0, 0), (0, 1)], grid=8, num_prefix=1), 1)
    boxes, _, _ = dppm_boxes(corner, (8, 8), patch_size=16, eta=1.2)
    assert boxes[0].tolist() == [0, 0, 31, 15]   # max(0 * 16 - 1, 0) = 0


def test_empty_mask_falls_back_to_the_whole_image() -> None:
    flat = torch.full((2, 16), 0.3)                                  # nothing exceeds 1.2 x mean
    nan = torch.full((2, 16), float("nan"))
    for s in (flat, nan):
        boxes, found, _ = dppm_boxes(s, (4, 4), patch_size=8, eta=1.2)
        assert not found.any()
        assert boxes.tolist() == [[0, 0, 31, 31]] * 2
    # eta is a strict ">" on the normalised map: a two-level map at eta=1.0 keeps the high level only.
    s = torch.tensor([[1.0, 1.0] + [0.5] * 14])
    boxes, found, _ = dppm_boxes(s, (4, 4), 8, eta=1.0, official_shift=False)
    assert found.item() and boxes[0].tolist() == [0, 0, 15, 7]


@pytest.mark.parametrize("cls_layout", ["per_scale", "all"])
@pytest.mark.parametrize("num_scales", [1, 2, 3])
def test_model_scales_layouts_and_gradients(cls_layout: str, num_scales: int) -> None:
    torch.manual_seed(0)
    model = RAMSTrans(5, num_scales=num_scales, eta=[1.0] * (num_scales - 1), cls_layout=cls_layout, **TINY)
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert len(out["logits"]) == num_scales and all(z.shape == (3, 5) for z in out["logits"])
    assert len(out["boxes"]) == len(out["inputs"]) - 1 == num_scales - 1
    for k, boxes in enumerate(out["boxes"]):
        assert boxes.dtype == torch.long and (boxes[:, :2] <= boxes[:, 2:]).all() and (boxes <= 31).all()
        assert not out["inputs"][k + 1].requires_grad  # the crop is detached (docs/papers/rams_trans.md §3)
    sum(z.sum() for z in out["logits"]).backward()
    grads = model.cls_tokens.grad
    assert grads is not None and (grads.flatten(1).abs().sum(1) > 0).all()   # every scale's CLS trains
    assert model.vit.model.cls_token.grad is None                           # timm's own CLS is unused


def test_flags_change_what_they_should() -> None:
    torch.manual_seed(0)
    a = RAMSTrans(4, **TINY)
    b = RAMSTrans(4, cls_layout="all", **TINY)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        oa, ob = a(x), b(x)
    assert not torch.allclose(oa["logits"][0], ob["logits"][0])   # the other scale's CLS is in the sequence
    with pytest.raises(ValueError, match="eta needs one value per scale transition"):
        RAMSTrans(4, num_scales=3, eta=[1.2, 1.3, 1.4], **TINY)
    with pytest.raises(ValueError, match="patch_score"):
        RAMSTrans(4, patch_score="rows", **TINY)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 32, 32\]"):
        a(torch.randn(1, 3, 48, 48))
    assert RAMSTrans(4, num_scales=3, eta=1.3, **TINY).etas == [1.3, 1.3]


def test_batched_dppm_equals_the_official_style_per_sample_loop() -> None:
    from projects.rams_trans.bench import _dppm_case

    case = _dppm_case(64, 8, 6, 3)
    torch.testing.assert_close(case.method(), case.baseline(), rtol=1e-4, atol=1e-4)
