"""What a run leaves in its folder: ``summary.json`` (how it ended, its metrics) and ``last.ckpt`` that follows it."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TypeVar
from weakref import proxy

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from shared.batching import EffectiveBatch
from shared.errors import one_line
from shared.interrupt import EXIT_INTERRUPTED, GracefulStop
from shared.nonfinite import NonFiniteGuard, TrainingDiverged

T = TypeVar("T")


def find_callback(trainer: Trainer | None, cls: type[T]) -> T | None:
    """The trainer's callback of type ``cls`` (the launcher adds one of each), or None."""
    return next((c for c in getattr(trainer, "callbacks", None) or [] if isinstance(c, cls)), None)


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def summary_file(stage: str) -> str:
    """``summary.json`` for ``fit``; ``validate_summary.json`` / ``test_summary.json`` beside it, never over it."""
    return "summary.json" if stage == "fit" else f"{stage}_summary.json"


class RunSummary(Callback):
    """Writes ``summary.json`` (headline metric, all scalar metrics, best checkpoint) in the run folder at the end
    of ``fit``; ``validate`` and ``test`` write ``validate_summary.json`` / ``test_summary.json`` beside it.

    ``make train`` collects these files into its table and ``logs/train_summary.json``.
    """

    def __init__(self, project: str, run_name: str, run_dir: Path, headline: str | None) -> None:
        self.project, self.run_name, self.run_dir, self.headline = project, run_name, run_dir, headline
        self._start = time.perf_counter()
        self.result_line = ""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def _write(self, trainer: Trainer, stage: str, outcome: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Write the stage's summary file (process 0) and return what it wrote."""
        if not trainer.is_global_zero or (trainer.sanity_checking and outcome is None):
            return None
        metrics = {k: v for k, v in ((k, _scalar(v)) for k, v in trainer.callback_metrics.items()) if v is not None}
        best = trainer.checkpoint_callback
        summary = {
            "project": self.project,
            "run_name": self.run_name,
            "stage": stage,
            "headline_metric": self.headline,
            "headline": metrics.get(self.headline) if self.headline else None,
            "best": _scalar(best.best_model_score) if best is not None and best.best_model_score is not None
            else None,
            "best_checkpoint": best.best_model_path if best is not None else None,
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "wall_s": round(time.perf_counter() - self._start, 1),
            # what ``shared.summary`` checks before it compares the run with a committed range (shared/expected.py)
            "seed": int(os.environ["PL_GLOBAL_SEED"]) if os.environ.get("PL_GLOBAL_SEED") else None,
            "command": sys.argv[1:],
            "cpu_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),     # the kernels' ISA: AVX2, AVX512, ...
            "metrics": metrics,
        }
        if stage == "fit":
            guard, batch = find_callback(trainer, NonFiniteGuard), find_callback(trainer, EffectiveBatch)
            summary.update(outcome or {"outcome": "finished"}, max_steps=trainer.max_steps,
                           nonfinite_skips=guard.skipped if guard is not None else 0,
                           accumulate_grad_batches=trainer.accumulate_grad_batches,
                           effective_batch_size=batch.size if batch is not None else None)
        bad_files = getattr(trainer.datamodule, "bad_files", None)
        if bad_files is not None:
            summary["bad_files"] = bad_files.summary()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / summary_file(stage)).write_text(json.dumps(summary, indent=2))
        return summary

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        summary = self._write(trainer, "fit")
        if summary is not None:               # the launcher prints it as the last line of a finished fit
            value, best = summary["headline"], summary["best"]
            self.result_line = (f"result: {self.headline} {value:.4g}" if value is not None else "result: finished") \
                + (f" (best {best:.4g})" if best is not None else "") \
                + f" at step {trainer.global_step}; summary.json in {self.run_dir}"

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A fit that ends early says how: ``interrupted`` (a signal, with the step reached and its checkpoint),
        ``diverged`` (a non-finite loss, gradient or weights) or ``failed`` (any other error)."""
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if isinstance(exception, SIGTERMException):
            stop = find_callback(trainer, GracefulStop)
            sig = stop.received(trainer) if stop is not None else None
            outcome = {"outcome": "interrupted", "signal": sig, "resume": "fit --ckpt_path last (same arguments)"}
            # the launcher prints it last (run_with_clear_errors), after the logger's closing lines
            exception.message = (f"interrupted by {sig or 'a signal'} at step {trainer.global_step} of "
                                 f"{trainer.max_steps if trainer.max_steps > 0 else '?'}: last.ckpt holds this "
                                 f"step; run the same command with --ckpt_path last to continue (exit code "
                                 f"{EXIT_INTERRUPTED})") if trainer.is_global_zero else ""
        elif isinstance(exception, TrainingDiverged):
            outcome = {"outcome": "diverged", "error": str(exception)}
        elif isinstance(exception, KeyboardInterrupt):
            outcome = {"outcome": "interrupted", "signal": "SIGINT", "resume": "from the last checkpoint only"}
        else:
            outcome = {"outcome": "failed", "error": one_line(exception)}
        self._write(trainer, "fit", outcome)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, "validate")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "test")


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` always follows the run, up to its end state.

    Lightning 2.6 rewrites ``last.ckpt`` at a validation (or train epoch end) only when that validation also saved
    a new best, and at the end of training only when no ``last.ckpt`` was written at all. So a run whose final
    validations do not improve the best (any early stop, most ends of a plateau) ends with a ``last.ckpt`` from
    the last improvement, and ``fit --ckpt_path last`` would resume from there. Here ``last.ckpt`` is written
    after every validation and every train epoch end that left it behind the trainer's step, and at the end of
    training if it is still behind (a last epoch without validation). The best checkpoint is Lightning's,
    judged at every validation.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_step_in_last: int | None = None  # global step of the newest last.ckpt written by this run

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_in_last = trainer.global_step

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        """Write ``<file>.partial`` and rename it over ``<file>``: a run killed while writing leaves the previous
        checkpoint whole (Lightning writes the file in place)."""
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        trainer.strategy.barrier("RunCheckpoint.replace")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _save_last_if_behind(self, trainer: Trainer) -> None:
        if (self.save_last and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
                and not trainer.fast_dev_run and self._last_step_in_last != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # else the train epoch end, same step, follows
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_behind(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save_last_if_behind(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A signal (SIGTERM, or SIGINT / SIGUSR1 through ``GracefulStop``) stops the loop after a whole training
        step: ``last.ckpt`` then holds that step, and ``--ckpt_path last`` continues exactly."""
        if isinstance(exception, SIGTERMException):
            self._save_last_if_behind(trainer)


def holds_a_run(run_dir: Path) -> bool:
    """A run folder that a ``fit`` finished or checkpointed (what a new ``fit`` must not write into)."""
    return (run_dir / "summary.json").is_file() or (run_dir / "checkpoints" / "last.ckpt").is_file()
