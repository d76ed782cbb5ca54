"""Tests for shared.attention: rollout, mask -> box (exact parity with scipy), crop -> resize (F.interpolate)."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from shared.attention import attention_rollout, cells_to_pixels, crop_and_resize, mask_to_box


# ----------------------------------------------------------------------------------------------------------
# attention_rollout
# ----------------------------------------------------------------------------------------------------------
def rollout_reference(attentions: list[np.ndarray]) -> np.ndarray:
    """Per-sample float64 loop, as the official get_coordi_attention / get_cams do it."""
    out = []
    for b in range(attentions[0].shape[0]):
        joint = None
        for a in attentions:
            a = a[b].mean(0) if a.ndim == 4 else a[b]
            a = a + np.eye(a.shape[-1])
            a = a / a.sum(-1, keepdims=True)
            joint = a if joint is None else a @ joint
        out.append(joint)
    return np.stack(out)


def _random_attentions(layers: int, b: int, h: int, t: int, heads: bool, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (b, h, t, t) if heads else (b, t, t)
    return [torch.softmax(3 * torch.randn(shape, generator=gen), -1) for _ in range(layers)]


@pytest.mark.parametrize("heads", [False, True])
def test_rollout_matches_the_loop_reference(heads: bool) -> None:
    attn = _random_attentions(5, 3, 4, 7, heads)
    got = attention_rollout(attn)
    assert got.shape == (3, 7, 7) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), rollout_reference([a.double().numpy() for a in attn]), atol=1e-6)
    # A tuple works too, and so does a mix of head-averaged and per-head layers.
    mixed = [a.mean(1) if i % 2 and heads else a for i, a in enumerate(attn)]
    torch.testing.assert_close(attention_rollout(tuple(mixed)), got)


def test_rollout_hand_example_two_layers_two_tokens() -> None:
    a1 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])   # (A1 + I) / rowsum = [[1, 0], [0.25, 0.75]]
    a2 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])   # (A2 + I) / rowsum = [[0.5, 0.5], [0.5, 0.5]]
    expected = torch.tensor([[[0.625, 0.375], [0.625, 0.375]]])   # Â2 @ Â1 (Â1 @ Â2 would be all 0.5)
    torch.testing.assert_close(attention_rollout([a1, a2]), expected)
    # Rows are normalised (not 0.5 (A + I), not columns): A + I = diag(3, 1) -> identity.
    torch.testing.assert_close(attention_rollout([torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])]), torch.eye(2)[None])


def test_rollout_rows_sum_to_one_half_inputs_and_start_layer() -> None:
    attn = _random_attentions(4, 2, 3, 9, heads=True, seed=1)
    full = attention_rollout(attn)
    torch.testing.assert_close(full.sum(-1), torch.ones(2, 9))
    half = attention_rollout([a.half() for a in attn])
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=2e-3, rtol=0)
    torch.testing.assert_close(attention_rollout(attn, start_layer=2), attention_rollout(attn[2:]))


def test_rollout_gradient_and_errors() -> None:
    attn = [a.requires_grad_() for a in _random_attentions(2, 1, 2, 4, heads=True)]
    attention_rollout(attn)[:, 0].sum().backward()
    assert all(a.grad is not None for a in attn)
    with pytest.raises(ValueError, match="empty"):
        attention_rollout([])
    with pytest.raises(ValueError, match="layer 1 has"):
        attention_rollout([torch.rand(2, 5, 5), torch.rand(2, 6, 6)])
    with pytest.raises(ValueError, match="layer 1 has"):
        attention_rollout([torch.rand(2, 5, 5), torch.rand(3, 5, 5)])
    with pytest.raises(ValueError, match=r"\[B, T, T\] or \[B, H, T, T\]"):
        attention_rollout([torch.rand(5, 5)])
    with pytest.raises(ValueError, match="start_layer"):
        attention_rollout([torch.rand(1, 3, 3)], start_layer=1)
    with pytest.raises(ValueError, match="list/tuple"):
        attention_rollout(torch.rand(2, 1, 3, 3))


# ----------------------------------------------------------------------------------------------------------
# mask_to_box
# ----------------------------------------------------------------------------------------------------------
def mask_to_box_reference(mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample scipy loop: label (8-connectivity), largest area (first label on ties), bounding box."""
    m = mask.cpu().numpy()
    b, h, w = m.shape
    boxes = np.tile(np.array([0, 0, w, h], dtype=np.int64), (b, 1))
    found = np.zeros(b, dtype=bool)
    for i in range(b):
        lab, num = ndi.label(m[i], structure=np.ones((3, 3)))
        if num == 0:
            continue
        area = np.bincount(lab.ravel())
        best = 1 + int(np.argmax(area[1:]))
        ys, xs = np.nonzero(lab == best)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        found[i] = True
    return boxes, found


def both_labellings(mask: torch.Tensor, measure: str = "pixels") -> tuple[torch.Tensor, torch.Tensor]:
    """mask_to_box with the batched labelling and with scipy's C labelling (CPU's default): equal results."""
    device = mask_to_box(mask, measure, labelling="device")
    c = mask_to_box(mask, measure, labelling="c")
    assert torch.equal(device[0], c[0]) and torch.equal(device[1], c[1]), "the two labellings disagree"
    return c


def _assert_parity(mask: torch.Tensor) -> None:
    boxes, found = both_labellings(mask)
    ref_boxes, ref_found = mask_to_box_reference(mask)
    assert boxes.dtype == torch.int64 and found.dtype == torch.bool
    assert boxes.shape == (mask.shape[0], 4) and found.shape == (mask.shape[0],)
    bad = np.nonzero((boxes.numpy() != ref_boxes).any(1) | (found.numpy() != ref_found))[0]
    assert bad.size == 0, f"samples {bad[:5].tolist()}: got {boxes[bad[:5]].tolist()}, want {ref_boxes[bad[:5]]}"


@pytest.mark.parametrize("size", [(28, 28), (14, 14), (7, 19), (19, 7), (1, 1), (1, 9), (9, 1), (3, 3)])
def test_mask_to_box_matches_scipy_on_random_masks(size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(sum(size))
    for density in (0.05, 0.15, 0.3, 0.45, 0.6, 0.7):
        _assert_parity(torch.rand(32, *size, generator=gen) < density)


def test_mask_to_box_matches_scipy_on_smooth_dppm_like_maps_and_larger_maps() -> None:
    gen = torch.Generator().manual_seed(3)
    g = F.avg_pool2d(torch.rand(64, 1, 28, 28, generator=gen), 3, 1, 1, count_include_pad=False)[:, 0]
    for eta in (1.0, 1.1, 1.2, 1.3):                # DPPM: g > eta * mean(g)
        _assert_parity(g > eta * g.mean((1, 2), keepdim=True))
    _assert_parity(torch.rand(8, 61, 47, generator=gen) < 0.45)
    # Non-contiguous input (a transposed view).
    _assert_parity((torch.rand(8, 20, 13, generator=gen) < 0.4).transpose(1, 2))


def test_mask_to_box_empty_and_full_maps() -> None:
    mask = torch.zeros(4, 5, 7, dtype=torch.bool)
    mask[1] = True
    mask[3, 2, 6] = True
    boxes, found = both_labellings(mask)
    assert found.tolist() == [False, True, False, True]
    assert boxes.tolist() == [[0, 0, 7, 5], [0, 0, 7, 5], [0, 0, 7, 5], [6, 2, 7, 3]]
    _assert_parity(mask)
    boxes, found = mask_to_box(torch.zeros(0, 4, 4, dtype=torch.bool))
    assert boxes.shape == (0, 4) and found.shape == (0,)


def _snake(h: int, w: int) -> np.ndarray:
    """Boustrophedon: full columns every other column, joined alternately at the bottom and the top."""
    m = np.zeros((h, w), dtype=bool)
    m[:, ::2] = True
    for c in range(1, w, 2):
        m[h - 1 if (c // 2) % 2 == 0 else 0, c] = True
    return m


def _spiral(n: int) -> np.ndarray:
    """A one-cell-wide square spiral whose arms are two cells apart."""
    m = np.zeros((n, n), dtype=bool)
    r = c = 0
    m[0, 0] = True
    steps = [n - 1, n - 1, n - 1] + [k for length in range(n - 3, 0, -2) for k in (length, length)]
    for i, length in enumerate(steps):
        dr, dc = [(0, 1), (1, 0), (0, -1), (-1, 0)][i % 4]
        for _ in range(length):
            r, c = r + dr, c + dc
            m[r, c] = True
    return m


def test_mask_to_box_snakes_and_spirals() -> None:
    shapes = [_snake(28, 28), _snake(28, 27).T, _spiral(28), _spiral(27), _snake(9, 40), _spiral(64)]
    for shape in shapes:
        assert ndi.label(shape, structure=np.ones((3, 3)))[1] == 1      # one long component
    gen = torch.Generator().manual_seed(5)
    for shape in shapes:
        base = torch.from_numpy(shape)
        # All four flips, plus a copy with a few distractor pixels sprinkled in.
        batch = torch.stack([base, base.flip(0), base.flip(1), base.flip(0, 1),
                             base | (torch.rand(base.shape, generator=gen) < 0.03)])
        _assert_parity(batch)
    # The snake spanning a whole map must give the whole map.
    boxes, _ = both_labellings(torch.from_numpy(_snake(28, 28))[None])
    assert boxes.tolist() == [[0, 0, 28, 28]]


def test_mask_to_box_uses_8_connectivity() -> None:
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    for i in range(5):
        mask[0, 1 + i, 6 - i] = True        # anti-diagonal of 5 cells: one component only with 8-connectivity
    mask[0, 5:7, 5:7] = True                 # a 2x2 block (4 cells) that does not touch it
    boxes, found = both_labellings(mask)
    assert found.tolist() == [True] and boxes.tolist() == [[2, 1, 7, 6]]
    _assert_parity(mask)


def test_mask_to_box_ties_go_to_the_first_component_in_raster_order() -> None:
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    # Sample 0: A = diagonal (0,4) (1,3) (2,2), first pixel index 4; B = column (1..3, 0), first index 6.
    # B's box starts further left, but A comes first in raster order, as scipy numbers it.
    mask[0, 0, 4] = mask[0, 1, 3] = mask[0, 2, 2] = True
    mask[0, 1:4, 0] = True
    # Sample 1: two single cells; the earlier one wins.
    mask[1, 4, 1] = mask[1, 2, 5] = True
    boxes, _ = both_labellings(mask)
    assert boxes.tolist() == [[2, 0, 5, 3], [5, 2, 6, 3]]
    _assert_parity(mask)


def test_mask_to_box_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="bool tensor"):
        mask_to_box(torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="bool tensor"):
        mask_to_box(torch.ones(4, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------------
# crop_and_resize / cells_to_pixels
# ----------------------------------------------------------------------------------------------------------
def crop_reference(images: torch.Tensor, boxes: torch.Tensor, size) -> torch.Tensor:
    """What both official codes do, one sample at a time."""
    return torch.cat([
        F.interpolate(img[None, :, y0:y1 + 1, x0:x1 + 1], size, mode="bilinear", align_corners=True)
        for img, (x0, y0, x1, y1) in zip(images, boxes.tolist(), strict=True)
    ])


def _random_boxes(b: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    x0 = torch.randint(0, w, (b,), generator=gen)
    y0 = torch.randint(0, h, (b,), generator=gen)
    x1 = x0 + (torch.rand(b, generator=gen) * (w - x0)).long()
    y1 = y0 + (torch.rand(b, generator=gen) * (h - y0)).long()
    boxes = torch.stack([x0, y0, x1, y1], 1)
    boxes[0] = torch.tensor([0, 0, w - 1, h - 1])                       # the full image
    boxes[1] = torch.tensor([3, 2, 3, h - 2])                           # 1 pixel wide
    boxes[2] = torch.tensor([1, h - 1, w - 2, h - 1])                   # 1 pixel tall
    boxes[3] = torch.tensor([w - 1, h - 1, w - 1, h - 1])               # a single pixel
    return boxes


@pytest.mark.parametrize("size", [24, (17, 31), (1, 6), 1])
def test_crop_and_resize_matches_per_sample_interpolate(size) -> None:
    gen = torch.Generator().manual_seed(7)
    images = torch.randn(12, 3, 29, 41, generator=gen)
    boxes = _random_boxes(12, 29, 41, gen)
    got = crop_and_resize(images, boxes, size)
    want = crop_reference(images, boxes, size)
    assert got.shape == want.shape and got.dtype == images.dtype
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # Float boxes with the same (integer) values give the same crops.
    torch.testing.assert_close(crop_and_resize(images, boxes.float(), size), got)


def test_crop_and_resize_detach_and_gradient() -> None:
    gen = torch.Generator().manual_seed(8)
    images = torch.randn(4, 2, 16, 20, generator=gen, requires_grad=True)
    boxes = _random_boxes(4, 16, 20, gen)
    out = crop_and_resize(images, boxes, 9)
    assert not out.requires_grad and out.grad_fn is None
    weights = torch.randn(4, 2, 9, 9, generator=gen)
    (crop_and_resize(images, boxes, 9, detach=False) * weights).sum().backward()
    grad = images.grad.clone()
    images.grad = None
    (crop_reference(images, boxes, 9) * weights).sum().backward()
    torch.testing.assert_close(grad, images.grad, atol=1e-4, rtol=1e-4)


def test_crop_and_resize_keeps_half_dtype_and_1x1_images() -> None:
    images = torch.randn(2, 3, 8, 8)
    boxes = torch.tensor([[1, 2, 6, 7], [0, 0, 7, 7]])
    out = crop_and_resize(images.half(), boxes, 5)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), crop_reference(images.half().float(), boxes, 5), atol=4e-3, rtol=0)
    tiny = torch.randn(2, 1, 1, 1)
    torch.testing.assert_close(crop_and_resize(tiny, torch.zeros(2, 4, dtype=torch.long), 3),
                               tiny.expand(2, 1, 3, 3))


def test_crop_and_resize_errors_name_the_sample() -> None:
    images = torch.zeros(3, 1, 10, 12)
    ok = torch.tensor([[0, 0, 11, 9]] * 3)
    with pytest.raises(ValueError, match=r"boxes must be \[B, 4\]"):
        crop_and_resize(images, ok[:2], 4)
    with pytest.raises(ValueError, match=r"images must be \[B, C, H, W\]"):
        crop_and_resize(images[0], ok, 4)
    for i, bad in [(1, [5, 0, 4, 9]), (2, [0, 6, 11, 5]), (0, [0, 0, 12, 9]), (1, [-1, 0, 3, 3]),
                   (2, [0, 0, 3, 10])]:
        boxes = ok.clone()
        boxes[i] = torch.tensor(bad)
        with pytest.raises(ValueError, match=rf"sample {i} has box \[{bad[0]}, {bad[1]}, {bad[2]}, {bad[3]}\]"):
            crop_and_resize(images, boxes, 4)
    with pytest.raises(ValueError, match="sample 0"):
        crop_and_resize(images, torch.tensor([[0.0, float("nan"), 3.0, 3.0]] * 3), 4)


def test_cells_to_pixels_and_the_mask_to_crop_chain() -> None:
    assert cells_to_pixels(torch.tensor([[3, 2, 4, 3]]), 16).tolist() == [[48, 32, 63, 47]]
    assert cells_to_pixels(torch.tensor([[0, 0, 2, 1]]), (8, 4)).tolist() == [[0, 0, 7, 7]]
    # mask_to_box -> cells_to_pixels -> crop covers exactly the pixels of the component's cells.
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, 1:3, 2:4] = True
    mask[1, 3, 0] = True
    images = torch.randn(2, 3, 4 * 6, 5 * 6)
    pix = cells_to_pixels(mask_to_box(mask)[0], 6)
    assert pix.tolist() == [[12, 6, 23, 17], [0, 18, 5, 23]]
    torch.testing.assert_close(crop_and_resize(images, pix, 12), crop_reference(images, pix, 12), atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize("heads", [None, 3])
def test_rollout_row_equals_the_rows_of_the_full_rollout(heads) -> None:
    from shared.attention import attention_rollout_row

    gen = torch.Generator().manual_seed(3)
    shape = (2, heads, 9, 9) if heads else (2, 9, 9)
    layers = [torch.softmax(torch.randn(*shape, generator=gen), -1) for _ in range(4)]
    full = attention_rollout(layers)
    cls = torch.zeros(9)
    cls[0] = 1.0
    torch.testing.assert_close(attention_rollout_row(layers, cls), full[:, 0])
    torch.testing.assert_close(attention_rollout_row(layers, torch.full((9,), 1 / 9)), full.mean(1))
    weights = torch.rand(2, 9, generator=gen)
    torch.testing.assert_close(attention_rollout_row(layers, weights), torch.einsum("bt,bts->bs", weights, full))
    with pytest.raises(ValueError, match="row has shape"):
        attention_rollout_row(layers, torch.ones(8))
