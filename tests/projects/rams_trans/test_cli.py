"""`python -m projects.rams_trans` on the toy config: fit (fast_dev_run, in process), the mechanism measure of a
short run, and 2-process CPU DDP validation against 1 process (subprocesses: DDP needs its own processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from projects.rams_trans.mechanism import measure_checkpoint

REPO = Path(__file__).resolve().parents[3]
TOY = REPO / "projects" / "rams_trans" / "configs" / "toy.yaml"
SMALL = ["--data.toy_num_train", "16", "--data.toy_num_test", "8", "--data.batch_size", "4",
         "--data.eval_batch_size", "4", "--model.net.backbone_kwargs", "{embed_dim: 32, depth: 2, num_heads: 2}",
         "--model.net.pretrained", "false"]  # the pretrained toy ViT is 64 wide


def test_fast_dev_run_fit_on_the_toy_config(run_cli, tmp_path: Path) -> None:
    run = run_cli("rams_trans", "fit", "--config", TOY, "--logger", "csv", "--trainer.fast_dev_run", "true",
                  "--data.root", tmp_path / "toy", "--model.num_panels", "2", *SMALL)
    assert (tmp_path / "toy" / "images.txt").is_file()
    panels = list((run.run_dir("toy") / "panels").glob("val_dppm_*.png"))
    assert panels, "the DPPM panel (image | heat map + box | crop) was not written"


def test_mechanism_measure_of_a_two_step_fit(run_cli, tmp_path: Path) -> None:
    run = run_cli("rams_trans", "fit", "--config", TOY, "--logger", "none", "--trainer.max_steps", "2",
                  "--data.root", tmp_path / "toy", "--run_name", "tiny", *SMALL)
    got = measure_checkpoint(run.run_dir("tiny") / "checkpoints" / "last.ckpt")
    assert got["n"] == 8 and all(0.0 <= got[k] <= 1.0 for k in ("part_in_box", "centre_in_box", "box_area", "found"))
    assert got["part_in_box"] <= got["centre_in_box"]  # the whole part inside implies its centre


def run_subprocess(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(CV_PAPERS_LOGS=str(tmp_path / "logs"), PROGRESS_REFRESH="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "projects.rams_trans", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"CLI failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP subprocess test")
@pytest.mark.parametrize("images", [9, 1])
def test_two_process_cpu_ddp_validation_equals_one_process(run_cli, tmp_path: Path, images: int) -> None:
    """9 test images over 2 processes (5 + 4, none repeated), or 1 (the second process runs a padding step that
    counts as none): the 2-process top-1 is the 1-process top-1 exactly."""
    common = ["validate", "--config", str(TOY), "--logger", "none", "--data.root", str(tmp_path / "toy"),
              "--trainer.accelerator", "cpu", *SMALL, "--data.toy_num_test", str(images), "--model.num_panels", "0"]
    one = run_cli("rams_trans", *common, "--run_name", "one")
    two = run_subprocess(tmp_path, *common, "--run_name", "two", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    assert "Starting with 2 processes" in two.stdout + two.stderr
    one_m = one.summary("one", "validate")["metrics"]
    two_m = json.loads((tmp_path / "logs" / "rams_trans" / "two" / "validate_summary.json").read_text())["metrics"]
    for key in ("val/local_top1", "val/global_top1", "val/fused_top1", "val/local_top5", "val/loss"):
        assert two_m[key] == pytest.approx(one_m[key], abs=1e-6), key


def test_a_checkpoint_of_the_flat_arguments_is_one_line_naming_its_format(run_cli, tmp_path: Path) -> None:
    """A checkpoint written before the module's arguments were grouped (flat ``model.lr``, ``model.backbone``...)."""
    import torch

    old = tmp_path / "old.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {}, "optimizer_states": [],
                "hyper_parameters": {"num_classes": 8, "backbone": "vit_tiny_patch16_224", "lr": 0.03}}, old)
    run = run_cli("rams_trans", "validate", "--config", TOY, "--logger", "none", "--data.root", tmp_path / "toy",
                  *SMALL, "--ckpt_path", old, check=False)
    assert run.code == 2
    assert "written by an earlier version of this repository (module hyper-parameters format 1" in run.last_line
    assert str(old) in run.last_line and "\n" not in run.last_line
