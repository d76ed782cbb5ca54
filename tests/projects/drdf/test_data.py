"""Loaders on fixtures in each real format: Hateful Memes jsonl, CIFAR-10/100 pickles, TinyImageNet."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from projects.drdf.data import (
    CIFARDataset,
    Collate,
    DRDFDataModule,
    HatefulMemesDataset,
    TinyImageNetDataset,
    load_cifar_batch,
    toy_memes_ready,
    write_toy_memes,
)


def _png(path: Path, mode: str = "RGB", size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), 128 if mode == "L" else (10, 200, 30)).save(path)


@pytest.fixture
def hm_root(tmp_path: Path) -> Path:
    for i in (1, 2, 3):
        _png(tmp_path / "img" / f"{i:05d}.png", mode="L" if i == 2 else "RGB")  # a greyscale meme too
    lines = [{"id": 1, "img": "img/00001.png", "text": "a meme", "label": 1},
             {"id": 2, "img": "img/00002.png", "text": "another meme", "label": 0}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (tmp_path / "test_unseen.jsonl").write_text(json.dumps({"id": 3, "img": "img/00003.png", "text": "no label"}))
    return tmp_path


def test_hateful_memes_labeled_and_unlabeled(hm_root: Path) -> None:
    ds = HatefulMemesDataset(hm_root, "train")
    assert len(ds) == 2
    item = ds[1]
    assert item["id"] == 2 and item["label"] == 0 and item["image"].shape == (3, 20, 20)
    with pytest.raises(ValueError, match="no 'label'"):
        HatefulMemesDataset(hm_root, "test_unseen")
    unlabeled = HatefulMemesDataset(hm_root, "test_unseen", require_label=False)
    assert unlabeled[0]["label"] == -1


def test_jsonl_line_with_missing_field_names_the_line(hm_root: Path) -> None:
    bad = hm_root / "dev_seen.jsonl"
    bad.write_text(json.dumps({"id": 1, "img": "img/00001.png", "text": "ok", "label": 1}) + "\n"
                   + json.dumps({"id": 2, "text": "no img", "label": 0}) + "\n")
    with pytest.raises(ValueError, match=r"dev_seen.jsonl:2: missing field 'img'"):
        HatefulMemesDataset(hm_root, "dev_seen")


def test_missing_split_and_image_are_named(hm_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dev_seen"):
        HatefulMemesDataset(hm_root, "dev_seen")
    (hm_root / "img" / "00001.png").unlink()
    with pytest.raises(FileNotFoundError, match="00001.png"):
        HatefulMemesDataset(hm_root, "train")[0]


def _cifar_batch(path: Path, n: int, label_key: str, num_classes: int, protocol: int) -> None:
    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"fixture", label_key.encode(): rng.integers(0, num_classes, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_and_cifar100(tmp_path: Path, protocol: int) -> None:
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        _cifar_batch(c10 / f"data_batch_{i}", 4, "labels", 10, protocol)
    _cifar_batch(c10 / "test_batch", 3, "labels", 10, protocol)
    train = CIFARDataset(c10, "cifar10", train=True)
    assert len(train) == 20 and train[0]["image"].shape == (3, 32, 32)
    raw = load_cifar_batch(c10 / "data_batch_1")
    # channel-first layout: the first 1024 bytes are the red plane, row-major
    np.testing.assert_array_equal((train[0]["image"][0] * 255).round().to(torch.uint8).numpy().ravel(),
                                  raw["data"][0, :1024])
    assert len(CIFARDataset(c10, "cifar10", train=False)) == 3
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    _cifar_batch(c100 / "train", 6, "fine_labels", 100, protocol)
    _cifar_batch(c100 / "test", 2, "fine_labels", 100, protocol)
    ds = CIFARDataset(c100, "cifar100", train=True)
    assert len(ds) == 6 and 0 <= ds[0]["label"] < 100


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(str(marker)), b"labels": [0]}))
    with pytest.raises(pickle.UnpicklingError) as err:
        CIFARDataset(folder, "cifar10", train=True)
    message = str(err.value)
    assert "data_batch_1" in message and "system" in message and "refused" in message
    assert not marker.exists()


def test_tiny_imagenet(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for i in range(2):
            _png(root / "train" / w / "images" / f"{w}_{i}.JPEG", mode="L" if i else "RGB", size=64)
    ann = []
    for i, w in enumerate(wnids):
        _png(root / "val" / "images" / f"val_{i}.JPEG", size=64)
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    train = TinyImageNetDataset(root, "train")
    assert len(train) == 4 and train[1]["image"].shape == (3, 64, 64) and train[3]["label"] == 1
    val = TinyImageNetDataset(root, "val")
    assert [val[i]["label"] for i in range(2)] == [0, 1]
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt:1"):
        TinyImageNetDataset(root, "val")


def _key_colour_and_shape(path: Path) -> tuple[int, int]:
    """(1 if the key object is red else 0, 1 if it is a square else 0), read back from the pixels."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    red = (np.abs(rgb - np.array([220, 30, 30])).sum(-1) < 90)
    blue = (np.abs(rgb - np.array([35, 70, 225])).sum(-1) < 90)
    key = red if red.sum() > blue.sum() else blue
    ys, xs = np.nonzero(key)
    # rotation-invariant: farthest pixel from the centroid over sqrt(area) is 1/sqrt(pi) = 0.56 for a disc and
    # 1/sqrt(2) = 0.71 for a square
    spread = np.sqrt((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).max() / np.sqrt(key.sum())
    return int(red.sum() > blue.sum()), int(spread > 0.635)


def test_toy_memes_are_in_the_hateful_memes_format(tmp_path: Path) -> None:
    root = write_toy_memes(tmp_path / "toy", {"train": 36, "dev_seen": 8, "test_unseen": 4}, seed=3)
    ds = HatefulMemesDataset(root, "train")
    assert {r["aspect"] for r in ds.records} == {"verdict", "colour", "shape"}
    assert {r["decided_by"] for r in ds.records} == {"text", "image"}
    assert {r["label"] for r in ds.records} == {0, 1}
    for r in ds.records:  # the rules the toy promises, checked on the written caption and pixels
        colour, shape = _key_colour_and_shape(root / r["img"])
        if r["aspect"] == "verdict":
            assert r["decided_by"] == "text" and r["text"].startswith("the caption says")
            assert r["label"] == int(r["text"].endswith("bad"))
        else:
            assert r["decided_by"] == "image" and r["text"].startswith(f"look at the {r['aspect']} of")
            assert r["label"] == (colour if r["aspect"] == "colour" else shape), r
    assert "label" not in json.loads((root / "test_unseen.jsonl").read_text().splitlines()[0])
    dm = DRDFDataModule("toy_memes", str(root), batch_size=4, image_size=32, max_length=16,
                        toy_sizes={"train": 36, "dev_seen": 8, "test_unseen": 4}, toy_seed=3)
    assert toy_memes_ready(root, {"train": 36, "dev_seen": 8, "test_unseen": 4}, 32, 3)
    assert not toy_memes_ready(root, {"train": 36, "dev_seen": 8, "test_unseen": 4}, 32, 4)  # would be rewritten
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["input_ids"].shape[0] == 4
    recs = [ds.records[i] for i in batch["id"].sub(1).tolist()]
    assert batch["decided_by"].tolist() == [{"text": 0, "image": 1}[r["decided_by"]] for r in recs]
    assert batch["aspect"].tolist() == [{"verdict": 0, "colour": 1, "shape": 2}[r["aspect"]] for r in recs]
    assert int(batch["input_ids"].max()) < 256


def test_collate_without_text() -> None:
    items = [{"id": i, "image": torch.zeros(3, 4, 4), "label": i} for i in range(3)]
    batch = Collate()(items)
    assert batch["image"].shape == (3, 3, 4, 4) and "input_ids" not in batch
