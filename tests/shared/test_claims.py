"""make claims: verdicts come from the numbers, and the report names every figure it was given."""

import json

import pytest

from shared import claims
from shared.claims import aim_status, compare, render, verdict


def claim(method, baseline, mechanism=None):
    return {"paper": "P", "statement": "M beats B.", "unit": "acc %", "series": {"M": method, "B": baseline},
            "comparisons": [{"method": "M", "baseline": "B"}], "mechanism": mechanism or {}}


@pytest.mark.parametrize("method,baseline,expected", [
    ([80, 81, 82], [70, 71, 72], "supported"),
    ([70, 71, 72], [80, 81, 82], "not supported"),
    ([70, 80, 90], [72, 79, 85], "inconclusive"),
])
def test_verdict_follows_twice_the_standard_error(method, baseline, expected):
    assert verdict(claim(method, baseline))[0] == expected


def test_lower_is_better_flips_the_sign_and_every_comparison_must_favour_the_method():
    assert compare([1, 1.1, 0.9], [5, 5.2, 4.8], higher_is_better=False)[0] == "method"
    c = claim([80, 81, 82], [70, 71, 72])
    c["series"]["C"] = [90, 91, 92]
    c["comparisons"].append({"method": "M", "baseline": "C"})
    assert verdict(c)[0] == "not supported"
    assert aim_status({"values": [70, 75], "aim": 80}) == "aim >= 80: missed"
    assert aim_status({"values": [85, 95], "aim": 80}) == "aim >= 80: met"


def test_a_margin_makes_the_comparison_a_non_inferiority_test():
    base, close, far = [80, 80, 80], [78.5, 79, 79.5], [70, 71, 72]  # close: 1 point worse; far: 9 points worse
    assert compare(close, base)[0] == "baseline"                  # plain test: any reliable loss counts against
    assert compare(close, base, margin=3)[0] == "method"           # ... but it is within a 3-point margin
    assert compare(far, base, margin=3)[0] == "baseline"
    assert compare([76, 77, 78], base, margin=3)[0] == "noise"     # 3 worse +- noise: cannot tell
    c = claim(close, base)
    c["comparisons"][0]["margin"] = 3
    v, lines = verdict(c)
    assert v == "supported" and "no more than 3 worse than" in lines[0]
    # a negative margin demands a gain: halving a rate of 100 needs a drop of more than 50
    halved, unchanged = [30, 32, 34], [100, 100, 100]
    assert compare(halved, unchanged, higher_is_better=False, margin=-50)[0] == "method"
    assert compare([60, 62, 64], unchanged, higher_is_better=False, margin=-50)[0] == "baseline"
    assert compare(unchanged, unchanged, higher_is_better=False, margin=-50)[0] == "baseline"


def test_render_writes_the_table_the_plot_and_a_pointer_for_missing_studies(tmp_path):
    for project in ("rams_trans", "did", "drdf", "spm"):
        (tmp_path / "projects" / project).mkdir(parents=True)
        (tmp_path / "projects" / project / "__main__.py").write_text("")
    res = tmp_path / "projects" / "rams_trans" / "results"
    res.mkdir(parents=True)
    mech = {"box holds part": {"values": [85, 90, 88], "unit": "%", "aim": 80}}
    (res / "study.json").write_text(json.dumps({"command": "python -m x", "claim": claim([80, 81, 82], [70, 71, 72],
                                                                                           mech)}))
    second = {**claim([60, 61, 62], [70, 71, 72]), "setting": "16x16 grid"}   # a second study of the same claim
    (res / "study_grid16.json").write_text(json.dumps({"command": "python -m x --grid 16", "claim": second}))
    spm = tmp_path / "projects" / "spm" / "results"     # one study, two settings: a "claims" list
    spm.mkdir(parents=True)
    ratio = {"ratio": {"values": [0.0123, 0.0125, 0.0127], "unit": "ratio", "digits": 3}}
    (spm / "recipes.json").write_text(json.dumps({"command": "python -m y", "claims": [
        {**claim([10, 11, 12], [70, 71, 72], ratio), "setting": "recipe A"},
        {**claim([90, 91, 92], [70, 71, 72]), "setting": "recipe B"}]}))
    doc, table = render(tmp_path)
    assert "## P: recipe A" in doc and "## P: recipe B" in doc and "| ratio (ratio) | 0.013 ± 0.000 |" in doc
    assert (spm / "recipes_1.png").is_file() and (spm / "recipes_2.png").is_file()
    assert "**Verdict: supported.**" in doc and "81.0 ± 1.0" in doc and "aim >= 80: met" in doc
    assert "## P: 16x16 grid" in doc and "**Verdict: not supported.**" in doc
    assert (res / "study.png").stat().st_size > 1000 and (res / "study_grid16.png").stat().st_size > 1000
    assert doc.count("No result file with a claim yet") == 2  # did, drdf have none in this tree
    rows = table.splitlines()[2:]
    assert len(rows) == 6 and "**supported**" in rows[2] and "| 16x16 grid |" in rows[3]
    assert "| recipe A |" in rows[4] and "| recipe B |" in rows[5]


def test_project_readme_tables_are_rendered_from_their_result_files(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "study.json").write_text(json.dumps({"command": "python -m p.study", "table": "| a |"}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:study -->\nstale | 1 ± 2\n<!-- /results -->\nrest\n")
    assert claims.render_project_tables(readme) == 1
    text = readme.read_text()
    assert "stale" not in text and "| a |" in text and "`python -m p.study`" in text and text.endswith("rest\n")
    readme.write_text("<!-- results:missing -->\n<!-- /results -->\n")
    with pytest.raises(SystemExit, match="missing"):
        claims.render_project_tables(readme)
