"""Gradient accumulation that keeps the rest right: the effective batch said and stored, checkpoints only between
optimiser steps.

``--trainer.accumulate_grad_batches k`` (Lightning's) sums the gradients of ``k`` batches per optimiser step. The
LR schedules already count optimiser steps (``shared.schedules``: ``max_steps`` and ``estimated_stepping_batches``
are optimiser steps), so the curve over training is the same with ``k`` x smaller batches. What this adds:

* the effective batch, ``data.batch_size x k x devices x nodes``, printed when training starts, logged with the
  run's hyper-parameters (``effective_batch_size``) and written in ``summary.json``;
* a checkpoint never falls between two optimiser steps (the gradients summed so far are not in it, so a resume
  from there could not be exact): a validation interval that is not a multiple of ``k`` is refused with one line,
  and a signal that arrives mid-accumulation stops the run at the next optimiser step (``shared.interrupt``).
"""

from __future__ import annotations

import math
import sys

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback


def per_device_batch(trainer: Trainer) -> int | None:
    """The data module's ``batch_size`` hyper-parameter (per process), or None when it has none (SPM)."""
    hparams = getattr(trainer.datamodule, "hparams", None) or {}
    size = hparams.get("batch_size")
    return int(size) if isinstance(size, int) else None


class EffectiveBatch(Callback):
    """Says the effective batch when training starts and refuses a validation interval between optimiser steps."""

    def __init__(self) -> None:
        self.size: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        k = trainer.accumulate_grad_batches
        every = trainer.val_check_batch
        if k > 1 and isinstance(every, int) and not math.isinf(every) and every % k:
            raise ValueError(f"trainer.val_check_interval: validation (and its checkpoint) every {every} batches "
                             f"falls between two optimiser steps of trainer.accumulate_grad_batches {k}, where a "
                             f"resume could not be exact; make it a multiple of {k}")
        per_device = per_device_batch(trainer)
        if per_device is None:
            return
        self.size = per_device * k * trainer.num_devices * trainer.num_nodes
        if trainer.is_global_zero:
            sys.stderr.write(f"effective batch size {self.size} = data.batch_size {per_device} x "
                             f"accumulate_grad_batches {k} x {trainer.num_devices} device(s) x "
                             f"{trainer.num_nodes} node(s)\n")
        for logger in trainer.loggers:
            logger.log_hyperparams({"effective_batch_size": self.size, "accumulate_grad_batches": k})
