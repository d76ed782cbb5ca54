"""Shared data helpers: the toy-world renderer and robust image / file readers."""

from shared.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageReadError,
    load_rgb,
    read_lines,
    require_dir,
    require_file,
)
from shared.data.toyworld import (
    BACKGROUNDS,
    COLORS,
    PART_COLORS,
    PART_KINDS,
    SHAPES,
    Clutter,
    Scene,
    ToyObject,
    ToyPart,
    caption,
    make_object,
    make_part,
    object_phrase,
    render,
    render_dataset,
    sample_clutter,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS", "COLORS", "IMAGENET_MEAN", "IMAGENET_STD", "PART_COLORS", "PART_KINDS", "SHAPES",
    "Clutter", "ImageReadError", "Scene", "ToyObject", "ToyPart", "caption", "load_rgb", "make_object",
    "make_part", "object_phrase", "read_lines", "render", "render_dataset", "require_dir", "require_file",
    "sample_clutter", "sample_scene",
]
