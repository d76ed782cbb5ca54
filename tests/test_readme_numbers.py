"""No README quotes a mean ± std that no committed result file holds: the numbers cannot go stale unnoticed.

Study tables in the READMEs are rendered by ``make claims`` from ``projects/<name>/results/*.json``; this test
catches a number typed into the prose (or left from an earlier run) that no result file or CLAIMS.md holds.
"""

import json
import re

from shared.claims import REPO_ROOT

MEAN_STD = re.compile(r"-?\d+(?:\.\d+)? ± \d+(?:\.\d+)?")


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def test_every_mean_std_a_readme_quotes_is_in_a_committed_result():
    committed = set(MEAN_STD.findall((REPO_ROOT / "CLAIMS.md").read_text()))
    for path in REPO_ROOT.glob("projects/*/results/*.json"):
        for text in strings(json.loads(path.read_text())):
            committed.update(MEAN_STD.findall(text))
    stale = {}
    for readme in [REPO_ROOT / "README.md", *sorted(REPO_ROOT.glob("projects/*/README.md"))]:
        missing = [n for n in MEAN_STD.findall(readme.read_text()) if n not in committed]
        if missing:
            stale[str(readme.relative_to(REPO_ROOT))] = missing
    assert not stale, f"numbers no committed result holds (re-run the study or render with make claims): {stale}"
