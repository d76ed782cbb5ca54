"""The study's claim block (what make claims renders) puts the same-experts control first."""

from projects.drdf.study import claim
from shared.claims import verdict


def test_claim_compares_drdf_with_the_uniform_ensemble_first():
    rows = []
    for config, acc in (("toy_single_text", 0.69), ("toy_single_image", 0.68), ("toy_ensemble", 0.84),
                        ("toy", 0.95)):
        for seed in range(3):
            rows.append({"config": config, "seed": seed, "val/acc": acc + seed / 200,
                         "val/a_t_auroc_text_decided": 0.8 if config == "toy" else None,
                         "val/w_text_auroc_text_decided": 0.9 if config == "toy" else None})
    c = claim(rows)
    assert c["comparisons"][0] == {"method": "DRDF", "baseline": "uniform ensemble"}
    assert len(c["comparisons"]) == 3 and verdict(c)[0] == "supported"
    assert [round(v, 1) for v in c["mechanism"]["text expert's weight separates them"]["values"]] == [90.0] * 3
