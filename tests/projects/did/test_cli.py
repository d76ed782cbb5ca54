"""DiD through the shared CLI: fast_dev_run on the toy config, and 2-process CPU DDP with synchronised metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from projects.did.data import write_toy_coco

REPO = Path(__file__).resolve().parents[3]
TOY = dict(n_train=48, n_val=31, size=64, seed=0)   # an odd validation set: 16 + 15 images on 2 processes


def run_did(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(CV_PAPERS_LOGS=str(tmp / "logs"), PROGRESS_REFRESH="0")
    cmd = [sys.executable, "-m", "projects.did", args[0], "--config", "projects/did/configs/toy.yaml",
           "--data.root", str(tmp / "toy"), "--data.toy_train", str(TOY["n_train"]), "--data.toy_val",
           str(TOY["n_val"]), "--data.batch_size", "8", "--logger", "csv", *args[1:]]   # overrides after config
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"did CLI failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def summary(tmp: Path, run: str) -> dict:
    return json.loads((tmp / "logs" / "did" / run / "summary.json").read_text())


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("did_cli")
    write_toy_coco(tmp / "toy", **TOY)
    return tmp


def test_fit_fast_dev_run_on_the_toy_config(toy_root: Path) -> None:
    run_did(toy_root, "fit", "--trainer.fast_dev_run", "true", "--run_name", "fdr")
    s = summary(toy_root, "fdr")
    assert s["global_step"] == 1 and s["headline_metric"] == "val/fused/mAP"
    for branch in ("global", "local", "fused"):
        assert 0.0 <= s["metrics"][f"val/{branch}/mAP"] <= 100.0
    panels = list((toy_root / "logs" / "did" / "fdr" / "panels").glob("*"))
    assert any("instance_maps" in p.name for p in panels) and any("per_class_AP" in p.name for p in panels)


def test_two_process_ddp_metrics_equal_one_process(toy_root: Path) -> None:
    """The 31 validation images split 16 + 15 over 2 processes, none repeated: every synchronised metric equals
    the 1-process one (a padding sampler would score one image twice)."""
    common = ["--trainer.accelerator", "cpu"]
    run_did(toy_root, "validate", *common, "--trainer.devices", "1", "--run_name", "one")
    two = run_did(toy_root, "validate", *common, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                  "--run_name", "two")
    log = two.stdout + two.stderr
    assert "MEMBER: 2/2" in log or "Starting with 2 processes" in log, log[-2000:]
    one_m, two_m = summary(toy_root, "one")["metrics"], summary(toy_root, "two")["metrics"]
    for key in ("val/global/mAP", "val/local/mAP", "val/fused/mAP", "val/fused/OF1", "val/fused/CP_top3"):
        assert two_m[key] == pytest.approx(one_m[key], abs=1e-4), key


def test_predict_on_a_folder_writes_labels_and_instance_boxes(toy_root: Path) -> None:
    import shutil

    run_did(toy_root, "fit", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--run_name", "pred")
    folder = toy_root / "photos"
    folder.mkdir(exist_ok=True)
    for k, src in enumerate(sorted((toy_root / "toy" / "val2014").glob("*.png"))[:2]):
        shutil.copy(src, folder / f"p{k}.png")
    run_did(toy_root, "predict", "--run_name", "pred", "--ckpt_path",
            str(toy_root / "logs/did/pred/checkpoints/last.ckpt"), "--data.predict_dir", str(folder),
            "--data.predict_threshold", "0.0", "--write_overlays", "true")
    run = toy_root / "logs" / "did" / "pred"
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    cats = json.loads((toy_root / "toy/annotations/instances_val2014.json").read_text())["categories"]
    names = {c["name"] for c in cats}
    assert [r["file"] for r in records] == ["p0.png", "p1.png"]
    for r in records:
        assert set(r["scores"]) == names and len(r["labels"]) == len(names)          # threshold 0: every label
        assert [x["score"] for x in r["labels"]] == sorted((x["score"] for x in r["labels"]), reverse=True)
        assert len(r["boxes"]) == 4 and all(b["label"] in names for b in r["boxes"])  # top_n = 4 instances
        assert all(0 <= v <= 63 for b in r["boxes"] for v in b["box"])
    assert sorted(p.name for p in (run / "overlays").iterdir()) == ["p0.png", "p1.png"]
