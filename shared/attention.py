"""Batched attention machinery shared by RAMS-Trans and DiD: rollout, mask -> box, crop -> resize.

* :func:`attention_rollout`: Abnar & Zuidema rollout as both official codes compute it
  (docs/papers/rams_trans.md §2, docs/papers/did.md §3): head mean, ``(A + I)`` row-normalised,
  ``J = A_L ... A_1``.
* :func:`mask_to_box`: bounding box of the largest 8-connected component of each boolean map, exactly what
  ``skimage.measure.label(connectivity=2)`` / ``scipy.ndimage.label`` + largest area gives
  (docs/papers/rams_trans.md §3.2), but labelled on the device for the whole batch at once.
* :func:`crop_and_resize`: ``F.interpolate(img[:, y0:y1+1, x0:x1+1], size, 'bilinear', align_corners=True)``
  for every sample in one ``grid_sample`` (docs/papers/rams_trans.md §3.4-3.5, docs/papers/did.md §5.5).
* :func:`cells_to_pixels`: exclusive cell box -> inclusive pixel box (generic; project quirks stay in projects).

Everything is batched tensor code on the input's device; there is no Python loop over samples (except mask -> box
on a CPU tensor, which labels map by map in OpenCV's C code: faster there than the batched loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_rollout", "attention_rollout_row", "cells_to_pixels", "crop_and_resize", "mask_to_box"]


# ----------------------------------------------------------------------------------------------------------
# Attention rollout
# ----------------------------------------------------------------------------------------------------------
def attention_rollout(attentions: Sequence[Tensor], start_layer: int = 0) -> Tensor:
    """Attention rollout ``J = Â_L @ ... @ Â_{start}`` as a float32 ``[B, T, T]`` tensor.

    ``attentions``: per-layer tensors, each ``[B, T, T]`` (already head-averaged) or ``[B, H, T, T]``
    (averaged over heads here), first layer first. Per layer ``Â = (A + I) / rowsum(A + I)``: the official
    codes normalise ROWS (sum over the last dim), not the columns of the paper's ``normc``
    (docs/papers/rams_trans.md §2.3). Computed in float32 whatever the input dtype. ``start_layer`` skips early layers.
    Autograd passes through; wrap the call in ``torch.no_grad()`` when no gradient is wanted (the papers).
    """
    if not isinstance(attentions, Sequence) or isinstance(attentions, Tensor):
        raise ValueError("attention_rollout: `attentions` must be a list/tuple of per-layer tensors")
    if not 0 <= start_layer < max(len(attentions), 1):
        raise ValueError(f"attention_rollout: start_layer={start_layer} is out of range for "
                         f"{len(attentions)} layer(s)")
    layers = list(attentions)[start_layer:]
    if not layers:
        raise ValueError("attention_rollout: got an empty list of attention maps")
    shape = None
    rollout = None
    for i, a in enumerate(layers, start=start_layer):
        if not isinstance(a, Tensor) or a.ndim not in (3, 4) or a.shape[-1] != a.shape[-2]:
            got = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
            raise ValueError(f"attention_rollout: layer {i} must be [B, T, T] or [B, H, T, T], got {got}")
        # mean(dtype=float32) averages half inputs in float32 without a full float32 copy first.
        a = a.mean(1, dtype=torch.float32) if a.ndim == 4 else a.float()
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise ValueError(f"attention_rollout: layer {i} has (head-averaged) shape {tuple(a.shape)}, "
                             f"expected {tuple(shape)} like layer {start_layer}")
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)   # residual connection
        a = a / a.sum(-1, keepdim=True)                                     # row-normalise (official code)
        rollout = a if rollout is None else torch.bmm(a, rollout)           # J_l = Â_l @ J_{l-1}
    return rollout


def attention_rollout_row(attentions: Sequence[Tensor], row: Tensor) -> Tensor:
    """``row^T J`` for the rollout ``J = Â_L ... Â_1`` of :func:`attention_rollout`, without forming ``J``.

    ``row``: ``[B, T]`` or ``[T]`` weights over the query tokens: the one-hot CLS row gives DiD's spatial map
    (``J[0, :]``, docs/papers/did.md §3); the uniform ``1/T`` row gives RAMS-Trans' column mean over all rows
    (docs/papers/rams_trans.md §2.5). The row is pushed through the product from the left, one ``[B, T] x [B, T, T]``
    product per layer instead of ``T x T x T`` products. Returns float32 ``[B, T]``.
    """
    if not isinstance(attentions, Sequence) or isinstance(attentions, Tensor) or not attentions:
        raise ValueError("attention_rollout_row: `attentions` must be a non-empty list of per-layer tensors")
    v = None
    for a in reversed(list(attentions)):  # deepest layer first
        a = a.mean(1, dtype=torch.float32) if a.ndim == 4 else a.float()
        if v is None:
            if row.shape not in (a.shape[:2], a.shape[-1:]):
                raise ValueError(f"attention_rollout_row: row has shape {tuple(row.shape)}, expected "
                                 f"[{a.shape[0]}, {a.shape[-1]}] or [{a.shape[-1]}]")
            v = row.float().expand(a.shape[0], a.shape[-1])
        # Â = (A + I) / d with d = rowsum(A) + 1, so v Â = (v / d) A + v / d: one read of A per layer.
        scaled = v / (a.sum(-1) + 1.0)
        v = torch.bmm(scaled[:, None], a)[:, 0] + scaled
    return v


# ----------------------------------------------------------------------------------------------------------
# Largest 8-connected component -> bounding box
# ----------------------------------------------------------------------------------------------------------
def _min_3x3(src: Tensor, tmp: Tensor, out: Tensor, row: int) -> None:
    """``out`` = 3x3 minimum of ``src`` (flat padded grids, rows of length ``row``) at the inner cells."""
    n = src.numel()
    h = tmp[1:n - 1]
    torch.minimum(src[:n - 2], src[2:], out=h)               # left and right neighbours ...
    torch.minimum(h, src[1:n - 1], out=h)                    # ... and the cell itself
    v = out[row:n - row]
    torch.minimum(tmp[:n - 2 * row], tmp[2 * row:], out=v)   # then the rows above and below
    torch.minimum(v, tmp[row:n - row], out=v)


def _min_plus(src: Tensor, tmp: Tensor, out: Tensor, row: int) -> None:
    """``out`` = minimum of ``src`` over each inner cell and its 4 edge neighbours (4-connectivity)."""
    n = src.numel()
    v = out[row:n - row]
    torch.minimum(src[:n - 2 * row], src[2 * row:], out=v)      # above and below
    torch.minimum(v, src[row - 1:n - row - 1], out=v)           # left
    torch.minimum(v, src[row + 1:n - row + 1], out=v)           # right
    torch.minimum(v, src[row:n - row], out=v)                   # the cell itself


def _label_components(mask: Tensor, connectivity: int = 8) -> tuple[Tensor, Tensor, int, int]:
    """Label the 8-connected (or 4-connected) components of ``mask [B, H, W]`` (min-label hooking + pointer
    jumping).

    The maps are zero-padded by one cell and flattened into one vector of ``N = B (H + 2) (W + 2)`` cells.
    Each foreground cell ends up holding the flat position of its component's FIRST cell in raster order
    (the smallest position), the order in which ``scipy.ndimage.label`` numbers components. Background cell
    ``u`` holds ``N + u``: larger than every foreground label, and a pointer to its own private root in a
    second half of the parent array, so no two background cells share a parent (scatters with many repeated
    indices are slow on CPU).

    The loop is FastSV (Zhang, Azad & Hu 2020) on the grid graph: every cell takes the smallest grandparent
    label in its 3x3 neighbourhood (aggressive hooking + shortcut), its parent is hooked onto that label too,
    and pointers jump, so the iteration count grows about like the log of the component diameter, not like
    the diameter (a 448x448 snake takes 18 iterations). Returns ``(labels [N] int32 (int64 for huge
    inputs), the same labels as int64, Hp, Wp)``.
    """
    b, h, w = mask.shape
    hp, wp = h + 2, w + 2
    n = b * hp * wp
    dev = mask.device
    # int32 values keep the elementwise minima cheap (int64 min does not vectorise on CPU); gather/scatter
    # need int64 indices, so the labels are kept in both dtypes.
    vdt = torch.int32 if 2 * n < 2**31 else torch.int64
    parent = torch.arange(2 * n, dtype=vdt, device=dev)   # cells [0, N), then the background's roots
    fg = torch.zeros(b, hp, wp, dtype=vdt, device=dev)
    fg[:, 1:-1, 1:-1] = mask
    fg = fg.view(n)
    bg_fill = (1 - fg).mul_(parent[n:])                   # N + u on the background, 0 on the foreground
    f = parent[:n]
    f.mul_(fg).add_(bg_fill)                               # every cell its own root
    del fg
    idx = f.long()
    tmp = torch.full((n,), n, dtype=vdt, device=dev)
    nb = torch.full((n,), n, dtype=vdt, device=dev)
    gf = torch.empty_like(f)
    gf.copy_(f)                                            # grandparents f[f]; f is the identity here
    neighbourhood_min = _min_3x3 if connectivity == 8 else _min_plus
    while True:
        neighbourhood_min(gf, tmp, nb, wp)                 # smallest grandparent around each cell
        torch.maximum(nb, bg_fill, out=nb)                 # the background keeps its own labels
        # nb == f everywhere: every tree is a star and 8-neighbours agree, i.e. converged. (Otherwise some
        # nb[u] < f[u], so the update below strictly lowers a label and the loop terminates.)
        if torch.equal(nb, f):
            return f, idx, hp, wp
        parent.scatter_reduce_(0, idx, nb, "amin")        # hook each parent onto its children's minimum
        torch.minimum(f, nb, out=f)                        # aggressive hooking + shortcut (nb <= f[f])
        idx.copy_(f)
        torch.gather(parent, 0, idx, out=gf)               # pointer jumping


def _mask_to_box_opencv(mask: Tensor, measure: RegionMeasure) -> tuple[Tensor, Tensor]:
    """:func:`mask_to_box` for a CPU ``mask``, one map at a time in OpenCV's C code (the per-sample labelling a CPU
    runs fastest). ``pixels``: ``connectedComponentsWithStats`` (8-connected areas and boxes in one pass); equal
    areas go to the component whose first pixel comes first in raster order. ``contour_area``: DiD's official rule
    itself, ``max(findContours(RETR_TREE), key=contourArea)`` and its bounding rectangle (docs/papers/did.md §5.4)."""
    b, h, w = mask.shape
    maps = mask.numpy().astype(np.uint8)
    boxes = np.tile(np.array([0, 0, w, h], dtype=np.int64), (b, 1))
    found = np.zeros(b, dtype=bool)
    for i, m in enumerate(maps):
        if measure == "contour_area":
            contours, _ = cv2.findContours(m, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
            if not contours:
                continue
            x, y, bw, bh = cv2.boundingRect(max(contours, key=cv2.contourArea))
        else:
            n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
            if n < 2:
                continue
            area = stats[1:, cv2.CC_STAT_AREA]
            tied = np.flatnonzero(area == area.max()) + 1
            best = tied[0] if len(tied) == 1 else tied[np.argmin([np.argmax(labels.reshape(-1) == t) for t in tied])]
            x, y, bw, bh = stats[best, :4]
        boxes[i] = (x, y, x + bw, y + bh)
        found[i] = True
    return torch.from_numpy(boxes), torch.from_numpy(found)


RegionMeasure = Literal["pixels", "contour_area"]
Labelling = Literal["auto", "device", "c"]


def mask_to_box(mask: Tensor, measure: RegionMeasure = "pixels", labelling: Labelling = "auto"
                ) -> tuple[Tensor, Tensor]:
    """Bounding box of the largest 8-connected component of every map in ``mask``.

    ``mask``: bool ``[B, H, W]`` (any H, W). Returns ``(boxes, found)``:

    * ``boxes`` int64 ``[B, 4]`` = ``(x0, y0, x1, y1)`` in cell units with ``x1``/``y1`` EXCLUSIVE (a single
      cell at row r, column c gives ``(c, r, c + 1, r + 1)``); an empty map gives the whole map
      ``(0, 0, W, H)`` (the defined fallback; the official RAMS-Trans code crashes there: docs/papers/rams_trans.md §3);
    * ``found`` bool ``[B]``, False for an empty map.

    Components are 8-connected (``skimage.measure.label(connectivity=2)`` in RAMS-Trans). Equal-area ties go
    to the component whose first pixel in raster order comes first, i.e. the one ``scipy.ndimage.label``
    numbers first, so results equal the per-sample scipy loop exactly. ``measure="contour_area"`` is DiD's
    official rule instead (:func:`_contour_keys`): the largest ``cv2.contourArea`` of the outer contour, ties to
    the component found LAST in raster order (the first in OpenCV's list).

    ``labelling`` picks how components are found, with identical results: ``"device"`` batched on
    ``mask.device`` (the loop syncs once per iteration for its convergence test, about 5-20 iterations; on CPU it
    runs on one thread), ``"c"`` OpenCV's C code map by map on the CPU (:func:`_mask_to_box_opencv`), ``"auto"``
    (the default) ``"c"`` for a CPU tensor, the batched one on an accelerator (on 2 CPU cores the batched loop
    ran at 0.10x a per-sample scipy loop on 32 maps of 448x448; it is built for GPUs).
    """
    if not isinstance(mask, Tensor) or mask.ndim != 3 or mask.dtype != torch.bool:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask_to_box: expected a bool tensor [B, H, W], got {got}")
    if measure not in ("pixels", "contour_area"):
        raise ValueError(f"mask_to_box: measure must be 'pixels' or 'contour_area', got {measure!r}")
    if labelling not in ("auto", "device", "c"):
        raise ValueError(f"mask_to_box: labelling must be 'auto', 'device' or 'c', got {labelling!r}")
    b, h, w = mask.shape
    dev = mask.device
    full = torch.tensor([0, 0, w, h], dtype=torch.long, device=dev)
    if b == 0 or h == 0 or w == 0:
        return full.expand(b, 4).clone(), torch.zeros(b, dtype=torch.bool, device=dev)

    if labelling == "c" or (labelling == "auto" and dev.type == "cpu"):
        boxes, found = _mask_to_box_opencv(mask.cpu(), measure)
        return boxes.to(dev), found.to(dev)
    threads = torch.get_num_threads()
    serial = dev.type == "cpu" and threads > 1
    if serial:
        # On CPU run on one thread: the loop is many short memory-bound passes, and waking the intra-op
        # pool for each costs more than it gains (measured 1.3-8x slower with 2 threads on shared cores).
        torch.set_num_threads(1)
    try:
        return _mask_to_box(mask, measure)
    finally:
        if serial:
            torch.set_num_threads(threads)


def _contour_keys(mask: Tensor, labels: Tensor, hp: int, wp: int) -> Tensor:
    """DiD's official region rule as a unique key per padded cell ``[B, Hp * Wp]``: > 0 only at the first cell of
    an outermost component, ``2 * contourArea * cells + position + 1`` (ties: the later first cell wins).

    ``cv2.findContours(RETR_TREE)`` + ``max(contours, key=cv2.contourArea)`` (docs/papers/did.md §5.4): the area of the
    polygon through the outer boundary's pixel centres. Between pixel centres the plane is tiled by unit squares
    whose corners are 2x2 pixel blocks; the 8-connected outer contour encloses a square whose 4 corners lie in
    the component with its holes filled, cuts one with 3 such corners along the diagonal (half), and no other
    square, so the area is a sum over 2x2 blocks. Holes are 4-connected background regions that do not reach
    the map's edge; a region's parent is the region of the pixel above its first pixel, and pointer jumping
    sends every hole and nested component to its outermost enclosing component. Hole and nested contours are
    always smaller than their encloser's outer contour, so only outermost components compete.
    """
    b = mask.shape[0]
    cells = hp * wp
    n = b * cells
    dev = mask.device
    pad = torch.zeros(b, hp, wp, dtype=torch.bool, device=dev)
    inner, fg, edge = pad.clone(), pad.clone(), pad.clone()
    inner[:, 1:-1, 1:-1] = True
    fg[:, 1:-1, 1:-1] = mask
    edge[:, 1:-1, 1:-1] = True
    edge[:, 2:-2, 2:-2] = False
    inner, fg, edge = inner.view(n), fg.view(n), edge.view(n)
    background = _label_components(~mask, connectivity=4)[1]
    region = torch.where(fg, labels.long(), background)                   # each cell's region: its first cell
    region = torch.where(inner, region, torch.full_like(region, n))       # the padding: sentinel n
    outside = torch.zeros(n + 1, dtype=torch.bool, device=dev)
    outside.scatter_(0, torch.where(edge & ~fg, region, n), True)         # background reaching the edge
    outside[n] = True
    cell = torch.arange(n, device=dev)
    first = inner & (region == cell)
    above = region[(cell - wp).clamp_min(0)]                              # the region holding each region
    outermost = first & fg & outside[above]
    ptr = torch.where(outermost, cell, torch.where(first & ~(outside[cell] & ~fg), above, n))
    ptr = torch.cat([ptr, ptr.new_full((1,), n)])
    while True:                                                           # pointer jumping up the nesting
        nxt = ptr[ptr]
        if torch.equal(nxt, ptr):
            break
        ptr = nxt
    top = ptr[region]                                                     # outermost encloser, n = none
    corners = (top[:n - wp - 1], top[1:n - wp], top[wp:n - 1], top[wp + 1:])
    count = sum((c < n).long() for c in corners)
    owner = torch.minimum(torch.minimum(corners[0], corners[1]), torch.minimum(corners[2], corners[3]))
    area2 = torch.zeros(n + 1, dtype=torch.long, device=dev)
    area2.scatter_add_(0, owner, (count == 4).long() * 2 + (count == 3).long())
    key = area2[:n] * cells + cell % cells + 1
    return torch.where(outermost, key, torch.zeros_like(key)).view(b, cells)


def _mask_to_box(mask: Tensor, measure: RegionMeasure = "pixels") -> tuple[Tensor, Tensor]:
    """:func:`mask_to_box` for a validated, non-empty ``mask``, batched on its device."""
    b, h, w = mask.shape
    dev = mask.device
    labels, idx, hp, wp = _label_components(mask)
    cells = hp * wp
    n = b * cells
    if measure == "contour_area":
        key = _contour_keys(mask, labels, hp, wp)
    else:
        # Component areas, indexed by label (background labels >= N fall into the unused second half).
        area = torch.zeros(2 * n, dtype=torch.int32, device=dev)
        area.scatter_add_(0, idx, torch.ones(1, dtype=torch.int32, device=dev).expand(n))
        # Largest area; ties -> the smallest label = the earliest first pixel (a unique key, so no reliance on
        # which of several equal maxima a device's max() returns).
        key = area[:n].view(b, cells).long() * cells - torch.arange(cells, device=dev)
    top, best = key.max(1)
    found = top > 0                                        # an area >= 1 gives a key >= 1
    chosen = labels.view(b, hp, wp) == (best + torch.arange(0, n, cells, device=dev)).to(labels.dtype)[
        :, None, None]
    rows = chosen.any(2)                                   # [B, Hp] padded rows holding the component
    cols = chosen.any(1)                                   # [B, Wp]
    ar_h = torch.arange(hp, device=dev)
    ar_w = torch.arange(wp, device=dev)
    y0 = best // wp - 1                                    # the first pixel lies in the top row
    y1 = (rows * ar_h).amax(1)                             # last padded row = exclusive unpadded end
    x1 = (cols * ar_w).amax(1)
    x0 = wp - 1 - (cols * (wp - ar_w)).amax(1)             # first padded column - 1
    boxes = torch.stack([x0, y0, x1, y1], 1)
    full = torch.tensor([0, 0, w, h], dtype=torch.long, device=dev)
    return torch.where(found[:, None], boxes, full), found


# ----------------------------------------------------------------------------------------------------------
# Boxes -> crops
# ----------------------------------------------------------------------------------------------------------
def cells_to_pixels(boxes_cells: Tensor, cell_size: int | tuple[int, int]) -> Tensor:
    """Exclusive cell box ``(x0, y0, x1, y1)`` (from :func:`mask_to_box`) -> INCLUSIVE pixel box.

    ``(x0 * Pw, y0 * Ph, x1 * Pw - 1, y1 * Ph - 1)`` with ``cell_size = P`` or ``(Ph, Pw)``: the first and
    last pixel column/row covered by the cells, as :func:`crop_and_resize` expects. Generic conversion only:
    RAMS-Trans' extra -1 shift of x0/y0 (docs/papers/rams_trans.md §3.3) is applied by that project.
    """
    ph, pw = (cell_size, cell_size) if isinstance(cell_size, int) else cell_size
    if boxes_cells.ndim != 2 or boxes_cells.shape[-1] != 4:
        raise ValueError(f"cells_to_pixels: boxes must be [B, 4], got {tuple(boxes_cells.shape)}")
    scale = boxes_cells.new_tensor([pw, ph, pw, ph])
    shift = boxes_cells.new_tensor([0, 0, 1, 1])
    return boxes_cells * scale - shift


def crop_and_resize(images: Tensor, boxes: Tensor, size: int | tuple[int, int], *,
                    detach: bool = True) -> Tensor:
    """Crop every image to its box and resize it bilinearly (align_corners=True) to ``size``.

    ``images``: ``[B, C, H, W]``. ``boxes``: ``[B, 4]`` as INCLUSIVE pixel coordinates ``(x0, y0, x1, y1)``:
    the first and last pixel column / row to keep, so the crop is ``img[:, y0:y1 + 1, x0:x1 + 1]``; need
    ``0 <= x0 <= x1 <= W - 1`` and ``0 <= y0 <= y1 <= H - 1`` (1-pixel-wide boxes are fine). Integer or
    float (fractional corners are sampled bilinearly). ``size``: ``S`` or ``(S_h, S_w)``.

    Equals, per sample, ``F.interpolate(img[None, :, y0:y1+1, x0:x1+1], size, mode="bilinear",
    align_corners=True)`` (both official codes, docs/papers/rams_trans.md §3.5 / docs/papers/did.md §5.5):
    output pixel ``(i, j)`` samples ``(y0 + i (y1 - y0) / (S_h - 1), x0 + j (x1 - x0) / (S_w - 1))``. Done for the
    whole batch in one
    ``grid_sample``. Returns ``[B, C, S_h, S_w]`` in the images' dtype. ``detach=True`` (the papers detach
    the crops) computes under ``no_grad``; ``detach=False`` keeps the gradient to ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"crop_and_resize: images must be [B, C, H, W], got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if boxes.shape != (b, 4):
        raise ValueError(f"crop_and_resize: boxes must be [B, 4] = [{b}, 4], got {tuple(boxes.shape)}")
    sh, sw = (size, size) if isinstance(size, int) else tuple(size)
    if sh < 1 or sw < 1:
        raise ValueError(f"crop_and_resize: size must be positive, got {size}")
    bx = boxes.detach().double()
    x0, y0, x1, y1 = bx.unbind(1)
    bad = (x0 < 0) | (y0 < 0) | (x1 > w - 1) | (y1 > h - 1) | (x0 > x1) | (y0 > y1) | ~bx.isfinite().all(1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"crop_and_resize: sample {i} has box {boxes[i].tolist()} (inclusive x0, y0, x1, y1); "
                         f"need 0 <= x0 <= x1 <= {w - 1} and 0 <= y0 <= y1 <= {h - 1} for images of size "
                         f"{h}x{w}")
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
        # Sample positions in pixels, then grid_sample's align_corners=True normalisation (-1 = pixel 0,
        # +1 = pixel size-1). float64 for the coordinates, cast to the sampling dtype at the end.
        ti = torch.arange(sh, dtype=torch.float64, device=images.device) / max(sh - 1, 1)
        tj = torch.arange(sw, dtype=torch.float64, device=images.device) / max(sw - 1, 1)
        ys = y0[:, None] + ti * (y1 - y0)[:, None]                  # [B, S_h]
        xs = x0[:, None] + tj * (x1 - x0)[:, None]                  # [B, S_w]
        ys = ys * (2.0 / max(h - 1, 1)) - 1.0
        xs = xs * (2.0 / max(w - 1, 1)) - 1.0
        sdt = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), -1).to(sdt)
        out = F.grid_sample(images.to(sdt), grid, mode="bilinear", padding_mode="border",
                            align_corners=True)
        out = out.to(images.dtype)
    return out.detach() if detach else out
