"""One base for the image projects' DataModules: the four loaders, built alike.

A subclass says which dataset each split reads (:meth:`SplitDataModule.dataset`) and, when it needs one, how a
batch is collated (:meth:`SplitDataModule.collate_fn`); its hyper-parameters hold ``batch_size``,
``eval_batch_size`` (``None``: ``batch_size``) and ``num_workers``, and, for a dataset of image files,
``skip_bad_files`` and ``max_bad_fraction`` (``shared.data.bad_files``: unreadable images replaced and counted
in every split, the tally in the checkpoint and ``summary.json``). Training goes through
:func:`~shared.data.loaders.train_loader` (resumable to the sample, seeded augmentations), validation, test and
predict through :func:`~shared.data.loaders.eval_loader` (every sample once over all processes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from shared.data.bad_files import BadFiles
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

    bad_files: BadFiles | None = None

    def _bad_files(self, split: Split) -> BadFiles | None:
        """The run's tally when ``skip_bad_files`` is on (``predict`` skips them while scanning its folder)."""
        if split == "predict" or not self.hparams.get("skip_bad_files", False):
            return None
        if self.bad_files is None:
            self.bad_files = BadFiles(self.hparams.get("max_bad_fraction", 0.001))
        return self.bad_files

    def loader(self, split: Split) -> DataLoader:
        h = self.hparams
        if split == "train":
            return train_loader(self, self.dataset(split), h.batch_size, h.num_workers, collate_fn=self.collate_fn(),
                                bad_files=self._bad_files(split))
        return eval_loader(self, self.dataset(split), h.eval_batch_size or h.batch_size, h.num_workers,
                           collate_fn=self.collate_fn(), bad_files=self._bad_files(split), split=split)

    def state_dict(self) -> dict:
        return {"bad_files": self.bad_files.state_dict()} if self.bad_files is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if "bad_files" in state_dict and self._bad_files("train") is not None:
            self.bad_files.load_state_dict(state_dict["bad_files"])

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
