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


def test_the_16x16_grid_study_carries_its_setting_and_the_cls_row_ablation():
    out = rows()
    out += [{"init": "pretrained", "variant": "rams_cls_row", "seed": s, "global": 0.8, "local": 0.7 + s / 100,
             "fused": 0.82, "part_in_box": 0.6, "centre_in_box": 0.9, "box_area": 0.2} for s in range(3)]
    c = claim(out, "16x16 grid (64 px, patch 4)")
    assert c["setting"] == "16x16 grid (64 px, patch 4)"
    assert [round(v, 1) for v in c["series"]["RAMS local, cls_row (pretrained)"]] == [70.0, 71.0, 72.0]
    assert c["mechanism"]["DPPM box holds the part, cls_row (pretrained)"]["aim"] == 80
    assert c["comparisons"] == [{"method": "RAMS local (pretrained)", "baseline": "ViT (pretrained)"}]
    assert "| pretrained | RAMS-Trans, patch_score cls_row | local | 71.0 ± 1.0 | 60.0 ± 0.0 |" in table(out)
