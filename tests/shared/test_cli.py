"""The shared launcher, end to end, through a tiny project run in this process (``run_cli``); as a subprocess only
where one is needed: two-process DDP, and the default wandb logger (a wandb run is process-wide state)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny_project.py")
_spec = importlib.util.spec_from_file_location("tiny_project", TINY)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)
PRESETS = sorted((REPO / "shared" / "configs").glob("*.yaml"))

TINY_CONFIG = {
    "model": {"num_features": "${data.num_features}", "lr": 0.05},
    "data": {"num_features": 6, "batch_size": 8},
    "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "enable_model_summary": False},
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    return tmp_path


def run_tiny(workdir: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    full_env.update(CV_PAPERS_LOGS=str(workdir / "logs"), PROGRESS_REFRESH="0", **(env or {}))
    proc = subprocess.run([sys.executable, str(TINY), *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"tiny project failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tiny_main(args: list[str]):
    return tiny.main(tiny.TinyModule, tiny.TinyData, project="tiny", args=args)


def print_config_in_process(workdir: Path, monkeypatch, capsys, *args: str, env: dict | None = None) -> dict:
    """``tiny_project.py fit ... --print_config`` through ``shared.cli.main`` in this process; the printed config."""
    for key, value in {"CV_PAPERS_LOGS": str(workdir / "logs"), **(env or {})}.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        tiny.main(tiny.TinyModule, tiny.TinyData, project="tiny", args=["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def last_weights(workdir: Path, run: str) -> dict[str, torch.Tensor]:
    ckpt = torch.load(workdir / "logs" / "tiny" / run / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["state_dict"]


def test_print_config_shows_the_whole_interpolated_run(workdir: Path, monkeypatch, capsys) -> None:
    config = print_config_in_process(workdir, monkeypatch, capsys, "--config", str(workdir / "tiny.yaml"))
    assert config["model"]["num_features"] == 6  # ${data.num_features} resolved
    assert config["trainer"]["max_epochs"] == 2
    assert config["seed_everything"] == 42 and config["logger"] == "wandb"


def test_command_line_override_reaches_the_keys_that_interpolate_it(workdir: Path, monkeypatch, capsys) -> None:
    config = print_config_in_process(workdir, monkeypatch, capsys, "--config", str(workdir / "tiny.yaml"),
                                     "--data.num_features", "9")
    assert config["data"]["num_features"] == 9
    assert config["model"]["num_features"] == 9  # ${data.num_features} resolved after the override
    config = print_config_in_process(workdir, monkeypatch, capsys, "--config", str(workdir / "tiny.yaml"),
                                     "--model.num_features", "4")
    assert config["model"]["num_features"] == 4  # an explicit value still wins


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_trainer_preset_combines_with_a_project_config(workdir: Path, preset: Path, monkeypatch,
                                                             capsys) -> None:
    config = print_config_in_process(workdir, monkeypatch, capsys, "--config", str(workdir / "tiny.yaml"),
                                     "--config", str(preset), env={"NUM_NODES": "4"})
    expected = yaml.safe_load(preset.read_text())
    for key, value in expected.get("trainer", {}).items():
        if isinstance(value, str) and "NUM_NODES" in value:
            value = 4
        elif isinstance(value, str) and "GPUS_PER_NODE" in value:
            value = 8
        assert config["trainer"][key] == value, key
    assert config["model"]["num_features"] == 6


def test_unknown_key_fails_with_one_line_naming_it(workdir: Path, run_cli) -> None:
    (workdir / "bad.yaml").write_text("model:\n  num_featurs: 3\n")
    run = run_cli("tiny", "fit", "--config", workdir / "tiny.yaml", "--config", workdir / "bad.yaml", check=False,
                  entry=tiny_main)
    assert run.code == 2
    error_lines = [line for line in run.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "model.num_featurs" in error_lines[0]
    assert "usage:" not in run.err


def test_fit_writes_checkpoints_config_and_summary(workdir: Path, run_cli) -> None:
    run = run_cli("tiny", "fit", "--config", workdir / "tiny.yaml", "--logger", "csv", entry=tiny_main)
    run_dir = run.run_dir("tiny")  # run name = config stem
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert list(run_dir.glob("csv/version_*/config.yaml"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["headline_metric"] == "val/mse" and summary["global_step"] == 16
    assert summary["headline"] == pytest.approx(summary["metrics"]["val/mse"])
    assert summary["headline"] < 1.0  # the regression actually trained (starts above 2)
    panels = {p.name for p in (run_dir / "panels").iterdir()}  # the file fallback of shared.panels
    assert {"val_weights_image_step0000016.png", "val_weights_step0000016.json",
            "val_weights_hist_step0000016.json"} <= panels


def test_default_logger_is_wandb_offline(workdir: Path) -> None:
    run_tiny(workdir, "fit", "--config", str(workdir / "tiny.yaml"), "--trainer.max_epochs", "1")
    offline_runs = list((workdir / "logs" / "tiny" / "tiny" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))


def test_resume_from_last_equals_an_uninterrupted_run(workdir: Path, run_cli, caplog) -> None:
    cfg = ["--config", str(workdir / "tiny.yaml"), "--logger", "none"]
    run_cli("tiny", "fit", *cfg, "--run_name", "full", "--trainer.max_epochs", "4", entry=tiny_main)
    run_cli("tiny", "fit", *cfg, "--run_name", "part", "--trainer.max_epochs", "2", entry=tiny_main)
    resumed = run_cli("tiny", "fit", *cfg, "--run_name", "part", "--trainer.max_epochs", "4", "--ckpt_path", "last",
                      entry=tiny_main)
    assert "Restored all states" in resumed.out + resumed.err + caplog.text
    full, part = last_weights(workdir, "full"), last_weights(workdir, "part")
    for key in full:
        torch.testing.assert_close(part[key], full[key], rtol=0, atol=0)


def test_two_process_cpu_ddp_matches_one_process(workdir: Path) -> None:
    """2 CPU processes x batch 4 through Lightning's DDP give the 1-process batch-8 result.

    Under DDP Lightning always shuffles the training set with a DistributedSampler (seeded), so the
    1-process reference runs the same sampler: strategy=ddp with devices=1.
    """
    cfg = ["--config", str(workdir / "tiny.yaml"), "--logger", "csv", "--trainer.strategy", "ddp"]
    run_tiny(workdir, "fit", *cfg, "--run_name", "one", "--trainer.devices", "1", "--data.batch_size", "8")
    two = run_tiny(workdir, "fit", *cfg, "--run_name", "two", "--trainer.devices", "2", "--data.batch_size", "4")
    assert "Starting with 2 processes" in two.stdout + two.stderr
    one_w, two_w = last_weights(workdir, "one"), last_weights(workdir, "two")
    for key in one_w:
        torch.testing.assert_close(two_w[key], one_w[key], rtol=1e-5, atol=1e-6)
    one_s = json.loads((workdir / "logs" / "tiny" / "one" / "summary.json").read_text())
    two_s = json.loads((workdir / "logs" / "tiny" / "two" / "summary.json").read_text())
    assert one_s["global_step"] == two_s["global_step"] == 16
    assert two_s["headline"] == pytest.approx(one_s["headline"], rel=1e-5)


def test_missing_data_folder_fails_with_one_line_naming_it(workdir: Path, run_cli, monkeypatch) -> None:
    missing = workdir / "no_such_dataset"
    args = ["fit", "--config", workdir / "tiny.yaml", "--logger", "none", "--data.data_dir", missing]
    run = run_cli("tiny", *args, check=False, entry=tiny_main)
    assert run.code == 2
    assert "Traceback" not in run.err
    error_lines = [line for line in run.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(workdir / "no_such_dataset") in error_lines[0]
    monkeypatch.setenv("CV_PAPERS_DEBUG", "1")
    debug = run_cli("tiny", *args, check=False, entry=tiny_main)
    assert debug.code != 0 and "Traceback" in debug.err


def test_an_abbreviated_or_misspelt_key_is_refused_with_the_nearest_keys(run_cli) -> None:
    """argparse would take ``--trainer.max_step`` as ``max_steps``; here it is a typo, named with its neighbours."""
    cfg = ["fit", "--config", "projects/rams_trans/configs/toy.yaml", "--print_config"]
    run = run_cli("rams_trans", *cfg, "--trainer.max_step", "5", check=False)
    assert run.code == 2 and run.err.startswith("error: unrecognized arguments: --trainer.max_step 5; did you mean: "
                                                "--trainer.max_step -> --trainer.max_steps")
    run = run_cli("rams_trans", *cfg, "--model.optim.lrr", "0.1", check=False)
    assert run.code == 2 and "--model.optim.lrr -> --model.optim.lr" in run.err.splitlines()[0]
    run = run_cli("rams_trans", *cfg, "--zzz", "3", check=False)
    assert run.code == 2 and "did you mean" not in run.err


def test_the_known_harmless_library_lines_are_filtered_and_nothing_else(tmp_path: Path) -> None:
    import logging
    import warnings

    from shared.console import QuietWandbLogger, quiet_known_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("Found 417 module(s) in eval mode at the start of training. This may ...", UserWarning,
                      stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tip, other = (logging.LogRecord(rank_zero.name, logging.INFO, "", 0, msg, None, None)
                  for msg in ("💡 Tip: For seamless cloud logging ...", "GPU available: False"))
    assert not rank_zero.filter(tip) and rank_zero.filter(other)
    assert "anonymous" not in QuietWandbLogger(save_dir=str(tmp_path), offline=True)._wandb_init
