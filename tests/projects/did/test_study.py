"""DiD toy study: the per-run arguments (compute-matched baseline, init axis) and the rows / table / result file,
with the fits and the mechanism measure replaced by stubs."""

from pathlib import Path

import pytest
import yaml

from projects.did import study

REPO = Path(__file__).resolve().parents[3]
TOY = yaml.safe_load((REPO / "projects/did/configs/toy.yaml").read_text())


def test_matched_baseline_scales_steps_and_validation_interval_by_one_plus_top_n() -> None:
    k = 1 + TOY["model"]["net"]["init_args"]["top_n"]
    steps, interval = TOY["trainer"]["max_steps"], TOY["trainer"]["val_check_interval"]
    assert study.run_overrides("pretrained", "did", TOY, []) == []
    assert study.run_overrides("scratch", "baseline", TOY, ["--x", "1"]) == [
        "--x", "1", "--model.net.pretrained", "false", "--model.net.local_views", "false"]
    assert study.run_overrides("pretrained", "baseline_matched", TOY, []) == [
        "--model.net.local_views", "false", "--trainer.max_steps", str(k * steps),
        "--trainer.val_check_interval", str(k * interval)]
    # Extra arguments change the base values (both spellings); the scaled ones come last, so they win.
    extra = ["--trainer.max_steps", "40", "--model.net.top_n=2", "--trainer.val_check_interval", "20"]
    got = study.run_overrides("pretrained", "baseline_matched", TOY, extra)
    assert got[-4:] == ["--trainer.max_steps", "120", "--trainer.val_check_interval", "60"]
    got = study.run_overrides("pretrained", "baseline_matched", TOY, ["--model.net.init_args.top_n", "1"])
    assert got[-4:] == ["--trainer.max_steps", str(2 * steps), "--trainer.val_check_interval", str(2 * interval)]
    assert study.step_factor({}, []) == 5                                # top_n defaults to 4


def test_rows_table_and_result_file_from_stub_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, written = [], {}

    def fake_fit(project, config, name, seed, overrides=()):
        calls.append((name, list(overrides)))
        local = "--model.net.local_views" not in overrides
        metrics = {f"val/{b}/{m}": 50.0 + seed for b in ("global", "fused") for m in ("mAP", "CF1", "OF1", "CP")}
        if local:
            metrics.update({f"val/local/{m}": 40.0 + seed for m in ("mAP", "CF1", "OF1")})
        return {"metrics": metrics, "global_step": 250, "wall_s": 1.0, "run_dir": f"/runs/{name}"}

    def fake_measure(ckpt):
        assert str(ckpt).endswith("checkpoints/last.ckpt")
        return {"instance_hit": 0.5, "instance_hit_same_class": 0.25, "best_iou": 0.4, "absent_box_frac": 0.6,
                "absent_box_floor": 0.4, "box_area": 0.3, "found": 1.0, "n_instances": 10, "n_images": 5}

    monkeypatch.setattr(study, "run_fit", fake_fit)
    monkeypatch.setattr(study, "measure_checkpoint", fake_measure)
    monkeypatch.setattr(study, "write_results", lambda project, name, payload: written.update(payload))
    monkeypatch.setattr(study, "keep_committed_rows", lambda project, name, rows: rows)   # not the real file
    study.main(["--seeds", "0", "1", "--variants", "baseline", "did", "--trainer.max_steps", "250"])
    assert [c[0] for c in calls[:4]] == ["study_pretrained_baseline_s0", "study_pretrained_did_s0",
                                        "study_scratch_baseline_s0", "study_scratch_did_s0"]
    assert len(written["rows"]) == 8 and written["seeds"] == [0, 1] and written["step_factor"] == 5
    assert written["command"].endswith("--variants baseline did --trainer.max_steps 250")
    assert written["extra_args"] == ["--trainer.max_steps", "250"]
    row = written["rows"][1]
    assert row["variant"] == "did" and row["local/mAP"] == 40.0 and "val/global/CP" not in row
    assert row["mechanism"]["instance_hit"] == 0.5
    lines = written["table"].splitlines()
    assert len(lines) == 2 + 4
    assert "| scratch | DiD | 250 | 50.5 ± 0.7 | 40.5 ± 0.7 | 50.5 ± 0.7 | 50.0 ± 0.0 | 25.0 ± 0.0 |" in lines[-1]
    assert "| pretrained | ViT baseline | 250 | 50.5 ± 0.7 | - | 50.5 ± 0.7 |" in lines[2]
    claim = written["claim"]                       # what make claims renders (shared/claims.py)
    assert claim["series"]["DiD fused (pretrained)"] == [50.0, 51.0]
    assert claim["comparisons"] == [{"method": "DiD fused (pretrained)", "baseline": "ViT (pretrained)"}]
    assert claim["mechanism"]["instances hit, IoU >= 0.5 (pretrained)"]["values"] == [50.0, 50.0]
    assert "40.0 %" in claim["note"]


def test_the_16x16_grid_study_adds_the_rectified_class_map_ablation(monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/toy_grid16.yaml writes study_grid16.json with its own run names, its setting, and the pre-registered
    ``class_map_activation: relu`` runs (pretrained only) beside the default variants."""
    calls, written = [], {}

    def fake_fit(project, config, name, seed, overrides=()):
        calls.append((name, list(overrides)))
        metrics = {f"val/{b}/{m}": 50.0 for b in ("global", "local", "fused") for m in ("mAP", "CF1", "OF1")}
        return {"metrics": metrics, "global_step": 250, "wall_s": 1.0, "run_dir": f"/runs/{name}"}

    monkeypatch.setattr(study, "run_fit", fake_fit)
    monkeypatch.setattr(study, "measure_checkpoint", lambda ckpt: {
        "instance_hit": 0.6, "instance_hit_same_class": 0.3, "absent_box_frac": 0.5, "absent_box_floor": 0.4,
        "box_area": 0.2})
    names = []
    monkeypatch.setattr(study, "write_results", lambda project, name, payload: (names.append(name),
                                                                                  written.update(payload)))
    monkeypatch.setattr(study, "keep_committed_rows", lambda project, name, rows: rows)   # not the real file
    study.main(["--seeds", "0", "--config", "projects/did/configs/toy_grid16.yaml"])
    assert names == ["study_grid16"]
    assert [c[0] for c in calls] == [f"study_grid16_pretrained_{v}_s0" for v in
                                     ("baseline", "baseline_matched", "did", "did_relu")] + \
        [f"study_grid16_scratch_{v}_s0" for v in ("baseline", "baseline_matched", "did")]
    assert calls[3][1] == ["--model.net.class_map_activation", "relu"]
    claim = written["claim"]
    assert claim["setting"] == "16x16 grid (64 px, patch 4)"
    assert claim["series"]["DiD fused, class maps rectified (pretrained)"] == [50.0]
    assert claim["mechanism"]["instances hit, class maps rectified (pretrained)"]["aim"] == 50
    assert "| pretrained | DiD, class maps rectified |" in written["table"]
