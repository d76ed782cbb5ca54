"""Kill and resume, for every project: a run stopped in the middle of an epoch and resumed with ``--ckpt_path last``
ends with the weights and validation metrics of the uninterrupted run (data order, augmentations and random
states included), and a run killed while writing a checkpoint leaves the previous ``last.ckpt`` whole.

In process (Lightning's ``fit`` through :class:`shared.cli.ProjectCLI`), small toy settings; the stop is an
exception raised after a training step, which leaves on disk what a SIGKILL at that point leaves (the checkpoint
of the last validation, nothing written after it). ``test_sigkill_...`` checks that with a real SIGKILL.
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
from lightning.pytorch.callbacks import Callback

import shared.cli as cli

REPO = Path(__file__).resolve().parents[2]


class Stop(Exception):
    pass


class Killed(Exception):
    pass


class StopAtStep(Callback):
    """Stops the run right after training step ``step`` (its checkpoint, if any, was written before)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Stop(f"stopped after step {self.step}")


def project_args(name: str, tmp: Path) -> tuple[list[str], int, int]:
    """(command-line args, total steps, the step to stop at) for a short run of project ``name``."""
    cfg = ["--config", f"projects/{name}/configs/toy.yaml"]
    if name == "rams_trans":   # 16 images, batch 4: 4 steps an epoch; validation (and last.ckpt) every 3 steps
        return [*cfg, "--data.root", str(tmp / "toy"), "--data.toy_num_train", "16", "--data.toy_num_test", "6",
                "--data.batch_size", "4", "--data.eval_batch_size", "4", "--model.net.pretrained", "false",
                "--model.net.backbone_kwargs", "{embed_dim: 32, depth: 2, num_heads: 2}", "--model.num_panels", "0",
                "--trainer.max_steps", "9", "--trainer.val_check_interval", "3"], 9, 7
    if name == "did":
        return [*cfg, "--data.root", str(tmp / "toy"), "--data.toy_train", "16", "--data.toy_val", "6",
                "--data.batch_size", "4", "--model.panel_images", "0",
                "--trainer.max_steps", "9", "--trainer.val_check_interval", "3"], 9, 7
    if name == "drdf":         # validation at each epoch's 3rd step; stopped in epoch 1 after the epoch-0 end state
        return [*cfg, "--data.data_dir", str(tmp / "memes"), "--data.toy_sizes",
                "{train: 16, dev_seen: 6, test_seen: 4, test_unseen: 4}", "--data.batch_size", "4",
                "--data.eval_batch_size", "4", "--trainer.max_epochs", "2", "--trainer.val_check_interval", "3"
                ], 8, 6
    return [*cfg, "--trainer.callbacks.images_per_prompt", "2", "--trainer.callbacks.steps", "2",
            "--trainer.callbacks.target_prompts", "[circle]", "--trainer.callbacks.other_prompts", "[a red square]",
            "--data.iterations", "9", "--model.rollout.batch_size", "2", "--model.anchoring.samples", "2",
            "--trainer.val_check_interval", "3"], 9, 7


def project_classes(name: str):
    if name == "rams_trans":
        from projects.rams_trans.data import FGVCDataModule
        from projects.rams_trans.module import RAMSTransModule
        return RAMSTransModule, FGVCDataModule
    if name == "did":
        from projects.did.data import DiDData
        from projects.did.module import DiDModule
        return DiDModule, DiDData
    if name == "drdf":
        from projects.drdf.data import DRDFDataModule
        from projects.drdf.module import DRDFModule
        return DRDFModule, DRDFDataModule
    from projects.spm.data import SPMStepData
    from projects.spm.module import SPMModule
    return SPMModule, SPMStepData


def fit(name: str, tmp: Path, run: str, *, stop: int | None = None, resume: bool = False, extra: tuple = ()):
    args, _, _ = project_args(name, tmp)
    model_class, data_class = project_classes(name)
    project = cli.ProjectCLI(model_class, data_class, name, run=False, args=[
        *args, "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_model_summary", "false",
        "--logger", "none", "--run_name", run, *extra])
    if stop is not None:
        project.trainer.callbacks.append(StopAtStep(stop))
    ckpt = str(cli.logs_dir() / name / run / "checkpoints" / "last.ckpt") if resume else None
    try:
        project.trainer.fit(project.model, datamodule=project.datamodule, ckpt_path=ckpt)
    except Stop:
        return None
    return project


@pytest.fixture(autouse=True)
def _logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CV_PAPERS_LOGS", str(tmp_path / "logs"))
    monkeypatch.setenv("PROGRESS_REFRESH", "0")


@pytest.mark.parametrize("name,extra", [("rams_trans", ()), ("did", ()), ("drdf", ()), ("spm", ()),
                                        ("rams_trans", ("--model.ema_decay", "0.9")),
                                        ("drdf", ("--model.ema_decay", "0.9"))],
                         ids=["rams_trans", "did", "drdf", "spm", "rams_trans-ema", "drdf-ema"])
def test_a_run_stopped_mid_epoch_and_resumed_ends_as_the_uninterrupted_run(name: str, extra: tuple,
                                                                           tmp_path: Path) -> None:
    """With ``--model.ema_decay`` too: the EMA weights (the checkpoint's ``state_dict``) and the raw ones
    (``current_model_state``) both resume exactly."""
    _, steps, stop = project_args(name, tmp_path)
    full = fit(name, tmp_path, "full", extra=extra)
    assert fit(name, tmp_path, "part", stop=stop, extra=extra) is None
    saved = torch.load(cli.logs_dir() / name / "part" / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < saved["global_step"] < stop            # the resume starts from an earlier checkpoint ...
    if extra:                                         # both weight sets in the checkpoint, and they differ
        raw = saved["current_model_state"]
        assert saved["averaging_state"]["n_averaged"] == saved["global_step"]
        assert any(not torch.equal(raw[k], v) for k, v in saved["state_dict"].items() if v.is_floating_point())
    resumed = fit(name, tmp_path, "part", resume=True, extra=extra)
    assert resumed.trainer.global_step == full.trainer.global_step == steps
    expected, got = full.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys()
    for key, value in expected.items():                # ... and ends where the uninterrupted run ended
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=f"{name}: {key}")
    if extra:
        ends = [torch.load(cli.logs_dir() / name / r / "checkpoints" / "last.ckpt", weights_only=True)
                for r in ("full", "part")]
        for key, value in ends[0]["current_model_state"].items():
            torch.testing.assert_close(ends[1]["current_model_state"][key], value, rtol=0, atol=0, msg=key)
    metrics = [json.loads((cli.logs_dir() / name / r / "summary.json").read_text())["metrics"]
               for r in ("full", "part")]
    val = {k for k in metrics[0] if k.startswith("val/")}
    assert val and val == {k for k in metrics[1] if k.startswith("val/")}
    assert {k: metrics[1][k] for k in val} == {k: metrics[0][k] for k in val}


def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one_whole(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The write is cut off half-way (as a kill would leave it): last.ckpt is still the previous, loadable file."""
    name = "did"
    assert fit(name, tmp_path, "cut", stop=4) is None            # last.ckpt of step 3
    ckpt = cli.logs_dir() / name / "cut" / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    real_save = torch.save

    def cut_off(obj, f, *args, **kwargs):                         # writes half of the bytes, then dies
        import io
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise Killed("while writing")

    monkeypatch.setattr(torch, "save", cut_off)
    with pytest.raises(Killed):
        fit(name, tmp_path, "cut", resume=True)                   # the next checkpoint (step 6) is cut off
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.read_bytes() == before
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    resumed = fit(name, tmp_path, "cut", resume=True)
    assert resumed.trainer.global_step == 9


def test_sigkill_mid_epoch_then_resume_last(tmp_path: Path) -> None:
    """A real SIGKILL (the tiny project, as a subprocess, killed at step 11 of 16; its last.ckpt is step 8's) and
    ``--ckpt_path last``: the resumed run ends with the uninterrupted run's weights."""
    tiny = REPO / "tests" / "shared" / "tiny_project.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(CV_PAPERS_LOGS=str(tmp_path / "logs"), PROGRESS_REFRESH="0", OMP_NUM_THREADS="1",
               TINY_KILL_AT_STEP="11")
    common = [sys.executable, str(tiny), "fit", "--logger", "none", "--trainer.max_steps", "16",
              "--trainer.val_check_interval", "3", "--data.shuffle", "true"]
    killed = subprocess.run([*common, "--run_name", "part"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    env.pop("TINY_KILL_AT_STEP")
    done = subprocess.run([*common, "--run_name", "part", "--ckpt_path", "last"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    spec = importlib.util.spec_from_file_location("tiny_project", tiny)     # the uninterrupted run, in process
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    full = cli.ProjectCLI(module.TinyModule, module.TinyData, "tiny", run=False,
                          args=[*common[3:], "--run_name", "full"])
    full.trainer.fit(full.model, datamodule=full.datamodule)
    states = [torch.load(tmp_path / "logs" / "tiny" / r / "checkpoints" / "last.ckpt", weights_only=True)
              for r in ("full", "part")]
    assert states[0]["global_step"] == states[1]["global_step"] == 16
    for key, value in states[0]["state_dict"].items():
        torch.testing.assert_close(states[1]["state_dict"][key], value, rtol=0, atol=0)
