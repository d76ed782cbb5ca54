"""Bad dataset inputs (empty splits, labels out of range, odd .mat layouts, broken images) stop with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from projects.rams_trans.data import FGVCDataModule, INat2017Dataset, StanfordDogsDataset, _mat_strings


def save(path: Path, size: tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path, format="PNG")


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def write_cub(root: Path, split: str = "1 1\n2 0\n", labels: str = "1 1\n2 2\n") -> Path:
    cub = root / "CUB_200_2011"
    for i in (1, 2):
        save(cub / "images" / f"00{i}.X/{i}.jpg")
    (cub / "images.txt").write_text("1 001.X/1.jpg\n2 002.X/2.jpg\n")
    (cub / "image_class_labels.txt").write_text(labels)
    (cub / "train_test_split.txt").write_text(split)
    return cub


def test_cub_with_no_test_image_is_refused_at_setup(tmp_path: Path) -> None:
    cub = write_cub(tmp_path, split="1 1\n2 1\n")
    with pytest.raises(ValueError, match=r"train_test_split\.txt: the 'test' split has no samples") as err:
        FGVCDataModule("cub", str(cub), num_classes=2).setup("fit")
    one_line(err)


def test_cub_class_above_num_classes_names_file_value_and_range(tmp_path: Path) -> None:
    cub = write_cub(tmp_path, labels="1 1\n2 3\n")
    with pytest.raises(ValueError, match=r"image_class_labels\.txt: class id has 1 value\(s\) outside 1\.\.2 "
                                         r"\(data\.num_classes=2\): 3") as err:
        FGVCDataModule("cub", str(cub), num_classes=2).setup("fit")
    one_line(err)


def write_dogs(root: Path, files: list[str], labels: list[int], split: str = "train", file_list=None) -> Path:
    for f in files:
        save(root / "Images" / f)
    if file_list is None:  # the real layout: a cell array of 1-element char arrays
        file_list = np.empty((len(files), 1), dtype=object)
        for i, f in enumerate(files):
            file_list[i, 0] = np.array([f])
    scipy.io.savemat(root / f"{split}_list.mat", {"file_list": file_list,
                                                  "labels": np.array(labels, dtype=np.uint8).reshape(-1, 1)})
    return root


def test_dogs_empty_test_list_is_refused_at_setup(tmp_path: Path) -> None:
    write_dogs(tmp_path, ["n1-A/a.jpg"], [1])
    write_dogs(tmp_path, [], [], split="test")
    with pytest.raises(ValueError, match=r"test_list\.mat: the 'test' split has no samples") as err:
        FGVCDataModule("dogs", str(tmp_path), num_classes=120).setup("fit")
    one_line(err)


def test_dogs_char_matrix_file_list_is_read_without_its_padding(tmp_path: Path) -> None:
    files = ["n1-A/a.jpg", "n2-Bb/long_name.jpg"]
    write_dogs(tmp_path, files, [1, 2], file_list=np.array(files))  # savemat writes a space-padded char matrix
    assert scipy.io.loadmat(tmp_path / "train_list.mat")["file_list"][0].endswith(" ")  # the padding is there
    ds = StanfordDogsDataset(tmp_path, "train")
    assert [p.relative_to(tmp_path / "Images").as_posix() for p, _ in ds.samples] == files
    assert ds[0][0].size == (20, 14)
    write_dogs(tmp_path, files, [1, 2], split="test")  # and the cell-array layout next to it
    assert [p.name for p, _ in StanfordDogsDataset(tmp_path, "test").samples] == ["a.jpg", "long_name.jpg"]
    chars = scipy.io.loadmat(tmp_path / "train_list.mat", chars_as_strings=False)["file_list"]
    assert chars.ndim == 2 and _mat_strings(chars, Path("x.mat"), "file_list") == files  # one char a cell


def test_dogs_file_list_of_another_type_is_refused(tmp_path: Path) -> None:
    write_dogs(tmp_path, [], [1, 2], file_list=np.array([[3.0], [4.0]]))
    with pytest.raises(ValueError, match=r"train_list\.mat: key 'file_list' holds a float64, expected a cell "
                                         r"array of strings or a char matrix") as err:
        StanfordDogsDataset(tmp_path, "train")
    one_line(err)


def write_inat(root: Path, annotations: list[dict], n_categories: int = 3, name: str = "val2017.json") -> Path:
    save(root / "train_val_images/A/1.jpg")
    data = {"images": [{"id": 1, "file_name": "train_val_images/A/1.jpg"}] if annotations else [],
            "annotations": annotations, "categories": [{"id": i} for i in range(n_categories)]}
    (root / name).write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("category", [-1, 7])
def test_inat_category_id_not_among_the_categories(tmp_path: Path, category: int) -> None:
    write_inat(tmp_path, [{"image_id": 1, "category_id": category}])
    with pytest.raises(ValueError, match=rf"val2017\.json: annotations\[\]\.category_id \[{category}\] not among "
                                         r"the ids of 'categories'") as err:
        INat2017Dataset(tmp_path, "test")
    one_line(err)


def test_inat_category_id_above_num_classes_and_empty_val_are_refused(tmp_path: Path) -> None:
    write_inat(tmp_path, [{"image_id": 1, "category_id": 2}], name="train2017.json")
    write_inat(tmp_path, [{"image_id": 1, "category_id": 0}])
    with pytest.raises(ValueError, match=r"train2017\.json: annotations\[\]\.category_id has 1 value\(s\) outside "
                                         r"0\.\.1 \(data\.num_classes=2\): 2") as err:
        FGVCDataModule("inat2017", str(tmp_path), num_classes=2).setup("fit")
    one_line(err)
    write_inat(tmp_path, [])
    with pytest.raises(ValueError, match=r"val2017\.json: the 'test' split has no samples") as err:
        FGVCDataModule("inat2017", str(tmp_path), num_classes=3).setup("fit")
    one_line(err)


def test_undecodable_image_is_named_in_getitem(tmp_path: Path) -> None:
    write_inat(tmp_path, [{"image_id": 1, "category_id": 0}])
    (tmp_path / "train_val_images/A/1.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image .*train_val_images/A/1\.jpg") as err:
        INat2017Dataset(tmp_path, "test")[0]
    one_line(err)
