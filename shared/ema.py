"""An exponential moving average of the weights (``--model.ema_decay``, off by default: DiD's official code keeps
none (docs/papers/did.md) and the RAMS-Trans and DRDF papers report none; ASL's recipe, which Query2Label and timm
follow, uses 0.9997).

A module that takes ``ema_decay`` stores it; the launcher (``shared.cli``) then adds Lightning's
:class:`~lightning.pytorch.callbacks.EMAWeightAveraging` to ``fit``: after every optimiser step
``ema = decay * ema + (1 - decay) * weights`` (buffers too); validation runs on the EMA weights; every checkpoint
holds the EMA weights as its ``state_dict`` (so ``validate`` / ``test`` / ``predict --ckpt_path`` and the best
checkpoint use them) and the raw weights and the average's step count beside them (``current_model_state``,
``averaging_state``), so ``--ckpt_path last`` resumes both exactly (``tests/shared/test_resume.py``). At the end of
training the module holds the EMA weights.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import EMAWeightAveraging


def check_ema_decay(decay: float | None) -> float | None:
    """``decay`` if it is None (off) or in (0, 1); else one error naming the value."""
    if decay is not None and not 0.0 < decay < 1.0:
        raise ValueError(f"model.ema_decay must be in (0, 1) (e.g. 0.9997), or null for no EMA; got {decay}")
    return decay


def ema_callback(module: object) -> EMAWeightAveraging | None:
    """The EMA callback for ``module`` (its ``ema_decay``), or None when it keeps no average."""
    decay = getattr(module, "ema_decay", None)
    return EMAWeightAveraging(decay=decay) if decay is not None else None
