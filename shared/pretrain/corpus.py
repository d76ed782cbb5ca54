"""The pretraining corpus: the toy world's ImageNet-21k, rendered once into a uint8 array cache.

A scene holds 1-4 objects from 12% to 50% of the image side among clutter; 60% of them carry a small coloured
part. Its target is multi-hot over 102 classes (Google's ImageNet-21k ViTs were also trained with a sigmoid loss
on multi-hot targets):

* 12 shape classes, over shapes that no downstream toy task uses (:data:`~shared.data.toyworld.PRETRAIN_SHAPES`);
* 90 "host colour x part colour" classes: an object of colour c carrying a part of colour p (or none), i.e. a
  class is decided by a small part *on* an object, the skill RAMS-Trans and DiD start from.

No pretraining label is a downstream label: DiD's toy categories are the ten
:data:`~shared.data.toyworld.SHAPES`; RAMS-Trans' are white / yellow parts, colours that never colour a part
here. The visual vocabulary (shapes, small coloured parts, clutter, texture) is shared, as ImageNet shares
textures and parts with CUB. A first recipe with 60 (shape x part kind) classes barely left chance in 6000
steps (held-out mAP 9.5, the README says more): shape alone, under random rotation and clutter, is slow to
learn for a 0.2M-parameter ViT on 2 CPU cores; colour-bound part classes are learnt from the first hundreds.

The corpus is a pure function of (seed, index range): chunks are rendered from their own
``SeedSequence((seed, stream, chunk))``, so the number of worker processes never changes a pixel.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.data.toyworld import COLORS, PRETRAIN_SHAPES, render, sample_scene

# RAMS-Trans' toy classes are white / yellow parts: those colours never colour a part in the corpus.
PART_COLORS: tuple[str, ...] = tuple(c for c in COLORS if c not in ("white", "yellow"))
_PART_CLASSES: tuple[str, ...] = ("none", *PART_COLORS)
CLASS_NAMES: tuple[str, ...] = (*PRETRAIN_SHAPES,
                                *(f"{c}_with_{p}_part" if p != "none" else f"{c}_plain" for c in COLORS
                                  for p in _PART_CLASSES))
"""102 classes: the 12 shapes, then ``<host colour>_with_<part colour>_part`` / ``<host colour>_plain``."""
CHUNK = 1000


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that decides the corpus' pixels and targets (the cache is keyed on it)."""

    seed: int = 0
    size: int = 64
    n_objects: tuple[int, int] = (1, 4)
    object_frac: tuple[float, float] = (0.12, 0.5)
    part_prob: float = 0.6
    clutter: tuple[int, int] = (6, 16)
    max_noise: float = 4.0
    version: int = 2


def scene_target(scene) -> np.ndarray:
    """Multi-hot ``[len(CLASS_NAMES)]`` uint8 target of a scene (a shape and a colour class per object)."""
    y = np.zeros(len(CLASS_NAMES), np.uint8)
    hosts = list(COLORS)
    for o in scene.objects:
        y[PRETRAIN_SHAPES.index(o.kind)] = 1
        part = "none" if o.part is None else o.part.color
        y[len(PRETRAIN_SHAPES) + hosts.index(o.color) * len(_PART_CLASSES) + _PART_CLASSES.index(part)] = 1
    return y


def sample_corpus_scene(rng: np.random.Generator, spec: CorpusSpec):
    lo, hi = spec.object_frac
    return sample_scene(rng, spec.size, spec.n_objects, shapes=PRETRAIN_SHAPES, object_size=(lo * spec.size,
                        hi * spec.size), part_prob=spec.part_prob, part_colors=PART_COLORS,
                        clutter=int(rng.integers(spec.clutter[0], spec.clutter[1] + 1)), max_overlap=0.1,
                        noise=float(rng.uniform(0, spec.max_noise)))


def render_chunk(job: tuple[CorpusSpec, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, size, size, 3]`` and targets ``[n, C]`` of chunk ``chunk`` of the stream ``stream``."""
    spec, stream, chunk, n = job
    rng = np.random.default_rng(np.random.SeedSequence((spec.seed, stream, chunk)))
    scenes = [sample_corpus_scene(rng, spec) for _ in range(n)]
    return np.stack([np.asarray(render(s), np.uint8) for s in scenes]), np.stack([scene_target(s) for s in scenes])


def build_split(spec: CorpusSpec, stream: int, n: int, folder: Path, workers: int = 2,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Render (or reuse) ``n`` images of ``stream`` (0 = train, 1 = held-out) under ``folder``; returns
    read-only memory maps ``images [n, H, W, 3] uint8`` and ``targets [n, C] uint8``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = {**asdict(spec), "stream": stream, "n": n}
    stamp = folder / "corpus.json"
    img_path, tgt_path = folder / "images.npy", folder / "targets.npy"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(key))):
        stamp.unlink(missing_ok=True)
        images = np.lib.format.open_memmap(img_path, "w+", np.uint8, (n, spec.size, spec.size, 3))
        targets = np.zeros((n, len(CLASS_NAMES)), np.uint8)
        jobs = [(spec, stream, c, min(CHUNK, n - c * CHUNK)) for c in range((n + CHUNK - 1) // CHUNK)]
        with _pool(min(workers, len(jobs))) as pool:
            done = (pool.map if pool else map)(render_chunk, jobs)
            for c, (x, y) in enumerate(_progress(done, len(jobs), progress, f"corpus stream {stream}")):
                images[c * CHUNK:c * CHUNK + len(x)] = x
                targets[c * CHUNK:c * CHUNK + len(y)] = y
        images.flush()
        del images
        np.save(tgt_path, targets)
        stamp.write_text(json.dumps(key))
    return np.load(img_path, mmap_mode="r"), np.load(tgt_path)


def _pool(workers: int):
    if workers <= 1:
        return contextlib.nullcontext(None)
    # spawn, not fork: forking a process whose torch/OpenMP threads run can deadlock the children.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _progress(it, total: int, enabled: bool, desc: str):
    if not enabled:
        return it
    return tqdm(it, total=total, desc=desc, unit="chunk")
