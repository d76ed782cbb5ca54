"""One base for the image projects' DataModules: the four loaders, built alike.

A subclass says which dataset each split reads (:meth:`SplitDataModule.dataset`) and, when it needs one, how a
batch is collated (:meth:`SplitDataModule.collate_fn`); its hyper-parameters hold ``batch_size``,
``eval_batch_size`` (``None``: ``batch_size``) and ``num_workers``. Training goes through
:func:`~shared.data.loaders.train_loader` (resumable to the sample, seeded augmentations), validation, test and
predict through :func:`~shared.data.loaders.eval_loader` (every sample once over all processes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from shared.data.loaders import eval_loader, train_loader
from shared.predict import ImageFolderDataset, scan_image_folder

Split = Literal["train", "val", "test", "predict"]


class SplitDataModule(LightningDataModule):
    """Lightning's four ``*_dataloader`` hooks over :meth:`dataset`, with the shared loaders."""

    def dataset(self, split: Split) -> Dataset:
        """The dataset ``split`` reads (set up by ``setup``)."""
        raise NotImplementedError

    def collate_fn(self) -> Callable | None:
        """The batch's collate function (``None``: torch's default)."""
        return None

    def loader(self, split: Split) -> DataLoader:
        h = self.hparams
        if split == "train":
            return train_loader(self, self.dataset(split), h.batch_size, h.num_workers, collate_fn=self.collate_fn())
        return eval_loader(self, self.dataset(split), h.eval_batch_size or h.batch_size, h.num_workers,
                           collate_fn=self.collate_fn())

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader("predict")


def predict_folder(predict_dir: str | Path | None, skip_bad_files: bool, view: Callable) -> ImageFolderDataset:
    """The images of ``data.predict_dir`` seen through ``view`` (the test geometry); unreadable files are named,
    skipped only with ``data.skip_bad_files``."""
    if predict_dir is None:
        raise ValueError("predict reads a folder of images: pass --data.predict_dir <folder>")
    return ImageFolderDataset(predict_dir, scan_image_folder(predict_dir, skip_bad_files), view)
