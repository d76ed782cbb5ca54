import dataclasses
import json

import yaml

from shared import expected, summary
from shared.claims import REPO_ROOT


def fake_expectation(higher_is_better: bool = True) -> expected.Expectation:
    return expected.Expectation("top-1", "%", higher_is_better, {0: 60.0, 1: 62.0, 2: 64.0}, "ViT", [80.0, 82.0],
                                "results/study.json (python -m alpha.study)", lambda m: 100 * m["val/top1"])


def write_run(root, project: str, **fields) -> None:
    run = root / project / "toy"
    run.mkdir(parents=True)
    run.joinpath("summary.json").write_text(json.dumps(
        {"project": project, "run_name": "toy", "headline_metric": "val/top1", "headline": 0.875, "global_step": 120,
         "wall_s": 33.0, "outcome": "finished", "seed": 0, "cpu_threads": 2,
         "command": ["fit", "--config", f"projects/{project}/configs/toy.yaml", "--overwrite", "true"], **fields}))


def test_collect_and_table(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CV_PAPERS_LOGS", str(tmp_path))
    monkeypatch.setattr(summary, "for_project", lambda project: None)
    write_run(tmp_path, "alpha", metrics={"val/top1": 0.875})
    rows = summary.collect(["alpha", "beta"], "toy")
    assert rows[0]["headline"] == 0.875 and "error" in rows[1]
    table = summary.format_table(rows)
    assert "val/top1" in table and "0.8750" in table and "no summary at" in table and "no committed study" in table
    out = tmp_path / "train_summary.json"
    assert summary.main(["--projects", "alpha", "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["project"] == "alpha"
    assert summary.main(["--projects", "alpha", "beta", "--out", str(out)]) == 1


def test_a_run_is_judged_against_the_committed_range_and_its_seed(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CV_PAPERS_LOGS", str(tmp_path))
    monkeypatch.setattr(summary, "for_project", lambda project: fake_expectation())
    write_run(tmp_path, "same", metrics={"val/top1": 0.60})                         # seed 0's committed value
    write_run(tmp_path, "low", metrics={"val/top1": 0.50}, seed=7)
    write_run(tmp_path, "other", metrics={"val/top1": 0.61}, cpu_threads=1, cpu_capability="AVX2")
    write_run(tmp_path, "changed", metrics={"val/top1": 0.62},
              command=["fit", "--config", "projects/changed/configs/toy.yaml", "--model.optim.lr", "1"])
    rows = {r["project"]: r["expected"] for r in summary.collect(["same", "low", "other", "changed"], "toy")}
    assert rows["same"]["range"] == [58.0, 66.0] and rows["same"]["value"] == 60.0
    assert rows["same"]["verdict"] == "within range; seed 0: 60.00 reproduced"
    assert rows["low"]["verdict"] == "below range (worse)"
    assert rows["other"]["verdict"] == ("within range; seed 0: 60.00 committed (another CPU thread count or kind? "
                                        "this run: 1 thread, AVX2)")
    assert rows["changed"]["verdict"] == "n/a: not the toy default (--model.optim.lr 1)"
    pinned = dataclasses.replace(fake_expectation(), cpu_threads=1)    # a study that fixed the thread count
    monkeypatch.setattr(summary, "for_project", lambda project: pinned)
    row = summary.collect(["other"], "toy")[0]["expected"]
    assert row["verdict"].endswith("committed (another CPU kind? this run: AVX2)")
    table = summary.format_table(summary.collect(["same"], "toy"))
    assert "top-1 (%, higher better)" in table and "62.0 ± 2.0 (seeds 0-2), range 58.0..66.0" in table
    assert "ViT 81.0 ± 1.4" in table


def test_direction_clipping_and_settings() -> None:
    lower = fake_expectation(higher_is_better=False)
    assert lower.verdict(70.0, None) == "above range (worse)" and lower.verdict(50.0, None) == "below range (better)"
    wide = expected.Expectation("rate", "%", False, {0: 1.0, 1: 20.0}, "base", [100.0], "", lambda m: 0.0)
    assert wide.range[0] == 0.0                                                     # a percentage stays >= 0
    assert expected.settings_differ("p", ["fit", "--config=projects/p/configs/toy.yaml", "--seed_everything", "3"]) \
        is None
    assert expected.settings_differ("p", ["fit", "--config", "projects/p/configs/toy_grid16.yaml"]) == \
        "--config projects/p/configs/toy_grid16.yaml"
    assert expected.settings_differ("p", ["validate", "--config", "projects/p/configs/toy.yaml"]) == "not a fit"


def test_every_project_with_a_study_has_an_expectation_from_its_committed_rows() -> None:
    for project in ("did", "drdf", "rams_trans", "spm"):
        e = expected.for_project(project)
        assert e is not None and len(e.seeds) >= 3 and e.baseline_values, project
        assert 0 in e.seeds, f"{project}: the toy default runs seed 0, which its study must hold"
        config = yaml.safe_load((REPO_ROOT / "projects" / project / "configs" / "toy.yaml").read_text())
        assert config["seed_everything"] == 0, project
