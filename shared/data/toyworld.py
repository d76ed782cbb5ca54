"""A deterministic, seeded procedural "toy world": scenes of coloured shapes with small parts.

Every project builds its embedded toy dataset from this one renderer and writes it in its
paper's real on-disk format. A scene is plain data (:class:`Scene`), sampled from a
``numpy.random.Generator`` by :func:`sample_scene` (or assembled from :func:`make_object`),
described in English by :func:`caption` and drawn by :func:`render`; the same scene always
gives the same pixels.

Geometry conventions: pixel ``(x, y)`` has its centre at integer coordinates, ``x`` to the
right and ``y`` down. An object's ``size`` is its extent in pixels before rotation (every
unit shape spans ``[-1, 1]`` on its longer axis); ``angle`` is in degrees, counter-clockwise
on screen. Boxes are ``(x0, y0, x1, y1)`` integers with ``x1``/``y1`` exclusive, so every drawn
pixel satisfies ``x0 <= x < x1`` and ``img.crop(box)`` holds the whole object.

Clutter (see :func:`sample_clutter`) never uses the category shapes at object scale: it is
thin 1-2 px lines, 1 px scribbles (open polylines) and tiny ellipse blobs at most ~6% of the
image side across (the smallest default object is 15%), drawn *behind* the objects, plus a
low-frequency texture on the background. Objects are therefore never hidden by clutter.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]

COLORS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 30),
    "green": (30, 170, 50),
    "cyan": (40, 215, 225),
    "blue": (35, 70, 225),
    "purple": (140, 40, 190),
    "pink": (250, 130, 200),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
"""Named object colours: saturated or extreme, all far from the muted backgrounds."""

BACKGROUNDS: dict[str, RGB] = {
    "gray": (128, 128, 128),
    "slate": (96, 106, 122),
    "taupe": (142, 130, 114),
    "moss": (106, 118, 96),
}
"""Named background colours: mid-luminance and low saturation, so every colour in COLORS shows."""


def _regular(n: int, inner: float | None = None, start: float = -90.0) -> tuple[tuple[float, float], ...]:
    """Unit regular polygon (or star when ``inner`` is given), normalised to span [-1, 1]."""
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        r = inner if inner and i % 2 else 1.0
        a = math.radians(start + 360.0 * i / k)
        pts.append((r * math.cos(a), r * math.sin(a)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return tuple(((x - cx) / half, (y - cy) / half) for x, y in pts)


_T = 0.34  # half-thickness of the cross arms
_UNIT_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "square": ((-1, -1), (1, -1), (1, 1), (-1, 1)),
    "triangle": _regular(3),
    "diamond": ((0, -1), (0.7, 0), (0, 1), (-0.7, 0)),
    "hexagon": _regular(6, start=0.0),
    "pentagon": _regular(5),
    "star": _regular(5, inner=0.42),
    "cross": ((-_T, -1), (_T, -1), (_T, -_T), (1, -_T), (1, _T), (_T, _T), (_T, 1), (-_T, 1), (-_T, _T),
              (-1, _T), (-1, -_T), (-_T, -_T)),
    "arrow": ((-1, -0.28), (0.15, -0.28), (0.15, -0.72), (1, 0), (0.15, 0.72), (0.15, 0.28), (-1, 0.28)),
}

def _semicircle(n: int = 12) -> tuple[tuple[float, float], ...]:
    """Unit half-disc, flat side down, spanning x in [-1, 1] and y in [-0.5, 0.5]."""
    return tuple((math.cos(math.pi * i / n), 0.5 - math.sin(math.pi * i / n)) for i in range(n + 1))


# The pretraining tier's shapes (shared/pretrain): never a downstream category, as ImageNet's classes are not CUB's.
_UNIT_POLYGONS.update({
    "heptagon": _regular(7),
    "octagon": _regular(8, start=22.5),
    "star4": _regular(4, inner=0.38),
    "star6": _regular(6, inner=0.55),
    "rectangle": ((-1, -0.5), (1, -0.5), (1, 0.5), (-1, 0.5)),
    "trapezoid": ((-1, 0.6), (1, 0.6), (0.45, -0.6), (-0.45, -0.6)),
    "parallelogram": ((-1, 0.5), (0.4, 0.5), (1, -0.5), (-0.4, -0.5)),
    "kite": ((0, -1), (0.55, -0.35), (0, 1), (-0.55, -0.35)),
    "chevron": ((-1, -0.7), (0, 0.1), (1, -0.7), (1, -0.1), (0, 0.7), (-1, -0.1)),
    "lshape": ((-1, -1), (-0.3, -1), (-0.3, 0.3), (1, 0.3), (1, 1), (-1, 1)),
    "tshape": ((-1, -1), (1, -1), (1, -0.4), (0.3, -0.4), (0.3, 1), (-0.3, 1), (-0.3, -0.4), (-1, -0.4)),
    "semicircle": _semicircle(),
})
PRETRAIN_SHAPES: tuple[str, ...] = ("heptagon", "octagon", "star4", "star6", "rectangle", "trapezoid",
                                    "parallelogram", "kite", "chevron", "lshape", "tshape", "semicircle")
"""Object kinds of the pretraining corpus only, disjoint from :data:`SHAPES` (the downstream categories)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon",
                           "pentagon", "arrow")
"""Object kinds (the categories). ``circle`` and ``ring`` are ellipses, the rest polygons."""

RING_WIDTH = 0.32
"""Ring stroke width as a fraction of the ring's radius."""

PART_KINDS: tuple[str, ...] = ("dot", "stripe", "notch", "corner")
"""Part kinds: a round dot, a bar across the body, a wedge at the rim, a small square at a corner."""

PART_NOUNS: dict[str, str] = {"dot": "dot", "stripe": "stripe", "notch": "notch", "corner": "corner patch"}
"""How captions name each part kind (avoids the word "square", which is a shape)."""

PART_COLORS: tuple[str, ...] = ("red", "yellow", "green", "blue", "white", "black", "cyan", "pink")
"""Default part colours (a part never takes its object's colour)."""

SMALL_FRAC, LARGE_FRAC = 0.2, 0.3
"""Captions call an object "small" when size <= SMALL_FRAC * image side, "large" when >= LARGE_FRAC."""


@dataclass(frozen=True)
class ToyPart:
    """A small coloured detail on an object, the fine-grained cue.

    ``offset`` is the part's centre in the object's own frame, in units of the object's half-size
    (it rotates with the object); ``size`` is in pixels (dot diameter, stripe thickness x 2,
    notch base/height, corner side). Default offsets keep parts on the body of compact shapes;
    on thin ones (star, cross, arrow) a notch or corner patch may stick out; the object's box
    always includes the part.
    """

    kind: str
    color: str
    offset: tuple[float, float]
    size: float


@dataclass(frozen=True)
class ToyObject:
    """One category object: a shape ``kind`` in a named ``color``, ``size`` px across, at ``center``."""

    kind: str
    color: str
    size: float
    center: tuple[float, float]
    angle: float = 0.0
    part: ToyPart | None = None

    @property
    def bbox(self) -> Box:
        """Pixel box ``(x0, y0, x1, y1)`` (exclusive end) around the object and its part, unclipped."""
        return _box_of(draw_ops(self))

    @property
    def part_bbox(self) -> Box | None:
        """Pixel box ``(x0, y0, x1, y1)`` (exclusive end) of the part alone, unclipped; ``None`` without one."""
        return None if self.part is None else _box_of(draw_ops(self)[-1:])


@dataclass(frozen=True)
class Clutter:
    """A distractor primitive drawn behind the objects.

    ``kind`` is ``"line"`` (two points, ``width`` px), ``"scribble"`` (open polyline, ``width``
    px) or ``"blob"`` (filled ellipse in the box given by its two points).
    """

    kind: str
    color: RGB
    points: tuple[tuple[float, float], ...]
    width: int = 1


@dataclass(frozen=True)
class Scene:
    """A square scene: ``size`` px, a named ``background``, objects, clutter and a caption.

    ``texture`` is the amplitude (grey levels) of the smooth background texture and ``noise``
    the std of per-pixel Gaussian noise on the final image; both come from ``seed``.
    """

    size: int
    background: str
    objects: tuple[ToyObject, ...]
    clutter: tuple[Clutter, ...] = ()
    caption: str = ""
    texture: float = 0.0
    noise: float = 0.0
    seed: int = 0

    def boxes(self) -> list[Box]:
        """Every object's box clipped to the image, in object order."""
        s = self.size
        return [(max(0, x0), max(0, y0), min(s, x1), min(s, y1)) for x0, y0, x1, y1 in
                (o.bbox for o in self.objects)]


# --------------------------------------------------------------------------------------------- geometry

def _transform(pts: Iterable[tuple[float, float]], scale: float, angle: float, dx: float, dy: float,
               ox: float = 0.0, oy: float = 0.0) -> list[tuple[float, float]]:
    """Shift by (ox, oy) in the unit frame, scale, rotate by ``angle`` degrees, then translate."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    out = []
    for x, y in pts:
        x, y = (x + ox) * scale, (y + oy) * scale
        out.append((dx + c * x + s * y, dy - s * x + c * y))
    return out


def _part_unit(kind: str, ox: float, oy: float, s: float) -> list[tuple[float, float]]:
    """Part polygon in the object's unit frame (``s`` = part size in unit lengths)."""
    h = s / 2
    if kind == "stripe":
        return [(ox - 2 * h, oy - h / 2), (ox + 2 * h, oy - h / 2), (ox + 2 * h, oy + h / 2),
                (ox - 2 * h, oy + h / 2)]
    if kind == "corner":
        return [(ox - h, oy - h), (ox + h, oy - h), (ox + h, oy + h), (ox - h, oy + h)]
    if kind == "notch":  # wedge whose apex points at the object's centre
        d = math.hypot(ox, oy) or 1.0
        ux, uy = -ox / d, -oy / d
        return [(ox + ux * h, oy + uy * h), (ox - ux * h - uy * h, oy - uy * h + ux * h),
                (ox - ux * h + uy * h, oy - uy * h - ux * h)]
    raise ValueError(f"unknown part kind {kind!r}; expected one of {PART_KINDS}")


def draw_ops(obj: ToyObject) -> list[tuple]:
    """Drawing primitives of an object: ``("poly", points, rgb)`` or ``("ellipse", box, rgb, width)``.

    ``width`` 0 means filled. The shape comes first and the part (if any) last.
    """
    if obj.color not in COLORS:
        raise ValueError(f"unknown colour {obj.color!r}; expected one of {tuple(COLORS)}")
    rgb = COLORS[obj.color]
    cx, cy = obj.center
    r = obj.size / 2
    if obj.kind in ("circle", "ring"):
        width = 0 if obj.kind == "circle" else max(2, round(RING_WIDTH * r))
        ops: list[tuple] = [("ellipse", (cx - r, cy - r, cx + r, cy + r), COLORS[obj.color], width)]
    elif obj.kind in _UNIT_POLYGONS:
        ops = [("poly", _transform(_UNIT_POLYGONS[obj.kind], r, obj.angle, cx, cy), rgb)]
    else:
        raise ValueError(f"unknown shape {obj.kind!r}; expected one of {SHAPES}")
    p = obj.part
    if p is not None:
        if p.color not in COLORS:
            raise ValueError(f"unknown part colour {p.color!r}; expected one of {tuple(COLORS)}")
        prgb = COLORS[p.color]
        if p.kind == "dot":
            (px, py), = _transform([p.offset], r, obj.angle, cx, cy)
            h = p.size / 2
            ops.append(("ellipse", (px - h, py - h, px + h, py + h), prgb, 0))
        else:
            unit = _part_unit(p.kind, p.offset[0], p.offset[1], p.size / max(r, 1e-6))
            ops.append(("poly", _transform(unit, r, obj.angle, cx, cy), prgb))
    return ops


def _box_of(ops: Sequence[tuple], dx: float = 0.0, dy: float = 0.0) -> Box:
    """Exclusive integer box covering every pixel PIL draws for ``ops`` shifted by (dx, dy)."""
    x0, y0, x1, y1 = _extent(ops)
    return (math.floor(x0 + dx), math.floor(y0 + dy), math.ceil(x1 + dx) + 1, math.ceil(y1 + dy) + 1)


def _extent(ops: Sequence[tuple]) -> tuple[float, float, float, float]:
    """Float extents (min x, min y, max x, max y) of drawing primitives."""
    xs: list[float] = []
    ys: list[float] = []
    for op in ops:
        if op[0] == "poly":
            xs += [p[0] for p in op[1]]
            ys += [p[1] for p in op[1]]
        else:
            xs += [op[1][0], op[1][2]]
            ys += [op[1][1], op[1][3]]
    return min(xs), min(ys), max(xs), max(ys)


# --------------------------------------------------------------------------------------------- sampling

def _pick(rng: np.random.Generator, options: Sequence[str], exclude: str | None = None) -> str:
    opts = [o for o in options if o != exclude] or list(options)
    return opts[int(rng.integers(len(opts)))]


def make_part(rng: np.random.Generator, object_size: float, kind: str | None = None, color: str | None = None,
              size: float | None = None, offset: tuple[float, float] | None = None, *,
              kinds: Sequence[str] = PART_KINDS, colors: Sequence[str] = PART_COLORS,
              exclude_color: str | None = None, scale: tuple[float, float] = (0.28, 0.4)) -> ToyPart:
    """A part for an object ``object_size`` px across; ``None`` arguments are sampled.

    ``size`` defaults to ``object_size * U(scale)``; ``offset`` to a kind-specific spot inside the
    body (dots near the centre, stripes across it, notches and corner patches near the rim).
    """
    kind = kind or _pick(rng, kinds)
    color = color or _pick(rng, colors, exclude_color)
    if size is None:
        size = float(object_size * rng.uniform(*scale))
    if offset is None:
        if kind == "dot":
            a, d = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.3)
            offset = (d * math.cos(a), d * math.sin(a))
        elif kind == "stripe":
            offset = (0.0, float(rng.uniform(-0.25, 0.25)))
        elif kind == "notch":
            a = rng.uniform(0, 2 * math.pi)
            offset = (0.6 * math.cos(a), 0.6 * math.sin(a))
        else:
            offset = (0.45 * float(rng.choice([-1, 1])), 0.45 * float(rng.choice([-1, 1])))
    return ToyPart(kind, color, (float(offset[0]), float(offset[1])), float(size))


def _default_object_size(scene_size: int) -> tuple[float, float]:
    return (0.15 * scene_size, 0.35 * scene_size)


def make_object(rng: np.random.Generator, scene_size: int = 96, kind: str | None = None,
                color: str | None = None, size: float | None = None,
                center: tuple[float, float] | None = None, angle: float | None = None,
                part: ToyPart | bool | None = None, *, part_kind: str | None = None,
                part_color: str | None = None, shapes: Sequence[str] = SHAPES,
                colors: Sequence[str] = tuple(COLORS),
                object_size: tuple[float, float] | None = None, part_kinds: Sequence[str] = PART_KINDS,
                part_colors: Sequence[str] = PART_COLORS, part_scale: tuple[float, float] = (0.28, 0.4),
                rotate: bool = True) -> ToyObject:
    """One object; every ``None`` argument is sampled, so any attribute can be forced.

    ``part``: a :class:`ToyPart` is used as is, ``True`` samples one (``part_kind``/``part_color``
    force its kind/colour), ``None``/``False`` gives none. Without ``center`` the object is placed
    uniformly where its whole box (part included) fits in a ``scene_size`` image.
    """
    kind = kind or _pick(rng, shapes)
    color = color or _pick(rng, colors)
    lo, hi = object_size or _default_object_size(scene_size)
    size = float(size if size is not None else rng.uniform(lo, hi))
    if angle is None:
        angle = float(rng.uniform(0, 360)) if rotate and kind not in ("circle", "ring") else 0.0
    if part is True:
        part = make_part(rng, size, part_kind, part_color, kinds=part_kinds, colors=part_colors,
                         exclude_color=color, scale=part_scale)
    obj = ToyObject(kind, color, size, (0.0, 0.0), float(angle), part or None)
    if center is None:
        center = _random_center(rng, obj.bbox, scene_size)
    return replace(obj, center=(float(center[0]), float(center[1])))


def _random_center(rng: np.random.Generator, rel: Box, scene_size: int) -> tuple[float, float]:
    """A centre that puts the box ``rel`` (relative to a centre at 0, 0) inside the image."""
    out = []
    for lo, hi in ((rel[0], rel[2]), (rel[1], rel[3])):
        a, b = -lo + 1, scene_size - hi - 1
        out.append(float(rng.uniform(a, b)) if b > a else (a + b) / 2)
    return out[0], out[1]


def _overlap(a: Box, b: Box) -> float:
    """Intersection area over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / max(small, 1)


def sample_clutter(rng: np.random.Generator, size: int, n: int, background: str = "gray",
                   colors: Sequence[str] = tuple(COLORS), palette_prob: float = 0.5) -> list[Clutter]:
    """``n`` distractor primitives: thin lines, scribbles and tiny blobs (never object-scale shapes).

    Each takes a named colour from ``colors`` with probability ``palette_prob`` (so colour alone
    never reveals a part or object), otherwise a muted tone within +-70 grey levels of the background.
    """
    if n <= 0:
        return []
    u = rng.random((n, 9)).tolist()
    tone = rng.integers(-70, 71, size=(n, 4)).tolist()
    walk = rng.normal(0, 0.08 * size, size=(n, 5, 2)).cumsum(axis=1).tolist()
    bg = BACKGROUNDS[background]
    blob_max = max(1.0, 0.03 * size)
    out = []
    for (k, pal, ci, x, y, a, b, c, d), t, steps in zip(u, tone, walk, strict=True):
        x, y = x * size, y * size
        if colors and pal < palette_prob:
            rgb = COLORS[colors[int(ci * len(colors))]]
        else:
            rgb = tuple(min(255, max(0, ch + t[3] + dt // 2)) for ch, dt in zip(bg, t[:3], strict=True))
        if k < 0.4:
            length, ang = (0.15 + 0.35 * a) * size, 2 * math.pi * b
            pts = ((x, y), (x + length * math.cos(ang), y + length * math.sin(ang)))
            out.append(Clutter("line", rgb, pts, 1 + int(c < 0.5)))
        elif k < 0.6:
            m = 3 + int(c * 3)
            pts = ((x, y),) + tuple((x + dx, y + dy) for dx, dy in steps[:m])
            out.append(Clutter("scribble", rgb, pts, 1))
        else:
            rx, ry = 0.5 + (blob_max - 0.5) * c, 0.5 + (blob_max - 0.5) * d
            out.append(Clutter("blob", rgb, ((x - rx, y - ry), (x + rx, y + ry)), 0))
    return out


def sample_scene(rng: np.random.Generator, size: int = 96, n_objects: int | tuple[int, int] = (1, 4), *,
                 objects: Sequence[ToyObject] = (), shapes: Sequence[str] = SHAPES,
                 colors: Sequence[str] = tuple(COLORS), object_size: tuple[float, float] | None = None,
                 part_prob: float = 0.3, part_kinds: Sequence[str] = PART_KINDS,
                 part_colors: Sequence[str] = PART_COLORS, clutter: int = 12,
                 clutter_palette_prob: float = 0.5,
                 backgrounds: Sequence[str] = tuple(BACKGROUNDS), texture: float = 12.0, noise: float = 0.0,
                 unique_kinds: bool = False, max_overlap: float = 0.0, tries: int = 40) -> Scene:
    """A random scene with its caption.

    ``objects`` are forced objects kept as given (e.g. the one whose part decides the class);
    ``n_objects`` (an int or inclusive range) more are sampled and placed so that their boxes
    overlap earlier boxes by at most ``max_overlap`` (of the smaller box); after ``tries`` failed
    placements the least-overlapping candidate is used. ``object_size`` defaults to 15-35% of
    ``size``; ``unique_kinds`` makes every object a different shape.
    """
    n = n_objects if isinstance(n_objects, int) else int(rng.integers(n_objects[0], n_objects[1] + 1))
    placed = list(objects)
    boxes = [o.bbox for o in placed]
    kinds_left = [k for k in shapes if k not in {o.kind for o in placed}] if unique_kinds else list(shapes)
    for _ in range(n):
        if not kinds_left:
            break
        obj = make_object(rng, size, kind=_pick(rng, kinds_left), center=(0.0, 0.0),
                          part=bool(rng.random() < part_prob), colors=colors, object_size=object_size,
                          part_kinds=part_kinds, part_colors=part_colors)
        if unique_kinds:
            kinds_left.remove(obj.kind)
        ops = draw_ops(obj)
        rel, best, best_score = _box_of(ops), (0.0, 0.0), math.inf
        for _ in range(max(1, tries)):
            c = _random_center(rng, rel, size)
            box = _box_of(ops, *c)
            score = max((_overlap(box, b) for b in boxes), default=0.0)
            if score < best_score:
                best, best_box, best_score = c, box, score
            if score <= max_overlap:
                break
        placed.append(replace(obj, center=best))
        boxes.append(best_box)
    background = _pick(rng, backgrounds)
    scene = Scene(size, background, tuple(placed),
                  tuple(sample_clutter(rng, size, clutter, background, colors, clutter_palette_prob)),
                  texture=texture, noise=noise, seed=int(rng.integers(2**31)))
    return replace(scene, caption=caption(scene))


# --------------------------------------------------------------------------------------------- captions

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: ToyObject, scene_size: int | None = None, *, with_part: bool = True) -> str:
    """``"small blue ring with a yellow dot"`` (size words only when ``scene_size`` is given)."""
    words = []
    if scene_size:
        if obj.size <= SMALL_FRAC * scene_size:
            words.append("small")
        elif obj.size >= LARGE_FRAC * scene_size:
            words.append("large")
    words += [obj.color, obj.kind]
    text = " ".join(words)
    if with_part and obj.part is not None:
        text += f" with {_article(obj.part.color)} {obj.part.color} {PART_NOUNS[obj.part.kind]}"
    return text


def caption(scene: Scene, *, sizes: bool = True, parts: bool = True) -> str:
    """Plain English caption naming every object in order, e.g. "a red star and a small blue ring"."""
    phrases = [object_phrase(o, scene.size if sizes else None, with_part=parts) for o in scene.objects]
    phrases = [f"{_article(p)} {p}" for p in phrases]
    if not phrases:
        return "an empty scene"
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# --------------------------------------------------------------------------------------------- rendering

def _canvas(scene: Scene, rng: np.random.Generator) -> Image.Image:
    bg = BACKGROUNDS[scene.background]
    if scene.texture <= 0:
        return Image.new("RGB", (scene.size, scene.size), bg)
    coarse = np.asarray(bg, np.float32) + rng.normal(0, scene.texture, size=(5, 5, 3)).astype(np.float32)
    small = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB")
    return small.resize((scene.size, scene.size), Image.Resampling.BILINEAR)


def draw_object(draw: ImageDraw.ImageDraw, obj: ToyObject) -> None:
    """Draw one object (and its part) with ``draw``."""
    for op in draw_ops(obj):
        if op[0] == "poly":
            draw.polygon(op[1], fill=op[2])
        elif op[3]:
            draw.ellipse(op[1], outline=op[2], width=op[3])
        else:
            draw.ellipse(op[1], fill=op[2])


def render(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an RGB image; the same scene always gives the same pixels."""
    rng = np.random.default_rng(scene.seed)
    img = _canvas(scene, rng)
    draw = ImageDraw.Draw(img)
    for c in scene.clutter:
        if c.kind == "blob":
            draw.ellipse(c.points, fill=c.color)
        else:
            draw.line(c.points, fill=c.color, width=c.width)
    for obj in scene.objects:
        draw_object(draw, obj)
    if scene.noise > 0:
        arr = np.asarray(img, np.float32) + rng.normal(0, scene.noise, size=(scene.size, scene.size, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img


def _write(job: tuple[Scene, Path, str, int]) -> Path:
    scene, path, fmt, quality = job
    path.parent.mkdir(parents=True, exist_ok=True)
    img = render(scene)
    if fmt == "png":
        img.save(path, format="PNG", compress_level=1)
    else:
        img.save(path, format="JPEG", quality=quality)
    return path


def render_dataset(scenes: Sequence[Scene], out_dir: str | Path,
                   name_fn: Callable[[int, Scene], str] | None = None, fmt: str = "png", *, workers: int = 1,
                   quality: int = 95, progress: bool = False) -> list[Path]:
    """Render ``scenes`` to ``out_dir / name_fn(i, scene)`` (default ``"{i:06d}.{fmt}"``); returns the paths.

    ``name_fn`` may return sub-folders (created as needed). ``fmt`` is ``"png"`` or ``"jpg"``
    (JPEG at ``quality``); ``workers > 1`` renders in a process pool; ``progress`` shows tqdm.
    """
    fmt = {"jpeg": "jpg"}.get(fmt.lower(), fmt.lower())
    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    out = Path(out_dir)
    name_fn = name_fn or (lambda i, _s: f"{i:06d}.{fmt}")
    jobs = [(s, out / name_fn(i, s), fmt, quality) for i, s in enumerate(scenes)]
    if workers > 1:
        # spawn, not fork: forking a process whose torch/OpenMP threads are running can deadlock the children.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            it = pool.map(_write, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
            return list(_progress(it, len(jobs), progress))
    return list(_progress(map(_write, jobs), len(jobs), progress))


def _progress(it: Iterable[Path], total: int, enabled: bool) -> Iterable[Path]:
    if not enabled:
        return it
    return tqdm(it, total=total, desc="render", unit="img")
