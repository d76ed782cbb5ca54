"""The launcher's checkpoints after ``fit``: ``last.ckpt`` is the run's end state, the best is the best validation.

One test per way a run ends, in process on the tiny project (so the in-memory module after ``fit`` is at
hand). A learning rate of 1 makes the tiny regression diverge: every validation is worse than the one before,
so the final validation never improves the best, the case where ``last.ckpt`` used to be left behind.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import shared.cli as cli

TINY = Path(__file__).with_name("tiny_project.py")
_spec = importlib.util.spec_from_file_location("tiny_project", TINY)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

BATCHES_PER_EPOCH = 8  # the tiny data: 64 samples, batch 8


class ValidationRecord(Callback):
    """Every validation that ran during ``fit``: its step, monitored value and the weights it scored."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, float, dict[str, torch.Tensor]]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.runs.append((trainer.global_step, float(trainer.callback_metrics[pl_module.monitor]),
                              {k: v.detach().clone() for k, v in pl_module.state_dict().items()}))


@pytest.fixture(autouse=True)
def _logs_and_no_progress_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CV_PAPERS_LOGS", str(tmp_path / "logs"))
    monkeypatch.setenv("PROGRESS_REFRESH", "0")


def fit(run_name: str, *args: str, ckpt_path: str | None = None):
    """The tiny project through :class:`shared.cli.ProjectCLI`, ``fit`` with a :class:`ValidationRecord`."""
    project = cli.ProjectCLI(tiny.TinyModule, tiny.TinyData, "tiny", run=False, args=[
        "--data.num_features", "6", "--model.num_features", "6", "--model.lr", "1.0",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0", "--logger", "none", "--run_name", run_name, *args])
    record = ValidationRecord()
    project.trainer.callbacks.append(record)
    project.trainer.fit(project.model, datamodule=project.datamodule, ckpt_path=ckpt_path)
    return project, record


def assert_same_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def assert_checkpoints_hold_the_run(project, record: ValidationRecord, steps: int, validated: list[int]) -> None:
    """``last.ckpt`` is the module and loops after ``fit``; the best is the best of the validations at ``validated``."""
    trainer, module = project.trainer, project.model
    assert trainer.global_step == steps
    assert [step for step, _, _ in record.runs] == validated
    if len(validated) > 1:
        assert record.runs[-1][1] > record.runs[0][1]  # the final validation did not improve the best

    last = torch.load(trainer.checkpoint_callback.last_model_path, weights_only=True)
    assert Path(trainer.checkpoint_callback.last_model_path).name == "last.ckpt"
    assert last["global_step"] == trainer.global_step
    assert last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == steps
    assert_same_weights(last["state_dict"], module.state_dict())

    best_step, best_value, best_weights = min(record.runs, key=lambda run: run[1])
    callback = trainer.checkpoint_callback
    assert float(callback.best_model_score) == pytest.approx(best_value)
    best = torch.load(callback.best_model_path, weights_only=True)
    assert best["global_step"] == best_step
    assert_same_weights(best["state_dict"], best_weights)


def test_max_steps_mid_epoch_on_a_validation() -> None:
    project, record = fit("mid", "--trainer.max_steps", "6", "--trainer.val_check_interval", "3")
    assert_checkpoints_hold_the_run(project, record, steps=6, validated=[3, 6])


def test_max_steps_at_an_epoch_end() -> None:
    steps = 2 * BATCHES_PER_EPOCH
    project, record = fit("steps", "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1")
    assert_checkpoints_hold_the_run(project, record, steps=steps, validated=[BATCHES_PER_EPOCH, steps])


def test_max_epochs() -> None:
    project, record = fit("epochs", "--trainer.max_epochs", "3")
    assert_checkpoints_hold_the_run(project, record, steps=3 * BATCHES_PER_EPOCH,
                                    validated=[BATCHES_PER_EPOCH, 2 * BATCHES_PER_EPOCH, 3 * BATCHES_PER_EPOCH])


def test_max_epochs_whose_last_epoch_is_not_validated() -> None:
    project, record = fit("unvalidated", "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "2")
    assert_checkpoints_hold_the_run(project, record, steps=3 * BATCHES_PER_EPOCH, validated=[2 * BATCHES_PER_EPOCH])


def test_early_stop() -> None:
    project, record = fit("early", "--trainer.max_epochs", "10", "--trainer.callbacks+=EarlyStopping",
                          "--trainer.callbacks.monitor=val/mse", "--trainer.callbacks.patience=1")
    assert project.trainer.should_stop and project.trainer.current_epoch < 10
    assert_checkpoints_hold_the_run(project, record, steps=2 * BATCHES_PER_EPOCH,
                                    validated=[BATCHES_PER_EPOCH, 2 * BATCHES_PER_EPOCH])


def test_resume_from_last_continues_exactly() -> None:
    """A run stopped by ``max_steps`` on an epoch end whose last validation was not its best, resumed from
    ``last.ckpt`` for one more epoch, equals the uninterrupted run.

    (Resuming from a mid-epoch ``last.ckpt`` restarts that epoch's batches unless the data loader is resumable;
    Lightning warns about it, so that case is left out.)
    """
    steps, end = ["--trainer.max_epochs", "-1"], 3 * BATCHES_PER_EPOCH
    full, _ = fit("full", *steps, "--trainer.max_steps", str(end))
    _, part_record = fit("part", *steps, "--trainer.max_steps", str(2 * BATCHES_PER_EPOCH))
    assert part_record.runs[-1][1] > part_record.runs[0][1]
    resumed, record = fit("part", *steps, "--trainer.max_steps", str(end), ckpt_path="last")
    assert [step for step, _, _ in record.runs] == [end]  # one more epoch, nothing repeated
    assert resumed.trainer.global_step == full.trainer.global_step == end
    assert_same_weights(resumed.model.state_dict(), full.model.state_dict())
    last = torch.load(resumed.trainer.checkpoint_callback.last_model_path, weights_only=True)
    assert last["global_step"] == end
    assert_same_weights(last["state_dict"], full.model.state_dict())
