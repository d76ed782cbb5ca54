"""`python -m projects.drdf` on the toy config, in process: fit + predict (split and folder), bad input, the
printed config's groups, a checkpoint of the flat arguments; and 2-process CPU DDP validation against 1 process
(a subprocess: DDP needs its own processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.projects.drdf.conftest import TOY_SIZES

REPO = Path(__file__).resolve().parents[3]
TOY = "projects/drdf/configs/toy.yaml"
SMALL_TOY = ["--data.toy_sizes", json.dumps(TOY_SIZES), "--data.batch_size", "4", "--data.eval_batch_size", "4"]


def test_fit_then_predict_unlabeled_split(run_cli, toy_memes: Path, tmp_path: Path) -> None:
    cfg = ["--config", TOY, "--data.data_dir", toy_memes, *SMALL_TOY, "--logger", "csv"]
    fit = run_cli("drdf", "fit", *cfg, "--trainer.max_epochs", "1")
    run = fit.run_dir("toy")
    assert (run / "summary.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    panels = {p.name.split("_step")[0] for p in (run / "panels").iterdir()}
    assert {"val_a_t_hist", "val_expert_weights_per_class", "val_extreme_modality_samples"} <= panels
    run_cli("drdf", "predict", *cfg, "--ckpt_path", run / "checkpoints" / "last.ckpt")
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert records and len({r["id"] for r in records}) == len(records)
    for r in records:
        assert 0 <= r["hateful_prob"] <= 1 and abs(r["a_t"] + r["a_v"] - 1) < 1e-3
        assert len(r["expert_weights"]) >= 2 and abs(sum(r["expert_weights"]) - 1) < 1e-2
    assert (run / "predictions.csv").read_text().startswith("id,hateful_prob,a_t,a_v,expert_weights")
    # a folder of memes: their images and one .jsonl naming them
    folder = tmp_path / "memes"
    (folder / "img").mkdir(parents=True)
    lines = (toy_memes / "test_unseen.jsonl").read_text().splitlines()[:3]
    (folder / "mine.jsonl").write_text("\n".join(lines) + "\n")
    for rec in map(json.loads, lines):
        shutil.copy(toy_memes / rec["img"], folder / rec["img"])
    run_cli("drdf", "predict", *cfg, "--ckpt_path", run / "checkpoints" / "last.ckpt", "--data.predict_dir", folder)
    got = [json.loads(line)["id"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert got == [json.loads(line)["id"] for line in lines]
    (folder / "other.jsonl").write_text("")
    bad = run_cli("drdf", "predict", *cfg, "--ckpt_path", run / "checkpoints" / "last.ckpt", "--data.predict_dir",
                  folder, check=False)
    assert bad.code == 2 and "expected exactly one .jsonl of memes" in bad.err


def test_two_process_cpu_ddp_validation_equals_one_process(run_cli, toy_memes: Path, tmp_path: Path) -> None:
    """The 9 dev memes split 5 + 4 over 2 processes, none repeated: AUROC and accuracy equal the 1-process ones."""
    common = ["validate", "--config", TOY, "--data.data_dir", str(toy_memes), *SMALL_TOY, "--logger", "none",
              "--trainer.accelerator", "cpu"]
    one = run_cli("drdf", *common, "--run_name", "one")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    proc = subprocess.run([sys.executable, "-m", "projects.drdf", *common, "--run_name", "two", "--trainer.devices",
                           "2", "--trainer.strategy", "ddp"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    one_m, two_m = one.summary("one", "validate")["metrics"], one.summary("two", "validate")["metrics"]
    for key in ("val/auroc", "val/acc", "val/a_t_mean", "val/w_max_mean", "val/loss"):
        assert two_m[key] == pytest.approx(one_m[key], abs=1e-6), key


def test_missing_data_folder_is_named(run_cli, tmp_path: Path) -> None:
    run = run_cli("drdf", "fit", "--config", TOY, "--data.dataset", "hateful_memes", "--data.data_dir",
                  tmp_path / "nowhere", "--data.tokenizer", tmp_path / "nowhere", "--logger", "none",
                  "--trainer.fast_dev_run", "1", check=False)
    assert run.code != 0 and "nowhere" in run.err


def test_nested_overrides_keep_their_types_and_the_groups_are_printed(run_cli) -> None:
    out = run_cli("drdf", "fit", "--config", "projects/drdf/configs/hateful_memes.yaml", "--data.image_size", "160",
                  "--model.net.mwf.top_k", "2", "--model.loss.lambda_aux", "1", "--print_config").out
    model = yaml.safe_load(out)["model"]
    net = model["net"]["init_args"]
    assert net["mwf"]["top_k"] == 2  # an int, not the string "2"
    assert net["expert_kwargs"]["image_size"] == 160  # ${data.image_size} after the override
    assert model["loss"] == {"lambda_aux": 1.0, "lambda_bal": 0.0}
    assert model["optim"]["name"] == "adamw" and model["optim"]["max_steps"] == 22000
    assert model["temperature"] == {"value": 1.0, "schedule": False, "start": 30.0, "fraction": 0.1}


def test_a_checkpoint_of_the_flat_arguments_is_one_line_naming_its_format(run_cli, toy_memes: Path,
                                                                         tmp_path: Path) -> None:
    """A checkpoint written before the module's arguments were grouped (flat ``model.expert``, ``model.lr``...)."""
    old = tmp_path / "old.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {}, "optimizer_states": [],
                "hyper_parameters": {"num_classes": 2, "expert": "late_fusion", "lr": 5e-5}}, old)
    run = run_cli("drdf", "validate", "--config", TOY, "--logger", "none", "--data.data_dir", toy_memes, *SMALL_TOY,
                  "--ckpt_path", old, check=False)
    assert run.code == 2
    assert "written by an earlier version of this repository (module hyper-parameters format 1" in run.last_line
    assert str(old) in run.last_line and "\n" not in run.last_line
