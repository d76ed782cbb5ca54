"""A diverging run stops at its first non-finite loss or gradient, instead of training on to a "successful" end.

Detectron2's trainer raises ``FloatingPointError: Loss became infinite or NaN at iteration=N`` and fairseq does the
same; :class:`NonFiniteGuard` does it for every project, before the optimiser step that would write the non-finite
values into the weights:

* ``stop`` (default): :class:`TrainingDiverged` names the step, the loss and each logged training term that is not
  finite, and the learning rate; the launcher prints it as one line and exits with ``EXIT_DIVERGED``
  (``shared.interrupt``), ``summary.json`` says ``diverged``. No checkpoint is written after it, so ``last.ckpt``
  keeps the weights of its step, all finite.
* ``skip``: the step's gradients are dropped (the optimiser leaves every weight and its state as they were; the LR
  schedule moves on), as AMP's GradScaler skips an overflowing step; counted, logged (``train/nonfinite_skips``)
  and named in a warning line; more than ``max_skips`` in the run stops it as ``stop`` would.

Checked per optimiser step with one host sync: the loss of every micro-batch since the last step (gradient
accumulation) and the largest gradient magnitude (not under a GradScaler, whose scaled gradients overflow by design; the
loss check stays). A checkpoint whose weights are not all finite is never written (weights can overflow in an
update whose gradients were finite): the run stops there as diverged.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

Mode = Literal["stop", "skip"]


class TrainingDiverged(FloatingPointError):
    """A loss, a gradient or the weights became non-finite; the message is the one line the launcher prints."""


def _describe(value: torch.Tensor) -> str:
    v = float(value)
    return "nan" if math.isnan(v) else "inf" if math.isinf(v) else f"{v:.4g}"


def logged_training_terms(trainer: Trainer) -> dict[str, float]:
    """The values ``training_step`` logged at this step (``self.log`` / ``log_dict``), by name. Read from
    Lightning's result collection (its private ``_results``, Lightning 2.6 as pinned); {} when it is not there."""
    results = getattr(trainer, "_results", None) or {}
    out = {}
    for key, metric in results.items():
        cache = getattr(metric, "_forward_cache", None)
        if key.startswith("training_step.") and isinstance(cache, torch.Tensor) and cache.numel() == 1:
            out[metric.meta.name] = float(cache)
    return out


def largest_magnitude(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max |x| over all the tensors (nan when any holds a nan): finite exactly when every value is."""
    return torch.stack(torch._foreach_norm(tensors, float("inf"))).float().max()


class NonFiniteGuard(Callback):
    """Stops (``mode="stop"``) or skips (``mode="skip"``, at most ``max_skips`` times) a non-finite step."""

    def __init__(self, mode: Mode = "stop", max_skips: int = 10) -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"--on_nonfinite must be stop or skip; got {mode!r}")
        if max_skips < 0:
            raise ValueError(f"--max_nonfinite_skips must be >= 0; got {max_skips}")
        self.mode, self.max_skips = mode, max_skips
        self.skipped = 0
        self._losses: list[torch.Tensor] = []

    # ------------------------------------------------------------------ the checks
    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        losses, self._losses = self._losses, []
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        checks = [torch.stack([x.float().reshape(()) for x in losses]).isfinite().all()] if losses else []
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        grad_max = None
        if grads and not scaled:     # the largest |gradient|: finite exactly when all are (a 2-norm can overflow)
            grad_max = largest_magnitude(grads)
            checks.append(grad_max.isfinite().to(checks[0].device) if checks else grad_max.isfinite())
        if not checks or bool(torch.stack(checks).all()):      # the one host sync of the step
            return
        what = self._what(trainer, losses, grad_max)
        if self.mode == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            for p in pl_module.parameters():
                p.grad = None        # torch optimisers leave a parameter without a gradient (and its state) alone
            sys.stderr.write(f"warning: {what} at step {trainer.global_step}: step skipped "
                             f"({self.skipped} of at most {self.max_skips}, --max_nonfinite_skips)\n")
            return
        raise TrainingDiverged(self._message(trainer, what))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.mode == "skip":
            pl_module.log("train/nonfinite_skips", float(self.skipped), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        state = {k: v for k, v in checkpoint.get("state_dict", {}).items()
                 if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()}
        if state and not bool(largest_magnitude(list(state.values())).isfinite()):
            bad = [k for k, v in state.items() if not bool(v.isfinite().all())]
            raise TrainingDiverged(self._message(trainer, f"the weights became non-finite ({', '.join(bad[:3])}"
                                                          f"{', ...' if len(bad) > 3 else ''})", saving=True))

    # ------------------------------------------------------------------ the words
    @staticmethod
    def _what(trainer: Trainer, losses: list[torch.Tensor], grad_max: torch.Tensor | None) -> str:
        bad_loss = next((x for x in losses if not bool(x.isfinite().all())), None)
        if bad_loss is None:
            return f"a gradient became {_describe(grad_max)} (the loss was finite)"
        terms = {k: v for k, v in logged_training_terms(trainer).items() if not math.isfinite(v)}
        named = ", ".join(f"{k} {_describe(torch.tensor(v))}" for k, v in terms.items())
        return f"the loss became {_describe(bad_loss)}" + (f" ({named})" if named else "")

    def _message(self, trainer: Trainer, what: str, saving: bool = False) -> str:
        lrs = sorted({g["lr"] for opt in trainer.optimizers for g in opt.param_groups})
        lr = ", ".join(f"{x:g}" for x in lrs) or "?"
        last = getattr(trainer.checkpoint_callback, "_last_step_in_last", None)
        kept = (f"last.ckpt keeps step {last}'s weights" if last is not None else "no last.ckpt was written yet")
        skips = f"; {self.skipped} step(s) skipped before" if self.skipped else ""
        action = "training stopped, this checkpoint not saved" if saving else "training stopped"
        return (f"{what} at step {trainer.global_step} (lr {lr}){skips}: {action}, {kept}. Lower the learning "
                f"rate, or --on_nonfinite skip to skip such steps")

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
