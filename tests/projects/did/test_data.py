"""DiD loaders on fixtures in the real COCO 2014 / VOC / NUS-WIDE formats, the transforms, the toy writer."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from projects.did.data import (
    TOY_CATEGORY_IDS,
    VOC_CLASSES,
    COCO2014Dataset,
    DiDData,
    MultiScaleCrop,
    NUSWIDEDataset,
    VOCDataset,
    build_transform,
    write_toy_coco,
)


def _image(path: Path, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(
        mode).save(path)


def coco_fixture(root: Path, split: str = "val") -> Path:
    """3 images: two labelled (category ids 18 and 3, non-contiguous), one without annotations."""
    for i in range(3):
        _image(root / f"{split}2014" / f"COCO_{split}2014_{i:012d}.jpg", mode="L" if i == 1 else "RGB")
    data = {
        "images": [{"id": 10 + i, "file_name": f"COCO_{split}2014_{i:012d}.jpg"} for i in range(3)],
        "annotations": [{"id": 1, "image_id": 10, "category_id": 18}, {"id": 2, "image_id": 10, "category_id": 18},
                        {"id": 3, "image_id": 11, "category_id": 3}, {"id": 4, "image_id": 11, "category_id": 18}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
    return root


def test_coco_labels_sorted_category_ids_and_unlabelled_images_dropped(tmp_path: Path) -> None:
    ds = COCO2014Dataset(coco_fixture(tmp_path), "val", transform=build_transform(32, train=False))
    assert ds.class_names == ["person", "car", "dog"]          # sorted by category id: 1, 3, 18
    assert len(ds) == 2                                         # image 12 has no annotation
    assert ds.targets.tolist() == [[0, 0, 1], [0, 1, 1]]
    x, t = ds[1]                                                # a greyscale file comes back as RGB
    assert x.shape == (3, 32, 32) and t.tolist() == [0, 1, 1]


def test_coco_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="instances_train2014.json"):
        COCO2014Dataset(tmp_path, "train")
    root = coco_fixture(tmp_path)
    ann = root / "annotations" / "instances_val2014.json"
    data = json.loads(ann.read_text())
    del data["annotations"][1]["category_id"]
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances_val2014.json: missing field annotations\[\]\.'category_id'"):
        COCO2014Dataset(root, "val")
    data["annotations"][1]["category_id"] = 99
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category_id=99"):
        COCO2014Dataset(root, "val")
    ann.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        COCO2014Dataset(root, "val")


def voc_fixture(root: Path, year: int = 2007) -> Path:
    base = root / "VOCdevkit" / f"VOC{year}"
    objects = {"000001": [("dog", 0), ("person", 1)], "000002": [("car", 1), ("car", 0), ("bus", 1)],
               "000003": [("cat", 0)]}
    for name, objs in objects.items():
        _image(base / "JPEGImages" / f"{name}.jpg")
        xml = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objs)
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{name}.xml").write_text(f"<annotation><filename>{name}.jpg</filename>{xml}"
                                                          "</annotation>")
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000003\n")
    return root


def test_voc_difficult_only_labels_are_minus_one(tmp_path: Path) -> None:
    ds = VOCDataset(voc_fixture(tmp_path), 2007, "test")
    idx = {c: i for i, c in enumerate(VOC_CLASSES)}
    assert len(ds) == 2 and ds.class_names == list(VOC_CLASSES)
    t = ds.targets
    assert t[0, idx["dog"]] == 1 and t[0, idx["person"]] == -1 and t[0].abs().sum() == 2
    assert t[1, idx["car"]] == 1 and t[1, idx["bus"]] == -1 and t[1].abs().sum() == 2
    assert len(VOCDataset(tmp_path / "VOCdevkit", "2007", "trainval")) == 1      # root may be VOCdevkit too


def test_voc_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    root = voc_fixture(tmp_path)
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VOCDataset(root, 2007, "val")
    ann = root / "VOCdevkit" / "VOC2007" / "Annotations" / "000003.xml"
    ann.write_text("<annotation><object><name>cat</name>")
    with pytest.raises(ValueError, match="000003.xml: malformed VOC annotation XML"):
        VOCDataset(root, 2007, "trainval")
    ann.write_text("<annotation><object><difficult>0</difficult></object></annotation>")
    with pytest.raises(ValueError, match="000003.xml: <object> #0 has no <name>"):
        VOCDataset(root, 2007, "trainval")
    ann.write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(ValueError, match="unicorn"):
        VOCDataset(root, 2007, "trainval")
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        VOCDataset(root, 2012, "trainval")


def test_nuswide_list(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.jpg")
    (tmp_path / "classes.txt").write_text("sky\nwater\nsnow\n")
    (tmp_path / "list.txt").write_text("img/a.jpg 1 0 1\n")
    ds = NUSWIDEDataset(tmp_path, tmp_path / "list.txt", tmp_path / "classes.txt")
    assert ds.targets.tolist() == [[1, 0, 1]] and ds[0][0].shape == (3, 30, 40)
    (tmp_path / "list.txt").write_text("img/a.jpg 1 0\n")
    with pytest.raises(ValueError, match="line 1"):
        NUSWIDEDataset(tmp_path, tmp_path / "list.txt", tmp_path / "classes.txt")


def test_multiscale_crop_and_train_transform() -> None:
    torch.manual_seed(0)
    img = Image.new("RGB", (512, 512))
    crop = MultiScaleCrop(448)
    assert all(crop(img).size == (448, 448) for _ in range(10))
    x = build_transform(448, train=True)(Image.new("RGB", (640, 480)))
    assert x.shape == (3, 448, 448)
    assert build_transform(64, train=False)(Image.new("RGB", (100, 50))).shape == (3, 64, 64)


def test_toy_writer_is_coco_and_skips_existing(tmp_path: Path) -> None:
    root = write_toy_coco(tmp_path / "toy", n_train=20, n_val=10, size=48, seed=3, empty_every=5)
    train = COCO2014Dataset(root, "train")
    assert len(train) == 16 and train.class_names == sorted(TOY_CATEGORY_IDS, key=TOY_CATEGORY_IDS.get)
    assert ((train.targets.sum(1) >= 1) & (train.targets.sum(1) <= 4)).all()
    stamp = (root / "annotations" / "instances_train2014.json").stat().st_mtime_ns
    write_toy_coco(tmp_path / "toy", n_train=20, n_val=10, size=48, seed=3, empty_every=5)
    assert (root / "annotations" / "instances_train2014.json").stat().st_mtime_ns == stamp
    dm = DiDData("toy", str(root), num_classes=10, img_size=48, batch_size=4, num_workers=0, toy_train=20,
                 toy_val=10, toy_seed=3)
    dm.setup("fit")
    x, t = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 48, 48) and t.shape == (4, 10)
    bad = DiDData("toy", str(root), num_classes=80, img_size=48, num_workers=0)
    with pytest.raises(ValueError, match="num_classes=80"):
        bad.setup("validate")
