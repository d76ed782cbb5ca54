"""The study's claim block (what make claims renders) is built from its rows."""

from projects.rams_trans.study import claim, table
from shared.claims import verdict


def rows():
    out = []
    for init, vit, local in (("pretrained", 0.84, 0.62), ("scratch", 0.60, 0.24)):
        for seed in range(3):
            out.append({"init": init, "variant": "vit", "seed": seed, "global": vit + seed / 100,
                        "local": vit + seed / 100, "fused": vit + seed / 100})
            out.append({"init": init, "variant": "rams", "seed": seed, "global": 0.79, "local": local + seed / 100,
                        "fused": 0.81, "part_in_box": 0.47, "centre_in_box": 0.8, "box_area": 0.14})
    return out


def test_claim_compares_the_local_prediction_with_the_vit_and_reports_the_part_coverage():
    c = claim(rows())
    assert c["comparisons"] == [{"method": "RAMS local (pretrained)", "baseline": "ViT (pretrained)"}]
    assert [round(v, 1) for v in c["series"]["RAMS local (pretrained)"]] == [62.0, 63.0, 64.0]
    part = c["mechanism"]["DPPM box holds the part (pretrained)"]
    assert part["aim"] == 80 and [round(v, 1) for v in part["values"]] == [47.0] * 3
    assert verdict(c)[0] == "not supported"
    assert "| scratch | RAMS-Trans (2 scales) | local | 25.0 ± 1.0 | 47.0 ± 0.0 |" in table(rows())
