"""The input-pipeline rows (``shared/bench/pipeline.py``) at the tiny setting: the files they write are in each
dataset's real layout, the loaders are the projects' training loaders, and the table / json carry the fields a
reader needs (no timing thresholds)."""

import json
import math

import pytest
import torch

from shared.bench import discover, pipeline
from shared.bench.__main__ import main as bench_main
from shared.bench.registry import pipeline_rows


def _row(project: str):
    discover()
    return next(r for r in pipeline_rows() if r.name.startswith(f"pipeline/{project}:"))


@pytest.mark.parametrize("project", ["rams_trans", "did", "drdf"])
def test_each_loader_reads_files_in_the_real_layout(project, tmp_path) -> None:
    loader, details = _row(project).loader(tmp_path, workers=0, files=4, tiny=True)
    assert type(loader).__name__ == "ResumableLoader" and loader.batch_size == 2   # the projects' train_loader
    assert details["samples"] == 6 and details["distinct_files"] == 4 and details["layout"]
    expected = {"rams_trans": ["images.txt", "image_class_labels.txt", "train_test_split.txt", "images"],
                "did": ["annotations/instances_train2014.json", "annotations/instances_val2014.json", "train2014"],
                "drdf": ["train.jsonl", "dev_seen.jsonl", "img", "tokenizer/tokenizer.json"]}[project]
    assert all((tmp_path / p).exists() for p in expected)
    suffix = ".png" if project == "drdf" else ".jpg"
    assert len({p.name for p in tmp_path.rglob(f"*{suffix}") if "val2014" not in str(p)}) == 4
    batches = list(loader)
    assert len(batches) == 3
    image = batches[0]["image"] if project == "drdf" else batches[0][0]
    assert image.shape == (2, 3, 32, 32) if project == "drdf" else image.shape == (2, 3, 64, 64)
    if project == "drdf":
        assert batches[0]["input_ids"].shape[0] == 2 and batches[0]["input_ids"].dtype == torch.long


def test_tiny_rows_print_the_table_and_write_the_json(tmp_path, capsys) -> None:
    out = tmp_path / "bench_pipeline.json"
    assert pipeline.main(["--tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    records = json.loads(out.read_text())
    assert [r["name"] for r in records] == [r.name for r in pipeline_rows()] and len(records) == 3
    assert "loader img/s" in printed and "bottleneck" in printed
    for r in records:
        d = r["details"]
        assert r["name"] in printed and r["target"] == pipeline.TARGET
        for key in ("loader_images_per_s", "step_images_per_s", "epoch_s", "first_batch_s", "step_ms"):
            assert math.isfinite(d[key]) and d[key] > 0, (r["name"], key)
        assert r["ratio"] == pytest.approx(d["loader_images_per_s"] / d["step_images_per_s"], rel=1e-3)
        assert d["bottleneck"] == ("loader" if r["ratio"] < 1 else "step") and d["pass"] == (r["ratio"] >= 1)
        assert d["workers"] == 0 and d["batch"] == 2 and d["batches_timed"] == 3 and d["images_timed"] == 6
        assert d["steps"] == {"fp32": d["step_images_per_s"]} and d["step_device"] == "cpu" and d["tiny"]
        assert d["paper"] and d["layout"] and d["transforms"] and d["kind"] == "throughput"


def test_make_bench_runs_only_the_pipeline_rows_with_its_filter(monkeypatch, tmp_path) -> None:
    seen = []

    def fake_run(rows):
        seen.extend(r.name for r in rows)
        return [{"name": r.name, "ratio": 2.0, "target": 1.0, "details": {"kind": "throughput"}} for r in rows]

    monkeypatch.setattr(pipeline, "run", fake_run)
    out = tmp_path / "bench.json"
    assert bench_main(["pipeline/d", "--out", str(out)]) == 0
    assert seen == ["pipeline/did: COCO loader vs train step", "pipeline/drdf: Hateful Memes loader vs train step"]
    assert [r["name"] for r in json.loads(out.read_text())] == seen
    assert pipeline.main(["no-such-row", "--tiny", "--out", str(out)]) == 2
