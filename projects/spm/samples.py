"""Image grids during training: the frozen model and the SPM side by side, for the configs without a judge."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from shared.panels import log_images


class SampleGrid(Callback):
    """Logs ``prompts`` (default: the module's targets) generated with the membrane off ("original") and on
    ("SPM"), same noise: every ``every_n_steps`` training steps (0: never) as ``samples/step<N>``, and at each
    validation batch as ``samples/val`` (rank 0). DDIM with ``steps`` steps, CFG ``guidance``, noise from ``seed``.
    """

    def __init__(self, prompts: list[str] | None = None, every_n_steps: int = 0, steps: int = 20,
                 guidance: float = 5.0, seed: int = 1234) -> None:
        self.prompts, self.every_n_steps = prompts, every_n_steps
        self.steps, self.guidance, self.seed = steps, guidance, seed

    def log_grid(self, module: LightningModule, key: str) -> None:
        prompts = self.prompts or module.targets
        rows = [module.generate(prompts, gamma, self.seed, self.steps, self.guidance) for gamma in (0.0, 1.0)]
        captions = [f"{p} | {'SPM' if g else 'original'}" for g in (0, 1) for p in prompts]
        log_images(module, key, list(torch.cat(rows)), captions)

    def on_train_batch_start(self, trainer: Trainer, module: LightningModule, batch, batch_idx: int) -> None:
        every = self.every_n_steps
        if every and trainer.global_step % every == 0 and trainer.global_rank == 0:
            self.log_grid(module, f"samples/step{trainer.global_step}")

    def on_validation_batch_end(self, trainer: Trainer, module: LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.global_rank == 0:
            self.log_grid(module, "samples/val")
