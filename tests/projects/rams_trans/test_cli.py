"""`python -m projects.rams_trans fit` on the toy config: fast_dev_run in one process and in 2-process CPU DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from projects.rams_trans.mechanism import measure_checkpoint

REPO = Path(__file__).resolve().parents[3]
TOY = REPO / "projects" / "rams_trans" / "configs" / "toy.yaml"
SMALL = ["--data.toy_num_train", "16", "--data.toy_num_test", "8", "--data.batch_size", "4",
         "--data.eval_batch_size", "4", "--model.backbone_kwargs", "{embed_dim: 32, depth: 2, num_heads: 2}",
         "--model.pretrained", "false"]  # the pretrained toy ViT is 64 wide


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(CV_PAPERS_LOGS=str(tmp_path / "logs"), PROGRESS_REFRESH="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "projects.rams_trans", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"CLI failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


def test_fast_dev_run_fit_on_the_toy_config(tmp_path: Path) -> None:
    run_cli(tmp_path, "fit", "--config", str(TOY), "--logger", "csv", "--trainer.fast_dev_run", "true",
            "--data.root", str(tmp_path / "toy"), "--model.num_panels", "2", *SMALL)
    assert (tmp_path / "toy" / "images.txt").is_file()
    panels = list((tmp_path / "logs" / "rams_trans" / "toy" / "panels").glob("val_dppm_*.png"))
    assert panels, "the DPPM panel (image | heat map + box | crop) was not written"


def test_mechanism_measure_of_a_two_step_fit(tmp_path: Path) -> None:
    run_cli(tmp_path, "fit", "--config", str(TOY), "--logger", "none", "--trainer.max_steps", "2",
            "--data.root", str(tmp_path / "toy"), "--run_name", "tiny", *SMALL)
    got = measure_checkpoint(tmp_path / "logs" / "rams_trans" / "tiny" / "checkpoints" / "last.ckpt")
    assert got["n"] == 8 and all(0.0 <= got[k] <= 1.0 for k in ("part_in_box", "centre_in_box", "box_area", "found"))
    assert got["part_in_box"] <= got["centre_in_box"]  # the whole part inside implies its centre


@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP subprocess test")
def test_two_process_cpu_ddp_fast_dev_run(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "fit", "--config", str(TOY), "--logger", "none", "--trainer.fast_dev_run", "true",
                   "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                   "--data.root", str(tmp_path / "toy"), *SMALL)
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
