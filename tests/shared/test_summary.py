import json

from shared import summary


def test_collect_and_table(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CV_PAPERS_LOGS", str(tmp_path))
    run = tmp_path / "alpha" / "toy"
    run.mkdir(parents=True)
    run.joinpath("summary.json").write_text(json.dumps(
        {"project": "alpha", "run_name": "toy", "headline_metric": "val/top1", "headline": 0.875,
         "global_step": 120, "wall_s": 33.0}))
    rows = summary.collect(["alpha", "beta"], "toy")
    assert rows[0]["headline"] == 0.875 and "error" in rows[1]
    table = summary.format_table(rows)
    assert "val/top1" in table and "0.8750" in table and "no summary at" in table
    out = tmp_path / "train_summary.json"
    assert summary.main(["--projects", "alpha", "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["project"] == "alpha"
    assert summary.main(["--projects", "alpha", "beta", "--out", str(out)]) == 1
