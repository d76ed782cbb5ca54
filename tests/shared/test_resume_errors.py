"""``fit --ckpt_path FILE`` with a file Lightning cannot resume from ends with one line naming it (Lightning reads
the file twice, for its hyper-parameters and then its states, and fails with a traceback either time)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import shared.cli as cli
from shared.hparams import HPARAMS_FORMAT, HPARAMS_FORMAT_KEY

REPO = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny_project.py")
_spec = importlib.util.spec_from_file_location("tiny_project", TINY)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)
ARGS = ["--data.num_features", "6", "--model.num_features", "6", "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0",
        "--logger", "none"]


@pytest.fixture(autouse=True)
def _logs_and_no_progress_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CV_PAPERS_LOGS", str(tmp_path / "logs"))
    monkeypatch.setenv("PROGRESS_REFRESH", "0")


def fit(*args: str) -> cli.ProjectCLI:
    return cli.ProjectCLI(tiny.TinyModule, tiny.TinyData, "tiny", args=["fit", *ARGS, *args])


def bad_checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind.replace(' ', '_')}.ckpt"
    if kind == "pickled object":
        torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {}, "args": argparse.Namespace(lr=1)}, path)
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "text":
        path.write_text("epoch=3\n")
    else:  # a plain weights file, not a Lightning checkpoint
        torch.save({"w": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("pickled object", r"pickled_object.ckpt: holds a pickled argparse.Namespace object, which is not read .*re-save "
                       r"the checkpoint without it"),
    ("truncated", r"truncated.ckpt: not a readable PyTorch file \(RuntimeError: PytorchStreamReader failed"),
    ("text", r"text.ckpt: not a readable PyTorch file \(.*\); expected a complete file written by torch.save"),
    ("weights only", r"--ckpt_path .*weights_only.ckpt: not a Lightning checkpoint to fit from \(no "
                     r"pytorch-lightning_version, state_dict, optimizer_states .*; found \['w'\]\)"),
])
def test_a_bad_ckpt_path_is_one_line_naming_it(tmp_path: Path, kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        fit("--ckpt_path", str(bad_checkpoint(tmp_path, kind)))
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)


def test_a_missing_ckpt_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path .*nope.ckpt: checkpoint file not found"):
        fit("--ckpt_path", str(tmp_path / "nope.ckpt"))


def test_a_checkpoint_written_by_fit_still_resumes(tmp_path: Path) -> None:
    fit("--run_name", "run", "--trainer.max_epochs", "1")
    last = tmp_path / "logs" / "tiny" / "run" / "checkpoints" / "last.ckpt"
    resumed = fit("--run_name", "run", "--trainer.max_epochs", "2", "--ckpt_path", str(last))
    assert resumed.trainer.current_epoch == 2


def test_the_command_exits_2_with_one_error_line(tmp_path: Path) -> None:
    bad = bad_checkpoint(tmp_path, "pickled object")
    env = {**os.environ, "CV_PAPERS_LOGS": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"}
    env.pop("CV_PAPERS_DEBUG", None)
    proc = subprocess.run([sys.executable, str(TINY), "fit", *ARGS, "--ckpt_path", str(bad)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "argparse.Namespace" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_another_projects_checkpoint_is_one_line(tmp_path: Path) -> None:
    """Hyper-parameters this model does not take (a RAMS-Trans checkpoint given to DiD) were an argparse traceback."""
    foreign = tmp_path / "other.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {}, "hyper_parameters": {"embed_dim": 32},
                HPARAMS_FORMAT_KEY: HPARAMS_FORMAT}, foreign)   # a checkpoint of this version (its stamp)
    with pytest.raises(ValueError, match=r"--ckpt_path .*other.ckpt: its hyper-parameters do not fit this model "
                                         r"\(.*embed_dim.*\); expected a checkpoint written by `python -m "
                                         r"projects.tiny fit`"):
        cli.ProjectCLI(tiny.TinyModule, tiny.TinyData, "tiny", args=["validate", *ARGS, "--ckpt_path", str(foreign)])


def test_values_the_checkpoint_replaces_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Lightning builds the model from the checkpoint's hyper-parameters: a --model value that differs is
    replaced, and says so (it was silent)."""
    fit("--run_name", "run", "--trainer.max_epochs", "1")
    last = tmp_path / "logs" / "tiny" / "run" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    run = cli.ProjectCLI(tiny.TinyModule, tiny.TinyData, "tiny",
                         args=["validate", *ARGS, "--model.lr", "0.1", "--ckpt_path", str(last)])
    assert run.model.hparams.lr == 0.05
    assert ("warning: --ckpt_path: the checkpoint's hyper-parameters replace 1 model value(s) of the config / "
            "command line: model.lr: 0.1 -> 0.05") in capsys.readouterr().err.splitlines()
