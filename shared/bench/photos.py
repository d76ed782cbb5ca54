"""Photo-like synthetic images for the input-pipeline rows (``shared/bench/pipeline.py``).

A loader's cost is decoding and resampling, which depend on the pixel count and on how much detail the file holds
(the entropy-coded bytes of a JPEG, the deflate stream of a PNG), not on what the picture shows. So these images
are smooth colour fields plus mid-frequency texture plus pixel noise, tuned to land near the real datasets' bytes
per image (CUB ~90 KB at 500x375 JPEG, COCO ~140 KB at 640x480 JPEG, Hateful Memes a few hundred KB of PNG).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(rng: np.random.Generator, width: int, height: int, noise: float = 8.0, texture: float = 0.5
               ) -> Image.Image:
    """An RGB image: a 6x8 colour field and a texture at 1/4 resolution, both upsampled bicubically, mixed
    ``1 - texture : texture``, plus Gaussian noise of std ``noise`` grey levels."""
    def field(h: int, w: int) -> np.ndarray:
        small = Image.fromarray(rng.integers(0, 256, (max(h, 1), max(w, 1), 3), dtype=np.uint8))
        return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)

    pixels = (1 - texture) * field(6, 8) + texture * field(height // 4, width // 4)
    pixels += noise * rng.standard_normal((height, width, 3), dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_photos(folder: Path, names: list[str], size: tuple[int, int], seed: int = 0, noise: float = 8.0,
                 texture: float = 0.5) -> list[Path]:
    """Write one photo-like image per name under ``folder`` (format from the suffix: ``.jpg`` at quality 90, as
    camera JPEGs; ``.png`` at PIL's default compression); returns the paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = photo_like(rng, *size, noise=noise, texture=texture)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            image.save(path, "JPEG", quality=90)
        else:
            image.save(path)
        paths.append(path)
    return paths
