"""3-seed toy study: ViT baseline vs DiD (global / local / fused mAP) at the same step budget.

``python -m projects.did.study [--seeds 0 1 2] [--config projects/did/configs/toy.yaml] [ARGS...]`` runs
``fit`` for every (seed, variant) through the CLI (CSV logger, run folders ``logs/did/study_<variant>_s<seed>``),
then prints a markdown table of the final validation metrics (mean +- std over seeds) and writes it with the raw
numbers to ``logs/did/study.json``. Extra arguments are passed to every run (e.g. ``--trainer.max_steps 400``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from shared.cli import LOGS_DIR

VARIANTS = {"baseline": ["--model.local_views", "false"], "did": []}
KEYS = {"baseline": ["val/global/mAP"], "did": ["val/global/mAP", "val/local/mAP", "val/fused/mAP"]}


def run(config: str, variant: str, seed: int, extra: list[str]) -> dict:
    name = f"study_{variant}_s{seed}"
    cmd = [sys.executable, "-m", "projects.did", "fit", "--config", config, "--seed_everything", str(seed),
           "--run_name", name, "--logger", "csv", *VARIANTS[variant], *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    summary = json.loads((LOGS_DIR / "did" / name / "summary.json").read_text())
    return {"variant": variant, "seed": seed, "wall_s": round(time.perf_counter() - start, 1),
            **{k: summary["metrics"][k] for k in KEYS[variant]}}


def table(rows: list[dict]) -> str:
    def cell(variant: str, key: str) -> str:
        vals = [r[key] for r in rows if r["variant"] == variant]
        if not vals:
            return "-"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.1f} ± {sd:.1f}"

    lines = ["| model | global mAP | local mAP | fused mAP | seeds |", "|---|---|---|---|---|",
             f"| ViT baseline | {cell('baseline', 'val/global/mAP')} | - | - | "
             f"{sum(r['variant'] == 'baseline' for r in rows)} |",
             f"| DiD | {cell('did', 'val/global/mAP')} | {cell('did', 'val/local/mAP')} | "
             f"{cell('did', 'val/fused/mAP')} | {sum(r['variant'] == 'did' for r in rows)} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default="projects/did/configs/toy.yaml")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args, extra = parser.parse_known_args(argv)
    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            rows.append(run(args.config, variant, seed, extra))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    out = LOGS_DIR / "did" / "study.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "table": text, "extra_args": extra}, indent=2))


if __name__ == "__main__":
    main()
