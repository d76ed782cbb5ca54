"""GPU speed switches for the training rows of ``make bench-gpu``: measured there, adopted by no project.

* ``fused``: the project's optimizer with ``fused=True`` (one kernel for the whole update) instead of torch's
  default (``foreach`` on CUDA) or the bench's ``foreach=True``;
* ``channels_last``: the model's 4-D weights and the input images in ``torch.channels_last`` (NHWC convolutions:
  DRDF's CNN experts and image router);
* ``compile``: ``torch.compile`` (inductor, static shapes) of the backbone: ``ViTBackbone.encode`` for RAMS-Trans
  and DiD, both of its paths (with and without attention capture: the maps are returned tensors, not hooks);
  each grid CNN's ``forward_features`` for DRDF's experts.

A project's ``bench.py: train_step_case(..., switch=NAME)`` returns twins with the same weights and inputs as a
:class:`~shared.bench.registry.BenchCase`: ``method`` is the project's step with the switch, ``baseline`` the same
step without it. Both run without dropout (inductor draws other dropout masks than eager), so the losses their
steps return can be compared (``shared/bench/gpu.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

SWITCHES = ("fused", "channels_last", "compile")


def check(switch: str | None, allowed: Sequence[str]) -> None:
    """Refuse a switch the row does not implement."""
    if switch is not None and switch not in allowed:
        raise ValueError(f"speed switch {switch!r} is not one of this row's {tuple(allowed)}")


def optimizer_kwargs(switch: str | None) -> dict:
    """``fused=True`` for the ``fused`` switch, nothing otherwise."""
    return {"fused": True} if switch == "fused" else {}


def without_dropout(*models: nn.Module) -> None:
    """Set every ``nn.Dropout``-like module's ``p`` to 0 (timm and transformers read it there, SDPA included)."""
    for model in models:
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = 0.0


def plain_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (same weights) for the step without the switch; dropout off in both."""
    twin = copy.deepcopy(model)
    without_dropout(model, twin)
    return twin


def compile_method(obj: nn.Module, name: str, backend: str = "inductor") -> None:
    """Replace ``obj.<name>`` by its ``torch.compile`` (static shapes; the instance attribute shadows the method)."""
    setattr(obj, name, torch.compile(getattr(obj, name), backend=backend, dynamic=False))


def channels_last(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Convert ``model``'s 4-D weights in place and return ``image`` in ``torch.channels_last``."""
    model.to(memory_format=torch.channels_last)
    return image.contiguous(memory_format=torch.channels_last)
