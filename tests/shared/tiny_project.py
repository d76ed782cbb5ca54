"""A tiny project run through the shared launcher by the CLI, DDP and resume tests.

Run as a script (``python tests/shared/tiny_project.py fit --config ...``) so Lightning's DDP launcher can
re-execute it in each worker process.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.cli import main  # noqa: E402
from shared.data.loaders import train_loader  # noqa: E402
from shared.panels import log_bar_chart, log_histogram, log_images  # noqa: E402


class TinyData(LightningDataModule):
    """A fixed linear-regression problem; ``data_dir`` (optional) must exist when given."""

    def __init__(self, num_features: int = 8, num_samples: int = 64, batch_size: int = 8,
                 data_dir: str | None = None, shuffle: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        if self.hparams.data_dir is not None and not Path(self.hparams.data_dir).is_dir():
            raise FileNotFoundError(f"data.data_dir: directory not found: {self.hparams.data_dir} "
                                    "(expected a folder with the dataset)")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.hparams.num_samples, self.hparams.num_features, generator=g)
        w = torch.randn(self.hparams.num_features, 1, generator=g)
        self.dataset = TensorDataset(x, x @ w + 0.1 * torch.randn(self.hparams.num_samples, 1, generator=g))

    def train_dataloader(self) -> DataLoader:
        if self.hparams.shuffle:   # the projects' resumable loader
            return train_loader(self, self.dataset, self.hparams.batch_size, 0)
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=False)


class TinyModule(LightningModule):
    monitor = "val/mse"
    monitor_mode = "min"

    def __init__(self, num_features: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.linear = nn.Linear(num_features, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.linear(x), y)
        if str(self.global_step) == os.environ.get("TINY_NAN_AT_STEP"):              # the non-finite guard tests
            loss = loss * float("nan")
        if str(self.trainer.fit_loop.epoch_loop.total_batch_idx) == os.environ.get("TINY_SIGNAL_AT_BATCH"):
            os.kill(os.getpid(), signal.SIGTERM)                                    # mid-step, as a real one comes
        self.log("train/loss", loss)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if str(self.trainer.global_step) == os.environ.get("TINY_KILL_AT_STEP"):   # the kill-and-resume test
            os.kill(os.getpid(), signal.SIGKILL)
        if str(self.trainer.global_step) == os.environ.get("TINY_SIGNAL_AT_STEP"):  # the interruption tests
            os.kill(os.getpid(), signal.Signals[os.environ.get("TINY_SIGNAL", "SIGTERM")])

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/mse", nn.functional.mse_loss(self.linear(x), y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            weights = self.linear.weight.detach()[0]
            log_images(self, "val/weights_image", [torch.sigmoid(weights).view(1, 1, -1).expand(3, 4, -1)],
                       captions=["sigmoid(weights)"])
            log_bar_chart(self, "val/weights", [f"w{i}" for i in range(weights.numel())], weights.tolist())
            log_histogram(self, "val/weights_hist", weights)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


if __name__ == "__main__":
    main(TinyModule, TinyData, project="tiny")
