"""The loaders read small fixtures written in each real on-disk format; bad input names the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from projects.rams_trans.data import (
    CUBDataset,
    FGVCDataModule,
    INat2017Dataset,
    StanfordDogsDataset,
    build_transforms,
    write_toy_cub,
)


def save(path: Path, mode: str = "RGB", value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (20, 14)
    Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode)).save(
        path, format="JPEG" if mode in ("CMYK", "L") else "PNG")


def write_cub(root: Path) -> Path:
    cub = root / "CUB_200_2011"
    rels = {"7": "001.A/a_1.jpg", "2": "002.B/b_1.jpg", "13": "001.A/a_2.jpg", "4": "002.B/b_grey.jpg"}
    for i, rel in rels.items():
        save(cub / "images" / rel, "L" if "grey" in rel else "CMYK" if i == "13" else "RGB")
    # Three files in different line orders: the loader must join on the image id, not on the line number.
    (cub / "images.txt").write_text("".join(f"{i} {r}\n" for i, r in rels.items()))
    (cub / "image_class_labels.txt").write_text("4 2\n13 1\n2 2\n7 1\n")
    (cub / "train_test_split.txt").write_text("2 1\n\n7 1\n4 0\n13 0\n")
    return cub


def test_cub_joins_on_image_id_and_converts_grey_and_cmyk(tmp_path: Path) -> None:
    cub = write_cub(tmp_path)
    train, test = CUBDataset(cub, "train"), CUBDataset(cub, "test")
    assert [(p.name, y) for p, y in train.samples] == [("a_1.jpg", 0), ("b_1.jpg", 1)]
    assert [(p.name, y) for p, y in test.samples] == [("a_2.jpg", 0), ("b_grey.jpg", 1)]
    for i in range(2):
        img, _ = test[i]
        assert img.mode == "RGB" and img.size == (20, 14)
    tf = CUBDataset(cub, "train", build_transforms(True, resize=12, crop=8))
    x, y = tf[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == 0


def test_cub_errors_name_the_file(tmp_path: Path) -> None:
    cub = write_cub(tmp_path)
    (cub / "images" / "001.A" / "a_1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"a_1\.jpg.*images\.txt"):
        CUBDataset(cub, "train")[0]
    (cub / "images" / "002.B" / "b_1.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*b_1\.jpg"):
        CUBDataset(cub, "train")[1]
    (cub / "train_test_split.txt").write_text("2 1\n7 1\n4 0\n")
    with pytest.raises(ValueError, match=r"train_test_split\.txt: no line for image id 13"):
        CUBDataset(cub, "train")
    (cub / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_class_labels\.txt"):
        CUBDataset(cub, "train")
    with pytest.raises(FileNotFoundError, match="CUB root"):
        CUBDataset(tmp_path / "nope", "train")


def test_stanford_dogs_reads_the_mat_lists(tmp_path: Path) -> None:
    files = ["n02085620-Chihuahua/n02085620_10074.jpg", "n02085782-Japanese_spaniel/n02085782_1039.jpg"]
    for f in files:
        save(tmp_path / "Images" / f)
    cell = np.empty((2, 1), dtype=object)
    for i, f in enumerate(files):
        cell[i, 0] = np.array([f])
    ann = np.empty((2, 1), dtype=object)
    for i, f in enumerate(files):
        ann[i, 0] = np.array([f[:-4]])
    scipy.io.savemat(tmp_path / "train_list.mat", {"file_list": cell, "annotation_list": ann,
                                                    "labels": np.array([[1], [2]], dtype=np.uint8)})
    ds = StanfordDogsDataset(tmp_path, "train")
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in ds.samples] == [
        (f"Images/{files[0]}", 0), (f"Images/{files[1]}", 1)]
    assert ds.names_by_label == {0: "Chihuahua", 1: "Japanese_spaniel"}      # class names, for reports / predict
    assert ds[1][0].mode == "RGB"
    with pytest.raises(FileNotFoundError, match=r"test_list\.mat"):
        StanfordDogsDataset(tmp_path, "test")
    scipy.io.savemat(tmp_path / "test_list.mat", {"file_list": cell})
    with pytest.raises(ValueError, match=r"test_list\.mat: missing key 'labels'"):
        StanfordDogsDataset(tmp_path, "test")


def test_inat2017_joins_annotations_on_image_id(tmp_path: Path) -> None:
    names = ["train_val_images/Aves/Larus/1.jpg", "train_val_images/Plantae/Rosa/2.jpg"]
    for n in names:
        save(tmp_path / n, "L")
    data = {"images": [{"id": 11, "file_name": names[0]}, {"id": 5, "file_name": names[1]}],
            "annotations": [{"image_id": 5, "category_id": 0}, {"image_id": 11, "category_id": 3}],
            "categories": [{"id": i, "name": n} for i, n in enumerate(["Rosa", "Quercus", "Apis", "Larus"])]}
    (tmp_path / "val2017.json").write_text(json.dumps(data))
    ds = INat2017Dataset(tmp_path, "test")
    assert [y for _, y in ds.samples] == [3, 0]
    assert ds.names_by_label == {0: "Rosa", 1: "Quercus", 2: "Apis", 3: "Larus"}
    assert ds[0][0].mode == "RGB"
    data["annotations"].pop()
    (tmp_path / "train2017.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"train2017\.json: image id 11 has no annotation"):
        INat2017Dataset(tmp_path, "train")


def test_toy_dataset_is_cub_format_balanced_and_deterministic(tmp_path: Path) -> None:
    a = write_toy_cub(tmp_path / "a", num_train=24, num_test=8, seed=3)
    b = write_toy_cub(tmp_path / "b", num_train=24, num_test=8, seed=3)
    assert (a / "images.txt").read_text() == (b / "images.txt").read_text()
    first = sorted((a / "images").rglob("*.png"))[0]
    assert first.read_bytes() == (b / first.relative_to(a)).read_bytes()
    train, test = CUBDataset(a, "train"), CUBDataset(a, "test")
    assert len(train) == 24 and len(test) == 8
    assert np.bincount(train.targets + test.targets).tolist() == [4] * 8
    dm = FGVCDataModule(root=str(a), toy_num_train=24, toy_num_test=8, toy_seed=3, batch_size=4)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 64, 64) and y.shape == (4,)
    with pytest.raises(ValueError, match="num_classes=3"):
        FGVCDataModule(root=str(a), num_classes=3, toy_num_train=24, toy_num_test=8, toy_seed=3).setup()
