"""The optimizer choice RAMS-Trans and DiD share: SGD with momentum (both papers' fine-tuning recipe) or AdamW
(their toy runs from random init, where SGD barely moves a ViT in a few hundred steps)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class SGDOrAdamW:
    """One parameter group, as the official trainers; a project's recipe subclasses it with its own defaults and
    schedule fields."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"model.optim.name must be 'sgd' (paper) or 'adamw' (toy), got {self.name!r}")

    def build(self, params: Iterable[torch.nn.Parameter], **kwargs) -> torch.optim.Optimizer:
        """The optimizer over ``params``; ``kwargs`` go to torch's (e.g. ``fused=True``)."""
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                                   **kwargs)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, **kwargs)
