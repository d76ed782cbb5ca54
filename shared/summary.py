"""Collect each project's ``logs/<project>/<run>/summary.json`` into one table (``make train``).

``python -m shared.summary --projects spm did ... [--run toy]`` prints the table and writes
``logs/train_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.cli import logs_dir


def collect(projects: list[str], run: str) -> list[dict]:
    rows = []
    for project in projects:
        path = logs_dir() / project / run / "summary.json"
        if not path.is_file():
            rows.append({"project": project, "run_name": run, "error": f"no summary at {path}"})
            continue
        rows.append(json.loads(path.read_text()))
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'project':<14} {'run':<10} {'headline metric':<28} {'value':>10} {'steps':>7} {'wall s':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['project']:<14} {r['run_name']:<10} {r['error']}")
            continue
        value = "n/a" if r.get("headline") is None else f"{r['headline']:.4f}"
        lines.append(f"{r['project']:<14} {r['run_name']:<10} {str(r.get('headline_metric')):<28} {value:>10} "
                     f"{r.get('global_step', 0):>7} {r.get('wall_s', 0):>8}")
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
