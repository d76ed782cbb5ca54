"""Collect each project's ``logs/<project>/<run>/summary.json`` into one table (``make train``).

``python -m shared.summary --projects spm did ... [--run toy]`` prints the table and writes
``logs/train_summary.json``. Each row puts the run beside what its project's study committed for the toy default
(``shared.expected``): the metric the README and CLAIMS.md quote, with its unit and direction, the range over the
study's seeds, the baseline and a verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.cli import logs_dir
from shared.expected import for_project, settings_differ
from shared.stats import cell


def collect(projects: list[str], run: str) -> list[dict]:
    rows = []
    for project in projects:
        path = logs_dir() / project / run / "summary.json"
        if not path.is_file():
            rows.append({"project": project, "run_name": run, "error": f"no summary at {path}"})
            continue
        rows.append(judge(json.loads(path.read_text())))
    return rows


def judge(summary: dict) -> dict:
    """The summary with an ``expected`` block: metric, unit, direction, value, range, baseline, verdict."""
    expectation = for_project(summary.get("project", ""))
    if expectation is None or summary.get("outcome", "finished") != "finished":
        return summary
    lo, hi = expectation.range
    block = {"metric": expectation.metric, "unit": expectation.unit,
             "direction": "higher is better" if expectation.higher_is_better else "lower is better",
             "expected": expectation.describe(), "range": [round(lo, 2), round(hi, 2)],
             "baseline": f"{expectation.baseline} {cell(list(expectation.baseline_values))}",
             "source": expectation.source}
    try:
        block["value"] = round(expectation.read(summary.get("metrics", {})), 4)
    except KeyError as missing:
        block["verdict"] = f"n/a: the run logged no {missing}"
        return {**summary, "expected": block}
    differ = settings_differ(summary["project"], summary.get("command", []))
    if differ is not None:
        block["verdict"] = f"n/a: not the toy default ({differ})"
    else:
        block["verdict"] = expectation.verdict(block["value"], summary.get("seed"))
        if summary.get("seed") in expectation.seeds and "reproduced" not in block["verdict"]:
            # same code and config, other floats: the thread count (unless the study pinned it) or the CPU's kernels
            cpu, threads = summary.get("cpu_capability", "CPU kind not recorded"), summary.get("cpu_threads")
            block["verdict"] += (f" (another CPU kind? this run: {cpu})" if expectation.cpu_threads is not None else
                                 f" (another CPU thread count or kind? this run: {threads} "
                                 f"thread{'' if threads == 1 else 's'}, {cpu})")
    return {**summary, "expected": block}


def format_table(rows: list[dict]) -> str:
    header = f"{'project':<11} {'metric':<40} {'value':>7}  {'expected (toy default, study seeds)':<44} " \
             f"{'baseline':<28} verdict"
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['project']:<11} {r['error']}")
            continue
        e = r.get("expected")
        if e is None:
            value = "n/a" if r.get("headline") is None else f"{r['headline']:.4f}"
            lines.append(f"{r['project']:<11} {str(r.get('headline_metric')):<40} {value:>7}  "
                         f"{'(no committed study)' if r.get('outcome', 'finished') == 'finished' else r['outcome']}")
            continue
        metric = f"{e['metric']} ({e['unit']}, {e['direction'].replace(' is ', ' ')})"
        value = f"{e['value']:.2f}" if "value" in e else "n/a"
        lines.append(f"{r['project']:<11} {metric:<40} {value:>7}  {e['expected']:<44} {e['baseline']:<28} "
                     f"{e['verdict']}")
    walls = [f"{r['project']} {r.get('wall_s', 0):.0f} s" for r in rows if "error" not in r]
    lines.append("wall: " + ", ".join(walls) + "; ranges are mean ± 2 std of the committed study (shared/expected.py)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", nargs="*", default=[])
    parser.add_argument("--run", default="toy", help="run folder name to collect (default: toy)")
    parser.add_argument("--out", default=None, help="default: logs/train_summary.json")
    args = parser.parse_args(argv)
    rows = collect(args.projects, args.run)
    out = Path(args.out) if args.out else logs_dir() / "train_summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(format_table(rows) if rows else "no project has been trained yet.")
    print(f"wrote {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
