"""Data for SPM: the training loop needs no images (only prompt strings), so the datamodule yields step indices."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from shared.data.loaders import eval_loader


class _Steps(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class SPMStepData(LightningDataModule):
    """Yields ``iterations`` step indices per epoch (SPM trains from prompts alone) and ``val_batches`` for
    the evaluation pass. ``batch_size`` is 1 as in the official configs (one prompt pair per iteration)."""

    def __init__(self, iterations: int = 3000, val_batches: int = 1) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"data.iterations must be >= 1, got {iterations}")
        self.iterations, self.val_batches = iterations, val_batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(self.iterations), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self, _Steps(self.val_batches), 1, 0, pad_with=-1)   # -1: a step with nothing to score
