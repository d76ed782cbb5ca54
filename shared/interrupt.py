"""An interrupted run is told apart from a finished one: the exit codes, and SIGINT / SIGUSR1 handled as SIGTERM.

Exit codes of every ``python -m projects.<name>`` command (docs/running.md, "Running on a cluster"):

* ``0``: finished (``summary.json``: ``"outcome": "finished"``);
* ``2``: a bad input or argument, one line naming it;
* ``3`` (``EXIT_DIVERGED``): a loss, gradient or the weights became non-finite (``shared.nonfinite``);
  ``"outcome": "diverged"``;
* ``75`` (``EXIT_INTERRUPTED``, BSD's ``EX_TEMPFAIL``: "try again later"): stopped by SIGTERM (SLURM's time limit
  or ``scancel``, a spot machine's reclaim, ``docker stop``), SIGINT (Ctrl+C) or SIGUSR1 (SLURM's ``--signal``);
  ``"outcome": "interrupted"`` with the step. ``last.ckpt`` holds that step: ``fit --ckpt_path last`` with the
  same arguments continues it exactly.

Lightning already stops at the end of the current training batch on SIGTERM (its signal connector sets
``trainer.received_sigterm`` and the loop raises ``SIGTERMException``, a ``SystemExit`` with code 0, which exits
like a finished run). :class:`GracefulStop` routes SIGINT and SIGUSR1 through the same flag (a second Ctrl+C aborts
at once) and records which signal came; ``RunCheckpoint`` writes ``last.ckpt`` at the step reached, ``RunSummary``
the outcome, and the launcher turns the exception into ``EXIT_INTERRUPTED``.

Under SLURM with Lightning's auto-requeue (``SLURMEnvironment(auto_requeue=True)``, the default when SLURM runs
the job), SIGUSR1 stays Lightning's: it saves an ``hpc_ckpt_<n>.ckpt`` in the run folder, requeues the job, and the
requeued run resumes from it by itself.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 75


class GracefulStop(Callback):
    """SIGTERM, SIGINT and SIGUSR1 end training at the end of the current batch, with a checkpoint of that step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._deferred = False
        self._previous: dict[int, Any] = {}
        self._trainer: Trainer | None = None

    @staticmethod
    def _signals(trainer: Trainer) -> list[int]:
        """SIGINT, and SIGUSR1 unless Lightning's SLURM auto-requeue owns it (SIGTERM is Lightning's already)."""
        env = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(env, SLURMEnvironment) and env.auto_requeue
        return [signal.SIGINT] + ([] if slurm_requeue else [signal.SIGUSR1])

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trainer, self.signal_name = trainer, None
        for sig in self._signals(trainer):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def received(self, trainer: Trainer) -> str | None:
        """The signal that stopped the run (SIGTERM when Lightning's own handler saw it), else None."""
        return self.signal_name or ("SIGTERM" if trainer.received_sigterm or self._deferred else None)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.signal_name is not None:
            raise KeyboardInterrupt          # a second Ctrl+C: stop now, without a checkpoint
        # the flag Lightning's SIGTERM handler sets: the loop stops at the end of the batch (pinned Lightning 2.6)
        self._trainer._signal_connector.received_sigterm = True
        if self.signal_name is None:
            self.signal_name = name
            sys.stderr.write(f"\n{name} received: stopping after this training step, with a checkpoint"
                             + (" (Ctrl+C again to abort without one)" if signum == signal.SIGINT else "") + "\n")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """A signal that came in the middle of a gradient accumulation waits for its optimiser step: a checkpoint
        between two steps would lose the summed gradients (the loop's own check follows this hook)."""
        connector = trainer._signal_connector
        if connector.received_sigterm and trainer.fit_loop.epoch_loop._should_accumulate():
            connector.received_sigterm, self._deferred = False, True
        elif self._deferred:
            connector.received_sigterm, self._deferred = True, False

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()
