"""What a resumed run needs beyond Lightning's checkpoint: the random generators' states.

Lightning restores the weights, optimiser, schedulers and loop counters; the data order and each sample's
augmentation follow from ``(seed, epoch, index)`` (``shared.data.loaders``). What is left is the global random
state the training steps draw from (dropout, SPM's timesteps and noise, DiD/RAMS random choices):
:class:`RandomStates` stores python's, numpy's and torch's (CPU and every CUDA device) in each checkpoint, and
puts them back when the resumed training starts (after the sanity validation, which would otherwise draw from
them first). Every process stores its own (``random_states/rank<k>``, gathered to the checkpoint writer).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

KEY = "random_states"


def collect_states() -> dict[str, Any]:
    """This process's generator states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_states(states: dict[str, Any]) -> None:
    random.setstate(_tuples(states["python"]))
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples; a checkpoint may hand lists back."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


class RandomStates(Callback):
    """Saves every process's random states in the checkpoint; restores them when a resumed fit starts training."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        mine = collect_states()
        if trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        checkpoint[KEY] = {f"rank{r}": s for r, s in enumerate(gathered)}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(KEY, {})
        self._pending = saved.get(f"rank{trainer.global_rank}")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            restore_states(self._pending)
            self._pending = None
