"""The training step the benches time: the project's own ``LightningModule.training_step``, built from a config.

A bench row builds the module a config file describes (:func:`paper_config`: the YAML with its interpolations
resolved) and times :func:`train_step` on it: the module's ``training_step`` (its model, its loss function, its
logging calls), backward, the config's gradient clip and an optimizer step. So a timed step is the trained one,
not a copy of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from omegaconf import OmegaConf

# ``self.log`` outside a Trainer returns at once after this warning (Lightning supports calling steps that way).
warnings.filterwarnings("ignore", message=r".*self\.log\(\)` but the `self\.trainer` reference is not registered")


def paper_config(path: str | Path) -> dict[str, Any]:
    """The config file at ``path`` as a dict, ``${...}`` interpolations resolved (environment defaults included)."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def train_step(module: LightningModule, batch: Any, optimizer: torch.optim.Optimizer,
               clip: float | None) -> Callable[[], torch.Tensor]:
    """One optimizer step of ``module`` on ``batch``, as ``fit`` runs it: ``training_step``, backward, the gradient
    norm clipped to ``clip`` (``trainer.gradient_clip_val``; None: no clip), ``optimizer.step``. Returns the loss."""
    def step() -> torch.Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            loss = module.training_step(batch, 0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
            optimizer.step()
        return loss.detach()
    return step
