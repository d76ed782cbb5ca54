"""The README's toy study: single expert vs uniform ensemble vs DRDF over seeds (dev_seen acc / AUROC, a_t AUROC).

``python -m projects.drdf.study [--seeds 0 1 2] [--configs toy_single toy_ensemble toy] [-- extra CLI args]``
Each run is ``python -m projects.drdf fit --config projects/drdf/configs/<config>.yaml --seed_everything <s>``
(CSV logger); the numbers are the last epoch's validation metrics (no checkpoint selection). Writes
``logs/drdf/study.json`` and prints a markdown table of mean ± std.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METRICS = ("val/acc", "val/auroc", "val/a_t_auroc_text_decided", "val/a_t_std")


def run(config: str, seed: int, logs: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "projects.drdf", "fit", "--config", f"projects/drdf/configs/{config}.yaml",
           "--seed_everything", str(seed), "--run_name", f"study_{config}_s{seed}", "--logger", "csv", *extra]
    env = {**os.environ, "CV_PAPERS_LOGS": str(logs), "PROGRESS_REFRESH": "0"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((logs / "drdf" / f"study_{config}_s{seed}" / "summary.json").read_text())
    return {"config": config, "seed": seed, "wall_s": round(time.perf_counter() - start, 1),
            **{m: summary["metrics"].get(m) for m in METRICS}}


def table(results: list[dict], configs: list[str]) -> str:
    lines = ["| config | dev acc | dev AUROC | AUROC of a_t (text- vs image-decided) | std of a_t | runs |",
             "|---|---|---|---|---|---|"]
    for c in configs:
        rs = [r for r in results if r["config"] == c]
        cells = []
        for m in METRICS:
            vals = [r[m] for r in rs if r[m] is not None]
            if not vals:
                cells.append("–")
                continue
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            scale = 100 if m in ("val/acc", "val/auroc") else 1
            cells.append(f"{scale * statistics.mean(vals):.2f} ± {scale * sd:.2f}" if scale == 100
                         else f"{statistics.mean(vals):.3f} ± {sd:.3f}")
        lines.append(f"| {c} | {' | '.join(cells)} | {len(rs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["toy_single", "toy_ensemble", "toy"])
    parser.add_argument("--logs", default=str(REPO / "logs"))
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="extra CLI overrides after --")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    logs = Path(args.logs)
    results = []
    for seed in args.seeds:
        for config in args.configs:
            results.append(run(config, seed, logs, extra))
            print(json.dumps(results[-1]), flush=True)
    out = logs / "drdf" / "study.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(table(results, args.configs))


if __name__ == "__main__":
    main()
