"""Reading images and small text files with errors that name the file and the expected layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageReadError(ValueError):
    """An image file exists but PIL cannot read or convert it; ``path`` is the file, ``reason`` PIL's complaint."""

    def __init__(self, message: str, path: Path | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.path, self.reason = path, reason or message

    def __reduce__(self):          # a DataLoader worker sends it to the main process pickled
        return type(self), (str(self), self.path, self.reason)


def _hint(expected_layout: str | None) -> str:
    return f" (expected layout: {expected_layout})" if expected_layout else ""


def require_file(path: str | Path, layout_hint: str | None = None, what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError naming it, ``what`` it is and the layout."""
    p = Path(path)
    if not p.is_file():
        state = "is a directory, not a file" if p.is_dir() else "not found"
        raise FileNotFoundError(f"{what} {state}: {p}{_hint(layout_hint)}")
    return p


def require_dir(path: str | Path, layout_hint: str | None = None, what: str = "directory") -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError naming it, ``what`` it is and the layout."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} not found: {p}{_hint(layout_hint)}")
    return p


def read_utf8(path: str | Path, what: str = "file", layout_hint: str | None = None) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped, as spreadsheet programs write one; newlines as
    written, so ``csv`` can read it through ``io.StringIO(text, newline="")``); clear errors when it is missing
    or not UTF-8 text."""
    p = require_file(path, layout_hint, what)
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} is not UTF-8 text: {p} ({e}){_hint(layout_hint)}") from e


def read_lines(path: str | Path, what: str = "file", layout_hint: str | None = None) -> list[str]:
    """Non-blank lines of a UTF-8 text file, stripped; clear errors when it is missing or not text."""
    return [line.strip() for line in read_utf8(path, what, layout_hint).splitlines() if line.strip()]


def _to_rgb(im: Image.Image, alpha_background: tuple[int, int, int]) -> Image.Image:
    """Convert any PIL mode to RGB: 16/32-bit and float greys are rescaled, alpha is composited."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        elif mode == "I" and arr.size and arr.max() > 255:
            arr = arr * (255.0 / (65535.0 if arr.max() <= 65535 else float(arr.max())))
        grey = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, alpha_background)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def load_rgb(path: str | Path, expected_layout: str | None = None,
             alpha_background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Open an image as RGB, whatever its mode (L, P, CMYK, RGBA, LA, I;16, ...).

    Transparent pixels are composited onto ``alpha_background``; 16-bit greys are scaled to 8 bits.
    Raises FileNotFoundError for a missing file and :class:`ImageReadError` (a ValueError) for an
    unreadable one; both name the path, and ``expected_layout`` is appended when given.
    """
    p = require_file(path, expected_layout, "image")
    try:
        with Image.open(p) as im:
            im.load()
            out = _to_rgb(im, alpha_background)
            return out.copy() if out is im else out
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image {p}: {type(e).__name__}: {e}{_hint(expected_layout)}", p,
                             f"{type(e).__name__}: {e}") from e
