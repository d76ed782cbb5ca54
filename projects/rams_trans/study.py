"""The README's toy study: ViT baseline (1 scale) vs RAMS-Trans (2 scales) over seeds at the same step budget.

    python -m projects.rams_trans.study --seeds 0 1 2 [--steps 500] [-- extra CLI overrides]

Each run is the normal CLI on ``configs/toy.yaml`` (``--model.num_scales 1`` for the baseline), one at a time;
the final validation top-1 of each run is read from its ``summary.json``. Prints a markdown table (mean ± std
over seeds) and writes it with the raw numbers to ``logs/rams_trans/study.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from shared.cli import LOGS_DIR

VARIANTS = {"vit": ["--model.num_scales", "1", "--model.eta", "[]"], "rams": []}


def run(variant: str, seed: int, steps: int, extra: list[str]) -> dict:
    name = f"study_{variant}_s{seed}_{steps}"
    cmd = [sys.executable, "-m", "projects.rams_trans", "fit", "--config", "projects/rams_trans/configs/toy.yaml",
           "--logger", "csv", "--run_name", name, "--seed_everything", str(seed), "--trainer.max_steps", str(steps),
           "--trainer.val_check_interval", str(steps), *VARIANTS[variant], *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((LOGS_DIR / "rams_trans" / name / "summary.json").read_text())
    m = summary["metrics"]
    return {"variant": variant, "seed": seed, "steps": summary["global_step"],
            "wall_s": round(time.perf_counter() - start, 1),
            **{k: m[f"val/{k}_top1"] for k in ("global", "local", "fused")}}


def table(rows: list[dict]) -> str:
    def cell(vals: list[float]) -> str:
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{100 * statistics.mean(vals):.1f} ± {100 * sd:.1f}"

    def per_seed(rs: list[dict], key: str) -> str:
        return ", ".join(f"{100 * r[key]:.1f}" for r in rs)

    out = ["| model | prediction | top-1 % (mean ± std) | per seed |", "|---|---|---|---|"]
    vit = [r for r in rows if r["variant"] == "vit"]
    rams = [r for r in rows if r["variant"] == "rams"]
    if vit:
        out.append(f"| ViT baseline (1 scale) | CLS | {cell([r['global'] for r in vit])} | "
                   f"{per_seed(vit, 'global')} |")
    for head in ("global", "local", "fused"):
        if rams:
            out.append(f"| RAMS-Trans (2 scales) | {head} | {cell([r[head] for r in rams])} | "
                       f"{per_seed(rams, head)} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("extra", nargs="*", help="extra CLI overrides after --")
    args = p.parse_args()
    rows = []
    for seed in args.seeds:
        for v in args.variants:
            rows.append(run(v, seed, args.steps, args.extra))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    out = LOGS_DIR / "rams_trans" / "study.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "table": text}, indent=1))


if __name__ == "__main__":
    main()
