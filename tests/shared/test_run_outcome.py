"""Long runs that end well: a non-finite loss stops the run (or, opted in, skips the step), a signal stops it with a
checkpoint of the step reached and a distinct exit code, and ``summary.json`` says which ending it was.

In process, on the tiny project of ``tiny_project.py`` (its ``TINY_*`` variables inject a nan loss or a signal at
a given step), through ``shared.cli.main`` as ``python -m projects.<name>`` runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import shared.cli as cli
from shared.interrupt import EXIT_DIVERGED, EXIT_INTERRUPTED

REPO = Path(__file__).resolve().parents[2]
COMMON = ["fit", "--logger", "none", "--trainer.max_steps", "16", "--trainer.val_check_interval", "3",
          "--data.shuffle", "true"]


@pytest.fixture(scope="module")
def tiny():
    spec = importlib.util.spec_from_file_location("tiny_project", REPO / "tests" / "shared" / "tiny_project.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CV_PAPERS_LOGS", str(tmp_path / "logs"))
    monkeypatch.setenv("PROGRESS_REFRESH", "0")
    for var in ("TINY_SIGNAL_AT_STEP", "TINY_SIGNAL", "TINY_NAN_AT_STEP", "TINY_KILL_AT_STEP"):
        monkeypatch.delenv(var, raising=False)


def run(tiny, name: str, *args: str) -> int:
    """Exit code of ``fit`` for run ``name`` (0 when it returns)."""
    try:
        cli.main(tiny.TinyModule, tiny.TinyData, "tiny", args=[*COMMON, "--run_name", name, *args])
    except SystemExit as stop:
        return stop.code
    return 0


def outcome(name: str) -> dict:
    return json.loads((cli.logs_dir() / "tiny" / name / "summary.json").read_text())


def last_ckpt(name: str) -> dict:
    return torch.load(cli.logs_dir() / "tiny" / name / "checkpoints" / "last.ckpt", weights_only=True)


def test_a_diverging_run_stops_with_one_line_and_keeps_finite_weights(tiny, capsys):
    assert run(tiny, "div", "--model.lr", "1e6") == EXIT_DIVERGED
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the loss became inf (train/loss inf) at step ") and "(lr 1e+06)" in err
    summary, ckpt = outcome("div"), last_ckpt("div")
    assert summary["outcome"] == "diverged" and summary["error"] in err
    assert 0 < ckpt["global_step"] <= summary["global_step"] < 16
    assert all(bool(v.isfinite().all()) for v in ckpt["state_dict"].values())


def test_a_nan_step_stops_the_run_or_is_skipped_when_asked(tiny, monkeypatch, capsys):
    monkeypatch.setenv("TINY_NAN_AT_STEP", "5")
    assert run(tiny, "stop") == EXIT_DIVERGED
    assert "error: the loss became nan (train/loss nan) at step 5" in capsys.readouterr().err
    assert outcome("stop")["outcome"] == "diverged" and last_ckpt("stop")["global_step"] == 3

    assert run(tiny, "skip", "--on_nonfinite", "skip") == 0
    assert "warning: the loss became nan (train/loss nan) at step 5: step skipped (1 of at most 10" in \
        capsys.readouterr().err
    summary = outcome("skip")
    assert summary["outcome"] == "finished" and summary["nonfinite_skips"] == 1 and summary["global_step"] == 16
    assert all(bool(v.isfinite().all()) for v in last_ckpt("skip")["state_dict"].values())

    assert run(tiny, "no_skips_left", "--on_nonfinite", "skip", "--max_nonfinite_skips", "0") == EXIT_DIVERGED


def test_a_skipped_step_leaves_the_weights_and_the_optimiser_as_they_were(tiny, monkeypatch):
    """Skipping step 5 of 6 ends with step 4's weights (SGD without momentum: nothing else moves them)."""
    assert run(tiny, "to4", "--trainer.max_steps", "5") == 0
    monkeypatch.setenv("TINY_NAN_AT_STEP", "5")
    assert run(tiny, "skip5", "--trainer.max_steps", "6", "--on_nonfinite", "skip") == 0
    for key, value in last_ckpt("to4")["state_dict"].items():
        torch.testing.assert_close(last_ckpt("skip5")["state_dict"][key], value, rtol=0, atol=0)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_exit_code_75(tiny, monkeypatch, capsys, sig):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    monkeypatch.setenv("TINY_SIGNAL_AT_STEP", "11")
    monkeypatch.setenv("TINY_SIGNAL", sig)
    assert run(tiny, "part") == EXIT_INTERRUPTED
    assert f"interrupted by {sig} at step 11 of 16: last.ckpt holds this step" in capsys.readouterr().err
    summary = outcome("part")
    assert (summary["outcome"], summary["signal"], summary["global_step"], summary["max_steps"]) == \
        ("interrupted", sig, 11, 16)
    assert last_ckpt("part")["global_step"] == 11
    assert {s: signal.getsignal(s) for s in handlers} == handlers      # the run leaves the handlers as it found them
    if sig != "SIGTERM":
        return
    monkeypatch.delenv("TINY_SIGNAL_AT_STEP")
    assert run(tiny, "part", "--ckpt_path", "last") == 0 and outcome("part")["outcome"] == "finished"
    assert run(tiny, "full") == 0
    full, resumed = last_ckpt("full"), last_ckpt("part")
    assert full["global_step"] == resumed["global_step"] == 16
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0)


def test_a_second_fit_of_a_name_gets_its_own_folder_unless_asked_to_resume_or_overwrite(tiny, capsys):
    base = cli.logs_dir() / "tiny"
    assert run(tiny, "toy", "--trainer.max_steps", "6") == 0
    first = (base / "toy" / "summary.json").read_text()
    assert run(tiny, "toy", "--trainer.max_steps", "4") == 0
    assert f"note: {base / 'toy'} holds an earlier run; this one is {base / 'toy-2'}" in capsys.readouterr().err
    assert (base / "toy" / "summary.json").read_text() == first and outcome("toy-2")["global_step"] == 4
    assert run(tiny, "toy", "--trainer.max_steps", "3", "--overwrite", "true") == 0
    assert outcome("toy")["global_step"] == 3 and not (base / "toy-3").exists()
    assert sorted(p.name for p in (base / "toy" / "checkpoints").iterdir()) == ["best-epoch0-step3.ckpt", "last.ckpt"]


def test_validate_writes_its_own_summary_beside_the_training_one(tiny):
    assert run(tiny, "toy", "--trainer.max_steps", "3") == 0
    fit_summary = (cli.logs_dir() / "tiny" / "toy" / "summary.json").read_text()
    ckpt = str(cli.logs_dir() / "tiny" / "toy" / "checkpoints" / "last.ckpt")
    cli.main(tiny.TinyModule, tiny.TinyData, "tiny", args=["validate", "--logger", "none", "--run_name", "toy",
                                                           "--ckpt_path", ckpt])
    run_dir = cli.logs_dir() / "tiny" / "toy"
    assert (run_dir / "summary.json").read_text() == fit_summary
    assert json.loads((run_dir / "validate_summary.json").read_text())["stage"] == "validate"


def test_a_finished_fit_ends_with_one_result_line(tiny, capsys):
    assert run(tiny, "done", "--trainer.max_steps", "3") == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("result: val/mse ") and "(best " in last
    assert last.endswith(f"at step 3; summary.json in {cli.logs_dir() / 'tiny' / 'done'}")


def test_under_slurm_auto_requeue_sigusr1_is_left_to_lightning():
    """Lightning's SLURM auto-requeue saves an hpc checkpoint and requeues on SIGUSR1: GracefulStop then only
    takes SIGINT (SIGTERM stays Lightning's own); outside SLURM it takes SIGINT and SIGUSR1."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment

    from shared.interrupt import GracefulStop

    def trainer(env):
        return SimpleNamespace(_accelerator_connector=SimpleNamespace(cluster_environment=env))

    assert GracefulStop._signals(trainer(SLURMEnvironment(auto_requeue=True))) == [signal.SIGINT]
    assert GracefulStop._signals(trainer(SLURMEnvironment(auto_requeue=False))) == [signal.SIGINT, signal.SIGUSR1]
    assert GracefulStop._signals(trainer(LightningEnvironment())) == [signal.SIGINT, signal.SIGUSR1]


def test_a_slurm_job_checkpoints_on_sigusr1_and_its_requeued_run_resumes_from_it(tmp_path):
    """As far as it goes without SLURM: under SLURM's environment variables Lightning's auto-requeue takes
    SIGUSR1, writes ``hpc_ckpt_1.ckpt`` and calls ``scontrol requeue`` (absent here: it says so and trains on);
    the same command again (what a requeued job runs) stays in the run folder and resumes from that checkpoint,
    ending with the first run's weights."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB", "TINY_"))}
    env.update(CV_PAPERS_LOGS=str(tmp_path / "logs"), PROGRESS_REFRESH="0", OMP_NUM_THREADS="1", SLURM_NTASKS="1",
               SLURM_NTASKS_PER_NODE="1", SLURM_JOB_ID="4242", SLURM_JOB_NAME="train", SLURM_NODELIST="localhost",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")
    cmd = [sys.executable, str(REPO / "tests" / "shared" / "tiny_project.py"), *COMMON, "--run_name", "job"]
    first = subprocess.run(cmd, env={**env, "TINY_SIGNAL_AT_STEP": "5", "TINY_SIGNAL": "SIGUSR1"},
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Handling auto-requeue signal: 10" in first.stderr and "Requeuing SLURM job 4242" in first.stderr
    run_dir = tmp_path / "logs" / "tiny" / "job"
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 5
    done = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"Restoring states from the checkpoint path at {run_dir / 'hpc_ckpt_1.ckpt'}" \
        in again.stderr + again.stdout
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == done["global_step"] == 16
    for key, value in done["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0)


def test_gradient_accumulation_says_its_effective_batch_and_never_checkpoints_between_steps(tiny, monkeypatch,
                                                                                          capsys):
    acc = ["--trainer.accumulate_grad_batches", "2", "--trainer.val_check_interval", "4"]
    assert run(tiny, "full", *acc) == 0
    assert ("effective batch size 16 = data.batch_size 8 x accumulate_grad_batches 2 x 1 device(s) x 1 node(s)"
            in capsys.readouterr().err)
    summary = outcome("full")
    assert (summary["effective_batch_size"], summary["accumulate_grad_batches"], summary["global_step"]) == \
        (16, 2, 16)                                                        # max_steps counts optimiser steps
    # SIGTERM after batch 10, the first half of step 6: the run stops after batch 11, at step 6, and resumes exactly
    monkeypatch.setenv("TINY_SIGNAL_AT_BATCH", "10")
    assert run(tiny, "part", *acc) == EXIT_INTERRUPTED
    assert last_ckpt("part")["global_step"] == 6 and outcome("part")["signal"] == "SIGTERM"
    monkeypatch.delenv("TINY_SIGNAL_AT_BATCH")
    assert run(tiny, "part", *acc, "--ckpt_path", "last") == 0
    for key, value in last_ckpt("full")["state_dict"].items():
        torch.testing.assert_close(last_ckpt("part")["state_dict"][key], value, rtol=0, atol=0)
    assert run(tiny, "odd", "--trainer.accumulate_grad_batches", "2") == 2            # validation every 3 batches
    assert "every 3 batches falls between two optimiser steps of trainer.accumulate_grad_batches 2" in \
        capsys.readouterr().err
