"""Study helpers: a finished run with the same command is reused, not re-run; mean ± std cells."""

import json
import sys

import pytest
import torch

import shared.study as study
from shared.stats import cell, mean_std


def test_a_run_that_finished_the_same_command_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CV_PAPERS_LOGS", str(tmp_path))
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        run = tmp_path / "p" / "r"
        run.mkdir(parents=True, exist_ok=True)
        (run / "summary.json").write_text(json.dumps({"global_step": 3, "metrics": {"m": len(calls)}}))

    monkeypatch.setattr(study.subprocess, "run", fake_run)
    first = study.run_fit("p", "c.yaml", "r", 0, ["--x", "1"])
    again = study.run_fit("p", "c.yaml", "r", 0, ["--x", "1"])
    assert len(calls) == 1 and again["metrics"] == first["metrics"] == {"m": 1}
    other = study.run_fit("p", "c.yaml", "r", 0, ["--x", "2"])       # another command: trained again
    assert len(calls) == 2 and other["metrics"] == {"m": 2} and calls[-1][0] == sys.executable


def test_cell_and_mean_std():
    assert cell([0.5, 0.7], 100) == "60.0 ± 14.1"
    assert cell([]) == "-"
    assert mean_std([3.0]) == (3.0, 0.0)


def test_rebuild_refuses_a_run_on_a_real_dataset(tmp_path):
    torch.save({"hyper_parameters": {}, "datamodule_hyper_parameters": {"dataset": "cub"}}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="a measure needs the toy dataset.*'cub'"):
        study.rebuild_toy_run(tmp_path / "x.ckpt", object, object, "a measure")


def test_an_extended_study_keeps_the_committed_rows_it_did_not_redo(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    monkeypatch.setattr(study, "results_path", lambda project, name: path)
    assert study.keep_committed_rows("p", "s", [{"init": "scratch", "seed": 0, "x": 1}], ("init", "seed")) == \
        [{"init": "scratch", "seed": 0, "x": 1}]                           # nothing committed yet
    path.write_text(json.dumps({"rows": [{"init": "pretrained", "seed": 0, "x": 5},
                                         {"init": "scratch", "seed": 0, "x": 9}]}))
    rows = study.keep_committed_rows("p", "s", [{"init": "scratch", "seed": 0, "x": 1}], ("init", "seed"))
    assert rows == [{"init": "pretrained", "seed": 0, "x": 5}, {"init": "scratch", "seed": 0, "x": 1}]
    inits = ["pretrained", "scratch"]
    assert study.with_option(["--grid", "16", "--inits", "scratch"], "--inits", inits, inits) == ["--grid", "16"]
    assert study.with_option(["--inits=scratch", "--seeds", "0"], "--inits", ["scratch"], inits) == \
        ["--seeds", "0", "--inits", "scratch"]
