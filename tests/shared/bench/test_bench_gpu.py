"""``make bench-gpu``: the one-line refusal without CUDA and the tiny CPU dry run of every row, of the input-pipeline
rows and of the speed switches (no GPU needed)."""

import json
import math

import torch

from shared.bench import gpu
from shared.bench.registry import gpu_rows, pipeline_rows


def test_without_cuda_it_says_so_in_one_line_and_exits_0(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "bench_gpu.json"
    assert gpu.main(["--bf16", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [gpu.NO_CUDA]
    assert not out.exists()


def test_dry_run_measures_every_row_and_switch_and_writes_the_json(capsys, tmp_path) -> None:
    out = tmp_path / "bench_gpu.json"
    assert gpu.main(["--dry-run", "--switches", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert set(report) == {"device", "torch", "dry_run", "precisions", "total_s", "rows", "pipeline", "switches"}
    assert report["dry_run"] is True and report["precisions"] == ["fp32"]
    assert [r["name"] for r in report["rows"]] == [row.name for row in gpu_rows()]
    assert len(gpu_rows()) == 7  # DiD, DRDF, RAMS-Trans steps; SPM iteration, CFG steps (SD v1.4 x 2, SDXL)
    for r in report["rows"]:
        assert "error" not in r, r
        assert r["name"] in printed and r["precision"] == "fp32" and r["paper"] and r["details"]
        for key in ("method_ms", "baseline_ms", "method_per_s", "baseline_per_s", "ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["name"], key, r[key])
        assert r["method_images"] >= 1 and r["baseline_images"] >= r["method_images"]
        assert r["method_peak_gib"] is None and r["baseline_peak_gib"] is None   # CPU: no CUDA memory to read
    # The pipeline rows reuse the steps measured above (their fp32 images/s) next to the tiny loaders.
    steps = {r["name"]: r["method_per_s"] for r in report["rows"]}
    assert len(report["pipeline"]) == 3
    for p in report["pipeline"]:
        assert "error" not in p, p
        d = p["details"]
        assert p["name"] in printed and d["tiny"] and d["workers"] == 0 and d["loader_images_per_s"] > 0
        gpu_row = next(row.gpu_row for row in pipeline_rows() if row.name == p["name"])
        assert d["steps"] == {"fp32": steps[gpu_row]} and d["bottleneck"] in ("loader", "step")
    # The switches: cheap ones first, each timed against its plain twin with the same losses; compile skipped.
    switched = report["switches"]
    assert [(r["row"].split(":")[0], r["switch"]) for r in switched] == [
        ("did", "fused"), ("drdf", "fused"), ("rams_trans", "fused"), ("drdf", "channels_last"),
        ("did", "compile"), ("drdf", "compile"), ("rams_trans", "compile")]
    for r in switched:
        line = next(line for line in printed.splitlines() if line.startswith(r["name"]))
        if r["switch"] == "compile":
            assert r["skipped"].endswith("(--compile-dry times it)") and "skipped" in line
            continue
        assert r["precision"] == "fp32" and r["details"]["switch"] == r["switch"], r
        for key in ("switched_ms", "plain_ms", "switched_per_s", "plain_per_s", "ratio", "switched_first_call_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["name"], key, r[key])
        assert r["same_loss"] and r["loss_rel_diff"] <= gpu.LOSS_RTOL["fp32"], r
        assert r["helps"] == (r["ratio"] < gpu.HELPS) and ("helps" if r["helps"] else "no gain") in line
        assert r["switched_peak_gib"] is None and len(r["switched_losses"]) == 2


def test_bf16_dry_run_of_one_row_uses_its_bf16_build(tmp_path) -> None:
    out = tmp_path / "bench_gpu.json"
    assert gpu.main(["FT (1 prompt", "--dry-run", "--bf16", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["precision"], r["details"]["unet_batch"]) for r in rows] == [("fp32", 2), ("bf16", 2)]
    assert all(r["method_ms"] > 0 for r in rows)
    assert json.loads(out.read_text())["pipeline"] == []     # no pipeline row for an SPM step
