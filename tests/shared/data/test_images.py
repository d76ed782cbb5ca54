"""Tests for the image and file reading helpers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageReadError,
    load_rgb,
    read_lines,
    read_utf8,
    require_dir,
    require_file,
)


def _roundtrip(img: Image.Image, path, **save_kw) -> Image.Image:
    img.save(path, **save_kw)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == img.size
    return out


def test_constants() -> None:
    assert len(IMAGENET_MEAN) == len(IMAGENET_STD) == 3


def test_grey_and_palette_become_rgb(tmp_path) -> None:
    grey = _roundtrip(Image.new("L", (8, 6), 100), tmp_path / "l.png")
    assert grey.getpixel((0, 0)) == (100, 100, 100)
    pal = Image.new("P", (5, 5), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert _roundtrip(pal, tmp_path / "p.png").getpixel((2, 2)) == (10, 200, 30)
    assert _roundtrip(Image.new("1", (4, 4), 1), tmp_path / "b.png").getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_becomes_rgb(tmp_path) -> None:
    out = _roundtrip(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100)
    r, g, b = out.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_alpha_is_composited(tmp_path) -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))
    out = _roundtrip(rgba, tmp_path / "rgba.png")
    assert out.getpixel((1, 1)) == (255, 0, 0) and out.getpixel((0, 0)) == (255, 255, 255)
    la = _roundtrip(Image.new("LA", (4, 4), (50, 255)), tmp_path / "la.png")
    assert la.getpixel((0, 0)) == (50, 50, 50)
    rgba.save(tmp_path / "rgba2.png")
    assert load_rgb(tmp_path / "rgba2.png", alpha_background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)


def test_sixteen_bit_is_rescaled(tmp_path) -> None:
    arr = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = _roundtrip(img, tmp_path / "i16.png")
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]


def test_missing_file_names_path_and_layout(tmp_path) -> None:
    missing = tmp_path / "images" / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg") as info:
        load_rgb(missing, expected_layout="CUB_200_2011/images/<class>/<file>.jpg")
    assert str(missing) in str(info.value) and "CUB_200_2011/images" in str(info.value)


def test_corrupt_and_truncated_files(tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="bad.png") as info:
        load_rgb(bad, expected_layout="COCO train2014/*.jpg")
    assert isinstance(info.value, ValueError) and "COCO train2014" in str(info.value)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.png"):
        load_rgb(cut)


def test_file_helpers(tmp_path) -> None:
    f = tmp_path / "split.txt"
    f.write_text(" a 1 \n\n b 2\n", encoding="utf-8")
    assert read_lines(f, "split file") == ["a 1", "b 2"]
    assert require_file(str(f)) == f
    assert require_dir(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match=r"split file not found: .*nope\.txt.*images\.txt"):
        read_lines(tmp_path / "nope.txt", "split file", "CUB_200_2011/images.txt")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        require_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="annotations"):
        require_dir(tmp_path / "annotations", "COCO annotations/ folder")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="bin.txt"):
        read_lines(binary)


def test_read_utf8_drops_a_byte_order_mark_keeps_newlines_and_names_a_binary_file(tmp_path) -> None:
    """Spreadsheet programs write CSVs with a BOM (it became part of the first column's name: "no 'prompt'
    column"); csv wants the newlines as written; a non-UTF-8 file was a UnicodeDecodeError naming no file."""
    f = tmp_path / "prompts.csv"
    f.write_bytes(b"\xef\xbb\xbfprompt,seed\r\n\"two\r\nlines\",1\r\n")
    assert read_utf8(f) == 'prompt,seed\r\n"two\r\nlines",1\r\n'
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=r"^prompts CSV is not UTF-8 text: .*prompts\.csv \('utf-8' codec"):
        read_utf8(f, "prompts CSV")
