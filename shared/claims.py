"""``make claims``: one report of what the toy world says about each paper's claim.

Every study writes its committed result file ``projects/<name>/results/<study>.json`` with a ``claim`` block::

    {"paper": "...", "statement": "the paper's claim in one sentence", "unit": "top-1 %",
     "series": {"<name>": [one value per seed], ...},              # every measured row, same unit
     "comparisons": [{"method": "<series>", "baseline": "<series>", "higher_is_better": true,
                      "margin": 3}, ...],                            # margin: optional, see below
     "mechanism": {"<name>": {"values": [...], "unit": "%", "aim": 80, "higher_is_better": true,
                              "digits": 1}, ...},                  # digits: optional, decimals shown
     "note": "what the numbers mean, in a sentence or two"}

A ``"setting"`` (e.g. the toy world's geometry) tells two studies of one claim apart. A study that measures one
claim under several settings writes ``"claims": [{...}, ...]`` instead (e.g. SPM's two recipes). This module only
reads those files (it imports no project), computes each verdict from the numbers, and writes ``CLAIMS.md``, one
PNG per claim (``projects/<name>/results/<study>.png``; ``<study>_<i>.png`` for the i-th of a list) and the
results table of the top-level README (between its ``claims`` markers), and each study table a project README
shows (between ``results`` markers). ``--full`` first re-runs every study
with the command its result file records.

Verdict, per comparison: the mean difference ``d`` (signed so that positive favours the method) against twice
its standard error ``se = sqrt(s_m^2 / n_m + s_b^2 / n_b)``: ``d > 2 se`` favours the method, ``d < -2 se``
favours the baseline, anything else is within seed noise. A comparison with a ``margin`` is a non-inferiority
test ("the method is no more than ``margin`` worse", e.g. SPM's non-target accuracy): ``d + margin`` takes the
place of ``d``; a negative margin asks for a gain of at least ``-margin`` (e.g. "the circle rate is at least
halved"). A claim is **supported** when every comparison favours the method, **not supported** when any
favours the baseline, **inconclusive** otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from shared.stats import cell, mean_std

REPO_ROOT = Path(__file__).resolve().parents[1]  # as shared.cli's, without importing Lightning

README_START, README_END = "<!-- claims:start -->", "<!-- claims:end -->"
# a project README's study table: ``<!-- results:study_grid16 -->`` ... ``<!-- /results -->`` holds the ``table``
# of ``projects/<name>/results/study_grid16.json``, rewritten by every ``make claims``
RESULTS_BLOCK = re.compile(r"<!-- results:(?P<study>[\w-]+) -->\n.*?<!-- /results -->", re.S)


def fmt(values: list[float], digits: int = 1) -> str:
    return cell(values, digits=digits)


def compare(method: list[float], baseline: list[float], higher_is_better: bool = True,
            margin: float = 0.0) -> tuple[str, float, float]:
    """``("method" | "baseline" | "noise", d, se)`` with ``d`` signed in the method's favour; a ``margin``
    tests non-inferiority (``d + margin`` against 2 se)."""
    (mm, sm), (mb, sb) = mean_std(method), mean_std(baseline)
    d = (mm - mb) if higher_is_better else (mb - mm)
    se = math.sqrt(sm ** 2 / len(method) + sb ** 2 / len(baseline))
    return ("method" if d + margin > 2 * se else "baseline" if d + margin < -2 * se else "noise"), d, se


def verdict(claim: dict) -> tuple[str, list[str]]:
    """The claim's verdict and one line of evidence per comparison."""
    series, outcomes, lines = claim["series"], [], []
    for c in claim["comparisons"]:
        margin = c.get("margin", 0.0)
        who, d, se = compare(series[c["method"]], series[c["baseline"]], c.get("higher_is_better", True), margin)
        outcomes.append(who)
        if margin > 0:
            word = {"method": f"no more than {margin:g} worse than", "baseline": f"more than {margin:g} worse than",
                    "noise": f"within noise of {margin:g} worse than"}[who]
        elif margin < 0:
            word = {"method": f"better by more than {-margin:g} than", "baseline": f"not better by {-margin:g} than",
                    "noise": f"within noise of better by {-margin:g} than"}[who]
        else:
            word = {"method": "better than", "baseline": "worse than", "noise": "within noise of"}[who]
        lines.append(f"{c['method']} is {word} {c['baseline']} (difference {d:+.1f}, 2 se = {2 * se:.1f})")
    if outcomes and all(o == "method" for o in outcomes):
        return "supported", lines
    if any(o == "baseline" for o in outcomes):
        return "not supported", lines
    return "inconclusive", lines


def aim_status(m: dict) -> str:
    if "aim" not in m:
        return ""
    mean = statistics.mean(m["values"])
    ok = mean >= m["aim"] if m.get("higher_is_better", True) else mean <= m["aim"]
    return f"aim {'>=' if m.get('higher_is_better', True) else '<='} {m['aim']}: {'met' if ok else 'missed'}"


def plot(claim: dict, path: Path) -> None:
    import matplotlib  # heavy, and only the report draws: the verdicts (imported by the studies) need none of it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(claim["unit"], claim["series"])]
    if claim.get("mechanism"):
        panels.append(("mechanism (units in CLAIMS.md)", {k: v["values"] for k, v in claim["mechanism"].items()}))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (unit, series) in zip(axes[0], panels, strict=True):
        names = list(series)
        for i, name in enumerate(names):
            m, s = mean_std(series[name])
            ax.bar(i, m, yerr=s, color=f"C{i % 10}", alpha=0.7, capsize=4)
            ax.scatter([i] * len(series[name]), series[name], color="k", s=10, zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(unit)
        for m in (claim.get("mechanism") or {}).values():
            if unit.startswith("mechanism") and "aim" in m:
                ax.axhline(m["aim"], color="gray", ls="--", lw=1)
    fig.suptitle(f"{claim['paper']}: mean ± std over seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def projects(root: Path = REPO_ROOT) -> list[str]:
    """The project folders (``projects/<name>/__main__.py``), in name order."""
    return sorted(p.parent.name for p in (root / "projects").glob("*/__main__.py"))


def result_files(root: Path = REPO_ROOT) -> dict[str, list[Path]]:
    """Project -> its result files that hold a ``claim`` block (or a ``claims`` list), in file-name order (projects
    without one: [])."""
    found = {}
    for project in projects(root):
        files = sorted((root / "projects" / project / "results").glob("*.json"))
        found[project] = [f for f in files if {"claim", "claims"} & json.loads(f.read_text()).keys()]
    return found


def claims_of(result: dict, f: Path) -> list[tuple[dict, Path]]:
    """A result file's claims, each with the path of its plot."""
    if "claim" in result:
        return [(result["claim"], f.with_suffix(".png"))]
    return [(c, f.with_name(f"{f.stem}_{i}.png")) for i, c in enumerate(result["claims"], 1)]


def render(root: Path = REPO_ROOT) -> tuple[str, str]:
    """``(CLAIMS.md text, README table)``; writes the plots."""
    files = result_files(root)
    doc = ["# What the toy world says about each paper's claim", "",
           "Generated by `make claims` from the committed study results (`projects/<name>/results/*.json`); "
           "`make claims FULL=1` re-runs the studies. Numbers are mean ± std over seeds; verdicts are computed "
           "(see `shared/claims.py`): a difference counts when it exceeds twice its standard error.", ""]
    table = ["| paper | claim | setting | toy measurement | mechanism | verdict |", "|---|---|---|---|---|---|"]
    for project, found in files.items():
        if not found:
            doc += [f"## {project}", "", f"No result file with a claim yet (`projects/{project}/results/`).", ""]
            table.append(f"| {project} | - | - | not measured yet | - | - |")
        for f in found:
            result = json.loads(f.read_text())
            table += [_render_one(result, claim, f, png, root, doc) for claim, png in claims_of(result, f)]
    return "\n".join(doc), "\n".join(table)


def _render_one(result: dict, claim: dict, f: Path, png: Path, root: Path, doc: list[str]) -> str:
    """Append one claim's section to ``doc``; return its README table row."""
    v, evidence = verdict(claim)
    plot(claim, png)
    rel_png, rel_json = png.relative_to(root), f.relative_to(root)
    setting = claim.get("setting", "")
    doc += [f"## {claim['paper']}" + (f": {setting}" if setting else ""), "", f"**Claim.** {claim['statement']}",
            "", f"| {claim['unit']} | mean ± std | seeds |", "|---|---|---|"]
    doc += [f"| {k} | {fmt(vals)} | {len(vals)} |" for k, vals in claim["series"].items()]
    if claim.get("mechanism"):
        doc += ["", "| mechanism | mean ± std | aim |", "|---|---|---|"]
        doc += [f"| {k} ({m.get('unit', '')}) | {fmt(m['values'], m.get('digits', 1))} | {aim_status(m)} |"
                for k, m in claim["mechanism"].items()]
    doc += ["", f"**Verdict: {v}.** " + "; ".join(evidence) + ".", ""]
    if claim.get("note"):
        doc += [claim["note"], ""]
    doc += [f"![{f.parents[1].name}: {png.stem}]({rel_png})", "", f"Source: `{rel_json}` (`{result['command']}`).", ""]
    c0 = claim["comparisons"][0]
    meas = (f"{c0['method']} {fmt(claim['series'][c0['method']])} vs {c0['baseline']} "
            f"{fmt(claim['series'][c0['baseline']])} ({claim['unit']})")
    mech = "; ".join(f"{k} {fmt(m['values'], m.get('digits', 1))} {m.get('unit', '')}".strip()
                     for k, m in (claim.get("mechanism") or {}).items()) or "-"
    return f"| {claim['paper']} | {claim['statement']} | {setting or '-'} | {meas} | {mech} | **{v}** |"


def render_project_tables(readme: Path) -> int:
    """Rewrite each results block of a project README from its committed result file; returns how many."""
    results = readme.parent / "results"

    def table(match: re.Match) -> str:
        path = results / f"{match['study']}.json"
        if not path.is_file():
            raise SystemExit(f"{readme}: a results block names {match['study']!r}, but {path} does not exist")
        result = json.loads(path.read_text())
        return (f"<!-- results:{match['study']} -->\n{result['table']}\n\n(`results/{path.name}`, written by "
                f"`{result['command']}`; this table is rewritten by `make claims`.)\n<!-- /results -->")

    text = readme.read_text()
    new, count = RESULTS_BLOCK.subn(table, text)
    if new != text:
        readme.write_text(new)
    return count


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="re-run every study first (hours on 2 CPU cores)")
    args = p.parse_args(argv)
    if args.full:
        for f in (f for found in result_files().values() for f in found):
            command = shlex.split(json.loads(f.read_text())["command"])   # "python -m projects.<name>.study ..."
            print(f"=== {f.relative_to(REPO_ROOT)}: {' '.join(command)}", flush=True)
            subprocess.run([sys.executable, *command[1:]], check=True, cwd=REPO_ROOT)
    doc, table = render()
    (REPO_ROOT / "CLAIMS.md").write_text(doc)
    readme = REPO_ROOT / "README.md"
    text = readme.read_text()
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        readme.write_text(head + README_START + "\n" + table + "\n" + README_END + rest.split(README_END, 1)[1])
    blocks = sum(render_project_tables(f) for f in sorted(REPO_ROOT.glob("projects/*/README.md")))
    print(doc)
    print(f"wrote {REPO_ROOT / 'CLAIMS.md'}, the README's results table and {blocks} study table(s) of the project "
          "READMEs")


if __name__ == "__main__":
    main()
