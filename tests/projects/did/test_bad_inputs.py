"""Bad dataset inputs (empty splits, class counts that do not match, broken images) stop with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from projects.did.data import COCO2014Dataset, DiDData, MultiLabelImages, NUSWIDEDataset


def save(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), (30, 60, 90)).save(path)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def write_coco(root: Path, split: str, n_images: int, n_categories: int = 3) -> Path:
    files = [f"COCO_{split}2014_{i:012d}.jpg" for i in range(n_images)]
    for f in files:
        save(root / f"{split}2014" / f)
    (root / f"{split}2014").mkdir(parents=True, exist_ok=True)
    data = {"images": [{"id": i, "file_name": f} for i, f in enumerate(files)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1 + i % n_categories} for i in range(n_images)],
            "categories": [{"id": 1 + c, "name": f"c{c}"} for c in range(n_categories)]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
    return root


def test_coco_val_json_without_images_is_refused_at_setup(tmp_path: Path) -> None:
    write_coco(tmp_path, "train", 2)
    write_coco(tmp_path, "val", 0)
    with pytest.raises(ValueError, match=r"instances_val2014\.json \(images with annotations\): the 'val' split has "
                                         r"no samples") as err:
        DiDData("coco2014", str(tmp_path), num_classes=3, num_workers=0).setup("fit")
    one_line(err)


def test_coco_categories_that_do_not_match_num_classes(tmp_path: Path) -> None:
    write_coco(tmp_path, "train", 2)
    write_coco(tmp_path, "val", 2)
    with pytest.raises(ValueError, match=r"instances_val2014\.json 'categories': 3 classes but data\.num_classes=4; "
                                         r"set --data\.num_classes 3") as err:
        DiDData("coco2014", str(tmp_path), num_classes=4, num_workers=0).setup("validate")
    one_line(err)


def test_voc_empty_split_file_is_refused_at_setup(tmp_path: Path) -> None:
    base = tmp_path / "VOCdevkit" / "VOC2007"
    save(base / "JPEGImages" / "000001.jpg")
    (base / "Annotations").mkdir(parents=True)
    (base / "Annotations" / "000001.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"ImageSets/Main/test\.txt: the 'test' split has no samples") as err:
        DiDData("voc2007", str(tmp_path), num_classes=20, num_workers=0).setup("fit")
    one_line(err)


def test_targets_wider_or_narrower_than_the_classes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"list\.txt: targets of shape \(2, 3\), expected \[N, 4\] \(one column "
                                         r"per class of .*classes\.txt\)") as err:
        MultiLabelImages([tmp_path / "a.jpg", tmp_path / "b.jpg"], torch.zeros(2, 3), list("abcd"),
                         source=tmp_path / "list.txt", class_source=tmp_path / "classes.txt")
    one_line(err)
    (tmp_path / "classes.txt").write_text("sky\nwater\n")
    (tmp_path / "list.txt").write_text("a.jpg 1 0\nb.jpg 0 1\n")
    ds = NUSWIDEDataset(tmp_path, tmp_path / "list.txt", tmp_path / "classes.txt")
    assert ds.targets.shape == (2, 2)
    with pytest.raises(ValueError, match=r"classes\.txt: 2 classes but data\.num_classes=81") as err:
        DiDData("nuswide", str(tmp_path), num_classes=81, num_workers=0, nus_train_list=str(tmp_path / "list.txt"),
                nus_val_list=str(tmp_path / "list.txt"), nus_classes=str(tmp_path / "classes.txt")).setup("fit")
    one_line(err)


def test_undecodable_image_is_named_in_getitem(tmp_path: Path) -> None:
    write_coco(tmp_path, "val", 1)
    bad = tmp_path / "val2014" / "COCO_val2014_000000000000.jpg"
    bad.write_bytes(b"GIF89a truncated")
    with pytest.raises(ValueError, match=r"cannot read image .*COCO_val2014_000000000000\.jpg") as err:
        COCO2014Dataset(tmp_path, "val")[0]
    one_line(err)
