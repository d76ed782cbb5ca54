"""The CLI end to end on the toy config: fast_dev_run fit (1 process and 2-process CPU DDP), predict, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TOY = "projects/drdf/configs/toy.yaml"
SMALL_TOY = ["--data.toy_sizes", "{train: 16, dev_seen: 9, test_seen: 8, test_unseen: 4}", "--data.batch_size", "4",
             "--data.eval_batch_size", "4"]


def drdf(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(CV_PAPERS_LOGS=str(tmp_path / "logs"), PROGRESS_REFRESH="0")
    proc = subprocess.run([sys.executable, "-m", "projects.drdf", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"drdf CLI failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    from projects.drdf.data import write_toy_memes

    root = tmp_path_factory.mktemp("toy")
    return write_toy_memes(root, {"train": 16, "dev_seen": 9, "test_seen": 8, "test_unseen": 4})


def test_fit_fast_dev_run_on_the_toy_config(tmp_path: Path, toy_dir: Path) -> None:
    drdf(tmp_path, "fit", "--config", TOY, "--data.data_dir", str(toy_dir), *SMALL_TOY, "--logger", "csv",
         "--trainer.fast_dev_run", "2")
    assert (tmp_path / "logs" / "drdf" / "toy").is_dir()


def test_fit_then_predict_unlabeled_split(tmp_path: Path, toy_dir: Path) -> None:
    cfg = ["--config", TOY, "--data.data_dir", str(toy_dir), *SMALL_TOY, "--logger", "csv"]
    drdf(tmp_path, "fit", *cfg, "--trainer.max_epochs", "1")
    run = tmp_path / "logs" / "drdf" / "toy"
    assert (run / "summary.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    panels = {p.name.split("_step")[0] for p in (run / "panels").iterdir()}
    assert {"val_a_t_hist", "val_expert_weights_per_class", "val_extreme_modality_samples"} <= panels
    drdf(tmp_path, "predict", *cfg, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    import json

    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert records and len({r["id"] for r in records}) == len(records)
    for r in records:
        assert 0 <= r["hateful_prob"] <= 1 and abs(r["a_t"] + r["a_v"] - 1) < 1e-3
        assert len(r["expert_weights"]) >= 2 and abs(sum(r["expert_weights"]) - 1) < 1e-2
    assert (run / "predictions.csv").read_text().startswith("id,hateful_prob,a_t,a_v,expert_weights")
    # a folder of memes: their images and one .jsonl naming them
    import shutil

    folder = tmp_path / "memes"
    (folder / "img").mkdir(parents=True)
    lines = (toy_dir / "test_unseen.jsonl").read_text().splitlines()[:3]
    (folder / "mine.jsonl").write_text("\n".join(lines) + "\n")
    for rec in map(json.loads, lines):
        shutil.copy(toy_dir / rec["img"], folder / rec["img"])
    drdf(tmp_path, "predict", *cfg, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
         "--data.predict_dir", str(folder))
    got = [json.loads(line)["id"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert got == [json.loads(line)["id"] for line in lines]
    (folder / "other.jsonl").write_text("")
    proc = drdf(tmp_path, "predict", *cfg, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                "--data.predict_dir", str(folder), check=False)
    assert proc.returncode == 2 and "expected exactly one .jsonl of memes" in proc.stderr


def test_two_process_cpu_ddp_validation_equals_one_process(tmp_path: Path, toy_dir: Path) -> None:
    """The 9 dev memes split 5 + 4 over 2 processes, none repeated: AUROC and accuracy equal the 1-process ones."""
    import json

    common = ["validate", "--config", TOY, "--data.data_dir", str(toy_dir), *SMALL_TOY, "--logger", "none",
              "--trainer.accelerator", "cpu"]
    drdf(tmp_path, *common, "--run_name", "one")
    drdf(tmp_path, *common, "--run_name", "two", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    one_m, two_m = (json.loads((tmp_path / "logs" / "drdf" / r / "summary.json").read_text())["metrics"]
                    for r in ("one", "two"))
    for key in ("val/auroc", "val/acc", "val/a_t_mean", "val/w_max_mean"):
        assert two_m[key] == pytest.approx(one_m[key], abs=1e-6), key


def test_missing_data_folder_is_named(tmp_path: Path) -> None:
    proc = drdf(tmp_path, "fit", "--config", TOY, "--data.dataset", "hateful_memes", "--data.data_dir",
                str(tmp_path / "nowhere"), "--data.tokenizer", str(tmp_path / "nowhere"), "--logger", "none",
                "--trainer.fast_dev_run", "1", check=False)
    assert proc.returncode != 0 and "nowhere" in proc.stderr


def test_nested_overrides_keep_their_types(tmp_path: Path) -> None:
    import yaml

    out = drdf(tmp_path, "fit", "--config", "projects/drdf/configs/hateful_memes.yaml", "--data.image_size", "160",
               "--model.mwf.top_k", "2", "--print_config").stdout
    config = yaml.safe_load(out)
    assert config["model"]["mwf"]["top_k"] == 2  # an int, not the string "2"
    assert config["model"]["expert_kwargs"]["image_size"] == 160  # ${data.image_size} after the override
