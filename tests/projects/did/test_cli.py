"""DiD through the shared CLI: a short fit on the toy config and predict from its checkpoint (in process), 2-process
CPU DDP validation against 1 process (a subprocess: DDP needs its own processes), a flat-format checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.projects.did.toy_set import REPO, toy_args


def test_short_fit_logs_every_branch_and_predict_writes_labels_and_instance_boxes(run_cli, short_fit: Path,
                                                                                 toy_root: Path,
                                                                                 tmp_path: Path) -> None:
    s = json.loads((short_fit / "summary.json").read_text())
    assert s["global_step"] == 2 and s["headline_metric"] == "val/fused/mAP"
    for branch in ("global", "local", "fused"):
        assert 0.0 <= s["metrics"][f"val/{branch}/mAP"] <= 100.0
    panels = list((short_fit / "panels").glob("*"))
    assert any("instance_maps" in p.name for p in panels) and any("per_class_AP" in p.name for p in panels)

    folder = tmp_path / "photos"
    folder.mkdir()
    for k, src in enumerate(sorted((toy_root / "val2014").glob("*.png"))[:2]):
        shutil.copy(src, folder / f"p{k}.png")
    run = run_cli("did", "predict", *toy_args(toy_root), "--logger", "csv", "--run_name", "pred", "--ckpt_path",
                  short_fit / "checkpoints" / "last.ckpt", "--data.predict_dir", folder,
                  "--data.predict_threshold", "0.0", "--write_overlays", "true", "--write_attention", "true")
    out = run.run_dir("pred")
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    cats = json.loads((toy_root / "annotations/instances_val2014.json").read_text())["categories"]
    names = {c["name"] for c in cats}
    assert [r["file"] for r in records] == ["p0.png", "p1.png"]
    for r in records:
        assert set(r["scores"]) == names and len(r["labels"]) == len(names)          # threshold 0: every label
        assert [x["score"] for x in r["labels"]] == sorted((x["score"] for x in r["labels"]), reverse=True)
        assert len(r["boxes"]) == 4 and all(b["class"] in names for b in r["boxes"])  # top_n = 4 instances
        assert all(0 <= v <= 63 for b in r["boxes"] for v in b["box"])
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["p0.png", "p1.png"]
    strip = Image.open(out / "attention" / "p0.png")             # boxes | rollout | one class map per instance
    assert strip.width == 6 * 384 + 5 * 4 and "_attention" not in (out / "predictions.jsonl").read_text()


def run_subprocess(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(CV_PAPERS_LOGS=str(tmp_path / "logs"), PROGRESS_REFRESH="0")
    proc = subprocess.run([sys.executable, "-m", "projects.did", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"did CLI failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP subprocess test")
def test_two_process_ddp_metrics_equal_one_process(run_cli, toy_root: Path, tmp_path: Path) -> None:
    """The 71 validation images split 36 + 35 over 2 processes, none repeated: every synchronised metric equals
    the 1-process one (a padding sampler would score one image twice)."""
    common = ["validate", *toy_args(toy_root), "--logger", "csv", "--trainer.accelerator", "cpu"]
    one = run_cli("did", *common, "--trainer.devices", "1", "--run_name", "one")
    two = run_subprocess(tmp_path, *common, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                         "--run_name", "two")
    log = two.stdout + two.stderr
    assert "MEMBER: 2/2" in log or "Starting with 2 processes" in log, log[-2000:]
    one_m = one.summary("one", "validate")["metrics"]
    two_m = json.loads((tmp_path / "logs" / "did" / "two" / "validate_summary.json").read_text())["metrics"]
    for key in ("val/global/mAP", "val/local/mAP", "val/fused/mAP", "val/fused/OF1", "val/fused/CP_top3"):
        assert two_m[key] == pytest.approx(one_m[key], abs=1e-4), key


def test_a_checkpoint_of_the_flat_arguments_is_one_line_naming_its_format(run_cli, toy_root: Path,
                                                                          tmp_path: Path) -> None:
    """A checkpoint written before the module's arguments were grouped (flat ``model.lr``, ``model.top_n``...)."""
    old = tmp_path / "old.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {}, "optimizer_states": [],
                "hyper_parameters": {"num_classes": 10, "backbone": "vit_tiny_patch16_224", "top_n": 4,
                                     "lr": 0.05}}, old)
    run = run_cli("did", "validate", *toy_args(toy_root), "--logger", "none", "--ckpt_path", old, check=False)
    assert run.code == 2
    assert "written by an earlier version of this repository (module hyper-parameters format 1" in run.last_line
    assert str(old) in run.last_line and "\n" not in run.last_line
