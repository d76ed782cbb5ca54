"""The SPM claims of `make claims` (study.knobs: both recipes) from synthetic runs: the verdict follows the aim."""

import json

import pytest

import projects.spm.toy.study as study
from shared.claims import verdict


def fake_run(phrase_after: float, nontarget_after: float):
    def run(strength: float, seed: int, images_per_prompt: int = 20) -> dict:
        jitter = seed * 0.5
        return {"lambda": strength, "seed": seed, "bare_before": 100.0, "bare": 20.0 + jitter,
                "phrase_before": 96.0, "phrase": phrase_after + jitter,
                "nontarget_before": 94.0, "nontarget": nontarget_after - jitter}
    return run


@pytest.mark.parametrize("phrase_after,nontarget_after,expected", [
    (30.0, 93.5, "supported"),        # phrases 96 -> 30 (more than halved), non-target within 3 points
    (90.0, 93.5, "not supported"),    # the bare word goes, the phrases stay: the toy's finding
    (30.0, 80.0, "not supported"),    # erased, but the other concepts suffer
])
def test_the_claim_asks_for_halved_phrases_and_kept_non_targets(phrase_after, nontarget_after, expected):
    rows = [{**fake_run(phrase_after, nontarget_after)(1000.0, seed), "tag": "paper", "ratio": 0.1, "ratio_last": 0.2}
            for seed in (0, 1, 2)]
    claim = study.recipe_claim(rows, "paper", "paper recipe")
    assert claim["comparisons"][0]["margin"] == -48.0                        # half the base phrase rate
    assert len(claim["series"]["circle phrases, SPM"]) == 3
    assert verdict(claim)[0] == expected


def test_the_phrase_study_writes_its_sweep_and_leaves_the_claim_to_the_knob_study(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "phrase_run", fake_run(30.0, 93.5))
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(study, "STUDY", tmp_path / "study")
    study.phrases()
    saved = json.loads((tmp_path / "results" / "study.json").read_text())
    assert "claim" not in saved and "lambda 1000: 20 / 30.0 / 93.5" in saved["note"]
    assert (tmp_path / "results" / "lambda_sweep.png").stat().st_size > 0
    assert len(saved["rows"]) == len(study.CLAIM_SEEDS) + len(study.SWEEP) - 1


def test_the_knob_study_reruns_both_recipes_and_every_flipping_knob_and_writes_two_claims(tmp_path, monkeypatch):
    """Seed 0 of every knob; seeds 1-2 for the two recipes and the knobs whose outcome differs from the paper
    recipe's (here: lambda 3 erases the phrases, the rest do not); both claims carry the loss ratio."""
    erasing = {"lambda3", "toy"}
    calls = []

    def run(label, tag, overrides, seed):
        calls.append((tag, seed))
        after = 10.0 if tag in erasing else 100.0
        return {"setting": label, "tag": tag, "seed": seed, "lambda": 3.0, "ratio": 0.01 + seed, "ratio_last": 0.5,
                "bare_before": 100.0, "bare": after, "phrase_before": 100.0, "phrase": after + seed,
                "nontarget_before": 90.0, "nontarget": 89.0}

    monkeypatch.setattr(study, "knob_run", run)
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(study, "STUDY", tmp_path / "study")
    study.knobs()
    tags = [tag for _, tag, _ in study.KNOBS]
    assert calls[:len(tags)] == [(t, 0) for t in tags]
    assert calls[len(tags):] == [(t, s) for s in (1, 2) for t in ("paper", "lambda3", "toy")] + [
        (tag, 0) for _, tag, _ in study.BACK]                               # then the way back, seed 0
    saved = json.loads((tmp_path / "results" / "recipes.json").read_text())
    paper, toy = saved["claims"]
    assert paper["setting"].startswith("paper recipe") and toy["setting"].startswith("toy-scaled recipe")
    assert verdict(paper)[0] == "not supported" and verdict(toy)[0] == "supported"
    ratio = toy["mechanism"]["lambda x L_anc / L_era, steps 0-9"]
    assert ratio["values"] == [0.01, 1.01, 2.01] and ratio["digits"] == 3
    assert "| paper recipe + lambda 3 | 10.0 ± 0.0 | 11.0 ± 1.0 |" in saved["table"]


def test_the_loss_ratio_reads_the_first_steps_of_the_csv_log(tmp_path):
    log = tmp_path / "csv" / "version_0"
    log.mkdir(parents=True)
    rows = ["step,train/loss_erase,train/loss_anchor,val/x"] + [f"{s},{0.5},{0.001 * s},"
                                                              for s in range(12)] + ["12,,,0.3"]
    (log / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert study.loss_ratio(tmp_path, 1000.0) == pytest.approx(1000 * 0.0045 / 0.5)
    assert study.loss_ratio(tmp_path, 1000.0, steps=2, last=True) == pytest.approx(1000 * 0.0105 / 0.5)
    with pytest.raises(RuntimeError, match="holds 12 of the first 20 steps"):
        study.loss_ratio(tmp_path, 1000.0, steps=20)
