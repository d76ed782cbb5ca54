"""The toy world of SPM's CPU experiments: captioned single-object scenes ("a red circle") that train the toy
text-to-image base model (``toy_base.py``), its text encoder (``toy_text.py``) and the shape / colour classifier
that judges generations (``classifier.py``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from shared.data.toyworld import Scene, make_object, render

TOY_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
TOY_COLORS: tuple[str, ...] = ("red", "yellow", "green", "blue", "purple", "white")
TOY_SIZE = 16


def toy_caption(shape: str | None, color: str | None) -> str:
    """``"a red circle"``, or the bare concept word when the other attribute is left out: ``"circle"``, ``"red"``."""
    if shape and color:
        return f"a {color} {shape}"
    return shape or color


# The compositional caption grammar of the toy text encoder: a concept word appears bare, with an article, before
# or after the other attribute, so it has to mean the same thing in every phrase (an SPM trained on the bare word
# should then reach the phrases). "a <colour> <shape>" (the evaluation prompts) is drawn most often.
FULL_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("a {color} {shape}", 0.4), ("the {color} {shape}", 0.15), ("{color} {shape}", 0.15),
    ("a {shape} in {color}", 0.15), ("a {shape} that is {color}", 0.15))
SHAPE_TEMPLATES: tuple[str, ...] = ("{shape}", "a {shape}", "the {shape}")
COLOR_TEMPLATES: tuple[str, ...] = ("{color}", "something {color}", "a {color} thing")


def grammar_caption(rng: np.random.Generator, shape: str, color: str,
                    partial: float = 0.3) -> tuple[str, bool, bool]:
    """A caption of (shape, colour) from the grammar: (text, names the shape, names the colour). A ``partial`` share
    names one attribute only (half shape, half colour), the rest both."""
    if rng.random() < partial:
        if rng.random() < 0.5:
            return SHAPE_TEMPLATES[rng.integers(len(SHAPE_TEMPLATES))].format(shape=shape), True, False
        return COLOR_TEMPLATES[rng.integers(len(COLOR_TEMPLATES))].format(color=color), False, True
    weights = np.array([w for _, w in FULL_TEMPLATES])
    template = FULL_TEMPLATES[rng.choice(len(FULL_TEMPLATES), p=weights / weights.sum())][0]
    return template.format(shape=shape, color=color), True, True


def grammar_vocabulary() -> list[str]:
    """Every caption the grammar can produce (for the tokenizer)."""
    out = [t.format(shape=s, color=c) for t, _ in FULL_TEMPLATES for s in TOY_SHAPES for c in TOY_COLORS]
    out += [t.format(shape=s) for t in SHAPE_TEMPLATES for s in TOY_SHAPES]
    return out + [t.format(color=c) for t in COLOR_TEMPLATES for c in TOY_COLORS]


def toy_labels(prompt: str) -> tuple[int | None, int | None]:
    """(shape index, colour index) of the toy shape and colour a prompt names; None where it names none or several."""
    words = re.findall(r"[a-z]+", prompt.lower())
    shapes = {TOY_SHAPES.index(w) for w in words if w in TOY_SHAPES}
    colors = {TOY_COLORS.index(w) for w in words if w in TOY_COLORS}
    return (shapes.pop() if len(shapes) == 1 else None, colors.pop() if len(colors) == 1 else None)


def render_toy_scenes(n: int, seed: int, size: int = TOY_SIZE, shapes: Sequence[str] = TOY_SHAPES,
                      colors: Sequence[str] = TOY_COLORS, jitter: float = 1.0,
                      partial_captions: float = 0.0, grammar: bool = False) -> dict:
    """``n`` single-object scenes: images uint8 [n, 3, size, size], shape/colour indices, captions.

    The SPM toy world is deliberately simple so a tiny diffusion model learns it in CPU minutes: one upright object
    of 60-90% of the image, centred up to ``jitter`` pixels off, on a plain grey background.
    A ``partial_captions`` share of the captions names only the shape or only the colour as a bare
    word ("circle", "red"), half each, so single-concept prompts (SPM's concept strings) mean something to the model.
    ``grammar`` draws every caption from :func:`grammar_caption` instead (several phrasings, same share of partials).
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    shape_idx = rng.integers(len(shapes), size=n)
    color_idx = rng.integers(len(colors), size=n)
    captions = []
    for i in range(n):
        shape, color = shapes[shape_idx[i]], colors[color_idx[i]]
        centre = tuple(size / 2 + rng.uniform(-jitter, jitter) for _ in range(2))
        obj = make_object(rng, size, kind=shape, color=color, object_size=(0.6 * size, 0.9 * size), center=centre,
                          rotate=False)
        scene = Scene(size, "gray", (obj,), texture=0.0, seed=int(rng.integers(2**31)))
        images[i] = np.asarray(render(scene)).transpose(2, 0, 1)
        if grammar:
            captions.append(grammar_caption(rng, shape, color, partial_captions)[0])
            continue
        drop = rng.random() < partial_captions
        keep_shape = rng.random() < 0.5
        captions.append((shape if keep_shape else color) if drop else toy_caption(shape, color))
    return {"images": torch.from_numpy(images), "shape": torch.from_numpy(shape_idx),
            "color": torch.from_numpy(color_idx), "captions": captions}
