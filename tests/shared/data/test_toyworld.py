"""Tests for the procedural toy-world renderer."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from shared.data import toyworld as tw


def _hash(img: Image.Image) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()


def _scene(seed: int, size: int = 96, **kw) -> tw.Scene:
    return tw.sample_scene(np.random.default_rng(seed), size, **kw)


def _drawn_mask(obj: tw.ToyObject, size: int) -> np.ndarray:
    """Pixels an object changes on a flat background with no clutter or texture."""
    bare = tw.Scene(size, "gray", ())
    with_obj = replace(bare, objects=(obj,))
    return np.any(np.asarray(tw.render(with_obj)) != np.asarray(tw.render(bare)), axis=-1)


def test_same_seed_same_pixels_other_seed_differs() -> None:
    a, b, c = _scene(0, noise=3.0), _scene(0, noise=3.0), _scene(1, noise=3.0)
    assert a == b
    assert _hash(tw.render(a)) == _hash(tw.render(b)) == _hash(tw.render(a))
    assert a != c
    assert _hash(tw.render(a)) != _hash(tw.render(c))


@pytest.mark.parametrize("size", [64, 96, 128])
def test_render_size_and_mode(size: int) -> None:
    img = tw.render(_scene(3, size))
    assert img.mode == "RGB"
    assert img.size == (size, size)


def test_vocabulary() -> None:
    assert len(tw.SHAPES) >= 8 and len(set(tw.SHAPES)) == len(tw.SHAPES)
    assert len(tw.COLORS) >= 8
    assert {"circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon"} <= set(tw.SHAPES)
    assert set(tw.PART_COLORS) <= set(tw.COLORS) and set(tw.PART_KINDS) == set(tw.PART_NOUNS)


def test_caption_names_every_object_and_part() -> None:
    for seed in range(20):
        scene = _scene(seed, part_prob=0.5)
        assert scene.caption == tw.caption(scene)
        text = scene.caption
        for obj in scene.objects:
            assert f"{obj.color} {obj.kind}" in text
            if obj.part is not None:
                assert f"{obj.part.color} {tw.PART_NOUNS[obj.part.kind]}" in text
    obj = tw.ToyObject("ring", "blue", 10.0, (50.0, 50.0), part=tw.ToyPart("dot", "yellow", (0.0, 0.0), 3.0))
    star = tw.ToyObject("star", "red", 25.0, (20.0, 20.0))
    scene = tw.Scene(96, "gray", (star, obj))
    assert tw.caption(scene) == "a red star and a small blue ring with a yellow dot"
    assert tw.caption(tw.Scene(96, "gray", (tw.ToyObject("arrow", "orange", 25.0, (9.0, 9.0)),))) == \
        "an orange arrow"


def test_bboxes_inside_image_and_cover_drawn_pixels() -> None:
    rng = np.random.default_rng(7)
    for i in range(60):
        size = (64, 96, 128)[i % 3]
        obj = tw.make_object(rng, size, kind=tw.SHAPES[i % len(tw.SHAPES)], part=i % 2 == 0,
                             part_kind=tw.PART_KINDS[i % len(tw.PART_KINDS)])
        x0, y0, x1, y1 = obj.bbox
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        ys, xs = np.nonzero(_drawn_mask(obj, size))
        assert len(xs) > 0
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        # tight: the drawing reaches within 2 px of every side
        assert xs.min() - x0 <= 2 and x1 - 1 - xs.max() <= 2 and ys.min() - y0 <= 2 and y1 - 1 - ys.max() <= 2
    for seed in range(10):
        scene = _scene(seed, 64, n_objects=4)
        assert scene.boxes() == [o.bbox for o in scene.objects]


@pytest.mark.parametrize("kind", tw.PART_KINDS)
def test_forced_part_is_drawn_inside_the_object_box(kind: str) -> None:
    rng = np.random.default_rng(11)
    obj = tw.make_object(rng, 96, kind="hexagon", color="blue", size=30, part=True, part_kind=kind,
                         part_color="yellow")
    assert obj.part is not None and obj.part.kind == kind and obj.part.color == "yellow"
    scene = tw.sample_scene(rng, 96, 2, objects=[obj], clutter=20)
    assert scene.objects[0] == obj
    img = np.asarray(tw.render(scene))
    plain = np.asarray(tw.render(replace(scene, objects=(replace(obj, part=None),) + scene.objects[1:])))
    changed = np.any(img != plain, axis=-1)
    ys, xs = np.nonzero(changed)
    x0, y0, x1, y1 = obj.bbox
    assert len(xs) >= 10
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    assert np.all(img[changed] == tw.COLORS["yellow"])


def test_clutter_never_covers_objects() -> None:
    for seed in range(8):
        scene = _scene(seed, 96, clutter=60)
        img = np.asarray(tw.render(scene))
        no_clutter = np.asarray(tw.render(replace(scene, clutter=())))
        no_objects = np.asarray(tw.render(replace(scene, clutter=(), objects=())))
        on_object = np.any(no_clutter != no_objects, axis=-1)
        assert np.array_equal(img[on_object], no_clutter[on_object])
        for obj in scene.objects:  # each object's body stays mostly visible (objects are placed apart)
            body = _drawn_mask(replace(obj, part=None), 96)
            if obj.part is not None:
                alone = np.asarray(tw.render(tw.Scene(96, "gray", (obj,))))
                body &= ~np.all(alone == tw.COLORS[obj.part.color], axis=-1)
            visible = body & np.all(img == tw.COLORS[obj.color], axis=-1)
            assert visible.sum() >= 0.5 * body.sum()


def test_clutter_is_not_object_scale() -> None:
    clutter = tw.sample_clutter(np.random.default_rng(0), 96, 200)
    assert {c.kind for c in clutter} == {"line", "scribble", "blob"}
    for c in clutter:
        if c.kind == "blob":
            (a, b), (d, e) = c.points
            assert max(d - a, e - b) <= 0.065 * 96
        else:
            assert c.width <= 2


def test_sample_scene_options() -> None:
    scene = _scene(5, n_objects=8, unique_kinds=True, shapes=tw.SHAPES[:5], colors=("red", "green"))
    assert sorted(o.kind for o in scene.objects) == sorted(tw.SHAPES[:5])
    assert {o.color for o in scene.objects} <= {"red", "green"}
    for seed in range(5):
        s = _scene(seed, 96, n_objects=(2, 3), object_size=(10, 12), part_prob=0.0, clutter=0)
        assert 2 <= len(s.objects) <= 3 and not s.clutter
        assert all(10 <= o.size <= 12 and o.part is None for o in s.objects)
    assert tw.caption(tw.Scene(64, "gray", ())) == "an empty scene"
    with pytest.raises(ValueError, match="unknown shape"):
        tw.render(tw.Scene(64, "gray", (tw.ToyObject("blob", "red", 10, (30, 30)),)))


def test_render_dataset_writes_png_and_jpg(tmp_path) -> None:
    scenes = [_scene(s, 64) for s in range(4)]
    paths = tw.render_dataset(scenes, tmp_path / "png", lambda i, s: f"c{i % 2}/img_{i}.png")
    assert [p.relative_to(tmp_path / "png").as_posix() for p in paths] == \
        ["c0/img_0.png", "c1/img_1.png", "c0/img_2.png", "c1/img_3.png"]
    for p, s in zip(paths, scenes, strict=True):
        with Image.open(p) as im:
            assert _hash(im.convert("RGB")) == _hash(tw.render(s))
    jpgs = tw.render_dataset(scenes, tmp_path / "jpg", fmt="jpg", workers=2)
    assert [p.name for p in jpgs] == [f"{i:06d}.jpg" for i in range(4)]
    with Image.open(jpgs[0]) as im:
        assert im.format == "JPEG" and im.size == (64, 64)
    with pytest.raises(ValueError, match="fmt"):
        tw.render_dataset(scenes, tmp_path, fmt="gif")
