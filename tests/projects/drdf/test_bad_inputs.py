"""Bad dataset inputs (empty or mislabelled splits, cut CIFAR batches, odd meme sizes) stop with one line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from projects.drdf.data import CIFARDataset, Collate, DRDFDataModule, TinyImageNetDataset, load_cifar_batch
from projects.drdf.experts import GridEncoder
from projects.drdf.model import ImageRouter
from shared.backbones.text import build_wordpiece_tokenizer


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def memes(tmp_path: Path) -> Path:
    """Hateful Memes layout with three memes of different sizes and modes, a tokenizer and an empty dev split."""
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "img/00001.png")
    Image.new("L", (25, 60), 90).save(tmp_path / "img/00002.png")
    Image.new("RGBA", (64, 64), (0, 0, 255, 128)).save(tmp_path / "img/00003.png")
    lines = [{"id": i, "img": f"img/{i:05d}.png", "text": f"meme number {i}", "label": i % 2} for i in (1, 2, 3)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (tmp_path / "dev_seen.jsonl").write_text("\n")
    build_wordpiece_tokenizer([x["text"] for x in lines], tmp_path / "tokenizer", vocab_size=64)
    return tmp_path


def test_empty_jsonl_split_is_refused_at_setup(memes: Path) -> None:
    dm = DRDFDataModule("hateful_memes", str(memes), tokenizer=str(memes / "tokenizer"), image_size=32)
    with pytest.raises(ValueError, match=r"dev_seen\.jsonl: the 'val' split has no samples") as err:
        dm.setup("fit")
    one_line(err)


def test_memes_of_different_sizes_stack_at_image_size_32(memes: Path) -> None:
    dm = DRDFDataModule("hateful_memes", str(memes), tokenizer=str(memes / "tokenizer"), image_size=32,
                        val_split="train")
    dm.setup("fit")
    ds = dm.splits["train"]
    batch = Collate(dm.tokenizer, 16)([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 32, 32) and batch["input_ids"].shape[0] == 3


def write_cifar(path: Path, labels: list[int], rows: int | None = None) -> bytes:
    data = np.zeros((len(labels) if rows is None else rows, 3072), dtype=np.uint8)
    raw = pickle.dumps({b"batch_label": b"test", b"labels": labels, b"data": data}, protocol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


def test_truncated_cifar_batch_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = write_cifar(path, [0, 1, 2])
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"test_batch: truncated or not a CIFAR python batch .*re-download") as err:
        load_cifar_batch(path)
    one_line(err)


def test_cifar_rows_and_labels_of_different_lengths(tmp_path: Path) -> None:
    write_cifar(tmp_path / "test_batch", [0, 1], rows=3)
    with pytest.raises(ValueError, match=r"test_batch: expected 'data' uint8 \[N, 3072\] and 'labels' N ints, got "
                                         r"'data' \[3, 3072\] and 2 labels") as err:
        CIFARDataset(tmp_path, "cifar10", train=False)
    one_line(err)


def test_cifar_label_out_of_range_for_the_format_and_for_num_classes(tmp_path: Path) -> None:
    write_cifar(tmp_path / "test_batch", [0, 12, 3])
    with pytest.raises(ValueError, match=r"test_batch: labels has 1 value\(s\) outside 0\.\.9 \(cifar10 "
                                         r"classes=10\): 12") as err:
        CIFARDataset(tmp_path, "cifar10", train=False)
    one_line(err)
    write_cifar(tmp_path / "test_batch", [0, 7, 3])
    with pytest.raises(ValueError, match=r"test_batch: labels has 1 value\(s\) outside 0\.\.4 "
                                         r"\(data\.num_classes=5\): 7") as err:
        DRDFDataModule("cifar10", str(tmp_path), num_classes=5).setup("validate")
    one_line(err)


def test_empty_cifar_and_tiny_imagenet_splits_are_refused_at_setup(tmp_path: Path) -> None:
    write_cifar(tmp_path / "c10" / "test_batch", [])
    with pytest.raises(ValueError, match=r"c10/test_batch: the 'test' split has no samples") as err:
        DRDFDataModule("cifar10", str(tmp_path / "c10")).setup("test")
    one_line(err)
    (tmp_path / "tiny" / "val").mkdir(parents=True)
    (tmp_path / "tiny" / "wnids.txt").write_text("n01443537\n")
    (tmp_path / "tiny" / "val" / "val_annotations.txt").write_text("")
    with pytest.raises(ValueError, match=r"val_annotations\.txt: the 'val' split has no samples") as err:
        DRDFDataModule("tiny_imagenet", str(tmp_path / "tiny"), image_size=64).setup("validate")
    one_line(err)


def test_refused_pickle_is_a_value_error(tmp_path: Path) -> None:
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": print, b"labels": [0]}))
    with pytest.raises(ValueError, match=r"test_batch: refused to load global builtins\.print") as err:
        load_cifar_batch(tmp_path / "test_batch")
    assert isinstance(err.value, pickle.UnpicklingError)
    one_line(err)


def test_tiny_imagenet_class_without_training_images(tmp_path: Path) -> None:
    wnids = ["n01443537", "n01629819"]
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    Image.new("RGB", (64, 64)).save(tmp_path / "a.JPEG")
    (tmp_path / "train" / wnids[0] / "images").mkdir(parents=True)
    (tmp_path / "train" / wnids[1] / "images").mkdir(parents=True)
    (tmp_path / "a.JPEG").rename(tmp_path / "train" / wnids[0] / "images" / "a.JPEG")
    with pytest.raises(ValueError, match=r"n01629819/images: no \*\.JPEG training images for class n01629819") as err:
        TinyImageNetDataset(tmp_path, "train")
    one_line(err)
    (tmp_path / "wnids.txt").write_text(wnids[0] + "\n")
    with pytest.raises(ValueError, match=r"wnids\.txt: 1 wnids but data\.num_classes=200") as err:
        DRDFDataModule("tiny_imagenet", str(tmp_path), num_classes=200, image_size=64).setup("fit")
    one_line(err)


def test_cli_prints_one_error_line_and_exits_2(run_cli, memes: Path) -> None:
    run = run_cli("drdf", "fit", "--config", "projects/drdf/configs/toy.yaml", "--data.dataset", "hateful_memes",
                  "--data.data_dir", memes, "--data.tokenizer", memes / "tokenizer", "--logger", "none",
                  "--trainer.fast_dev_run", "1", check=False)
    errors = [line for line in run.err.splitlines() if line.startswith("error:")]
    assert run.code == 2, run.err[-3000:]
    assert len(errors) == 1 and "dev_seen.jsonl: the 'val' split has no samples" in errors[0], run.err[-3000:]
    assert "Traceback" not in run.err


def test_an_image_size_the_networks_cannot_take_is_named() -> None:
    """data.image_size 0 / below the patch router's patch: were convolution errors ("Kernel size can't be greater
    than actual input size") at model build or at the first step."""
    with pytest.raises(ValueError, match=r"^data.image_size must be >= 1; got 0$"):
        DRDFDataModule(image_size=0)
    with pytest.raises(ValueError, match=r"^grid encoder resnet18: data.image_size 0 is too small for it \(.*"
                                         r"\); expected a larger image_size$"):
        GridEncoder("tiny", image_size=0)
    router = ImageRouter(3, kind="patch", patch=8, dim=4)
    assert router({"image": torch.zeros(2, 3, 8, 8)})[1].shape == (2, 3)
    with pytest.raises(ValueError, match=r"^image_router.patch=8 is larger than the 5x5 images; expected "
                                         r"data.image_size >= image_router.patch$"):
        router({"image": torch.zeros(2, 3, 5, 5)})
