"""The SPM claim of `make claims` (study.phrases) from synthetic runs: the verdict follows the study's aim."""

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
def test_the_claim_asks_for_halved_phrases_and_kept_non_targets(tmp_path, monkeypatch, phrase_after,
                                                                 nontarget_after, expected):
    monkeypatch.setattr(study, "phrase_run", fake_run(phrase_after, nontarget_after))
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(study, "STUDY", tmp_path / "study")
    study.phrases()
    saved = json.loads((tmp_path / "results" / "study.json").read_text())
    claim = saved["claim"]
    assert claim["comparisons"][0]["margin"] == -48.0                        # half the base phrase rate
    assert len(claim["series"]["circle phrases, SPM"]) == len(study.CLAIM_SEEDS)
    assert verdict(claim)[0] == expected
    assert (tmp_path / "results" / "lambda_sweep.png").stat().st_size > 0
    assert len(saved["rows"]) == len(study.CLAIM_SEEDS) + len(study.SWEEP) - 1
