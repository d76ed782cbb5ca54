"""Hyper-parameters of a LightningModule whose arguments are grouped: an injected model and dataclass groups.

Every project's module takes the paper's model as one argument (``net``, built by the CLI from its own
``class_path`` / ``init_args``) and the method's other knobs as small frozen dataclasses (``optim``, ``loss``, ...).
:func:`save_hparams` records them so that a checkpoint restores the run:

* built by the CLI: the run's config of the module, the model's ``class_path`` + ``init_args`` included (what
  ``--ckpt_path`` reads back);
* built in Python: the plain arguments and the groups as dicts; the injected model is left out (its weights are in
  the state dict, and an ``nn.Module`` does not belong in the hyper-parameters).

Groups are stored as plain dicts in both cases, so a checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, is_dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

HPARAMS_FORMAT = 2
"""Version of the module arguments a checkpoint was written with: 1 = flat arguments (before the groups; those
checkpoints have no ``HPARAMS_FORMAT_KEY``), 2 = an injected model and dataclass groups.
:class:`~shared.cli.ProjectCLI` names the version when a checkpoint does not fit."""
HPARAMS_FORMAT_KEY = "cv_papers_hparams_format"


class HparamsFormat(Callback):
    """Stamps every checkpoint with :data:`HPARAMS_FORMAT`."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[HPARAMS_FORMAT_KEY] = HPARAMS_FORMAT


def save_hparams(module: LightningModule, injected: tuple[str, ...] = ("net",)) -> None:
    """Call in the module's ``__init__`` in place of ``self.save_hyperparameters()``."""
    from_cli = _given_hyperparameters.get() is not None
    module.save_hyperparameters(ignore=[] if from_cli else list(injected), frame=inspect.currentframe().f_back)
    for key, value in list(module.hparams.items()):
        if is_dataclass(value) and not isinstance(value, type):
            module.hparams[key] = asdict(value)


def group(cls: type, value: object) -> object:
    """``value`` as the dataclass ``cls``: a group passed as a dict (a test, a notebook) or as ``cls`` itself."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a dict of its fields, got {type(value).__name__}")


def pin_cpu_threads(module: LightningModule, threads: int | None) -> None:
    """Set torch's intra-op threads for a CPU run (None: torch's default; no effect on a GPU). A toy run reproduces
    its study's committed numbers bit for bit only on the study's thread count (float sums are ordered by thread),
    and on a shared 2-core machine one thread is often faster than two that spin-wait for each other."""
    if threads and module.device.type == "cpu":
        torch.set_num_threads(threads)
