"""`predict` on a folder: which files are read, how bad ones are named, what the writer draws."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from projects.rams_trans.viz import boxes_in_input_frame
from shared.predict import attention_strip, draw_boxes, heat_overlay, scan_image_folder, tag_spots


def write_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.png"):
        Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(root / name)
    (root / ".hidden.png").write_bytes(b"ignored")
    return root


def test_images_are_found_recursively_in_order(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs")
    assert [p.relative_to(root).as_posix() for p in scan_image_folder(root)] == ["a.jpg", "b.png", "sub/c.png"]


def test_bad_files_are_named_and_skipped_only_when_asked(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=r"2 file\(s\) are not readable images: broken.png \(.*\); notes.txt .*"
                                         r"--data.skip_bad_files true"):
        scan_image_folder(root)
    assert len(scan_image_folder(root, skip_bad_files=True)) == 3


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.predict_dir not found"):
        scan_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no readable image"):
        scan_image_folder(tmp_path / "empty")


def test_draw_boxes_marks_the_box_outline() -> None:
    out = np.asarray(draw_boxes(Image.new("RGB", (20, 20), "black"), [{"box": [2, 3, 10, 12], "label": ""}],
                                min_side=1))
    assert out[3, 2:11].any(axis=-1).all() and out[12, 2:11].any(axis=-1).all()   # top and bottom edges
    assert not out[7, 5].any()                                                    # inside stays untouched


def test_rams_boxes_compose_into_the_input_frame() -> None:
    """Scale 2 sees box 1 resized to the full size; its box maps back through box 1."""
    first = torch.tensor([[16, 8, 47, 39]])                 # a 32 x 32 crop of a 64 px input
    second = torch.tensor([[0, 32, 31, 63]])                # left half, bottom half of the 64 px scale-2 image
    got = boxes_in_input_frame([first, second], 64)
    assert got[0].tolist() == [[16, 8, 47, 39]]
    assert got[1].tolist() == [[16.0, 24.0, 31.0, 39.0]]   # 16 px wide / high in the input


def test_overlays_are_upscaled_titled_and_their_labels_never_overlap() -> None:
    boxes = [{"box": [2, 2, 20, 20], "label": "dog 0.91"}, {"box": [3, 3, 25, 25], "label": "cat 0.80"},
             {"box": [40, 40, 60, 60], "label": "hidden", "draw": False}]
    out = draw_boxes(Image.new("RGB", (64, 64), "black"), boxes, title="labels: dog 0.91, cat 0.80")
    band = out.height - out.width
    assert out.width == 384 and 0 < band < 40                      # 6x, a title band on top
    pixels = np.asarray(out)
    assert pixels[band + 12 * 6, 2 * 6].any() and not pixels[band + 50 * 6, 40 * 6].any()   # drawn / left out
    spots = tag_spots([(12, 12), (18, 18), (300, 100)], [(60, 20), (60, 20), (120, 20)], 384, 384)
    assert spots[0] == (12, 12, 72, 32) and spots[1] == (18, 38, 78, 58)   # moved below the first, not over it
    assert spots[2] == (264, 100, 384, 120)                                # kept inside the image


def test_a_heat_map_is_blended_in_red_where_it_peaks() -> None:
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0                                            # the top-left cell
    out = np.asarray(heat_overlay(Image.new("RGB", (64, 64), (100, 100, 100)), heat)).astype(int)
    assert out.shape == (384, 384, 3)
    assert out[5, 5, 0] > 150 and out[5, 5, 1] < 90            # red at the peak
    assert out[380, 380, 0] < 60                               # a dimmed grey far from it
    strip = attention_strip(Image.new("RGB", (64, 64)), {"boxes": [{"box": [0, 0, 10, 10], "label": "x"}]},
                            {"rollout": heat, "class map: x": heat})
    assert strip.width == 3 * 384 + 2 * 4
