"""The README's toy study: each unimodal expert alone vs their uniform ensemble vs DRDF, over seeds.

``python -m projects.drdf.study [--seeds 0 1 2] [--configs toy_single_text toy_single_image toy_ensemble toy]
[-- extra CLI args]`` (e.g. ``-- --model.loss.lambda_aux 0.5`` or ``-- --model.net.mwf.gate sigmoid``).
Each run is ``python -m projects.drdf fit --config projects/drdf/configs/<config>.yaml --seed_everything <s>``
(CSV logger, 1 CPU thread); the numbers are the last epoch's dev_seen metrics (no
checkpoint selection, so dev_seen is a held-out set here). Runs go one at a time. Writes
``logs/drdf/study.json`` as it goes, then ``projects/drdf/results/study.json`` (rows, table and the claim
block ``make claims`` renders) and prints a markdown table of mean ± std. Other configs or extra arguments (the
controls ``toy_late_fusion``, ``toy_concat_bert``; ``-- --model.loss.lambda_aux 0.5``) leave the committed file as it
is: their rows stay in ``logs/drdf/study.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from shared.expected import Expectation
from shared.stats import cell
from shared.study import committed, write_results

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIGS = ["toy_single_text", "toy_single_image", "toy_ensemble", "toy"]
PERCENT = ("val/acc", "val/auroc", "val/acc_text_decided", "val/acc_image_decided")
SCORES = ("val/a_t_auroc_text_decided", "val/w_text_auroc_text_decided")
COLUMNS = {"val/acc": "dev acc (%)", "val/auroc": "dev AUROC (%)", "val/acc_text_decided": "acc, text-decided (%)",
           "val/acc_image_decided": "acc, image-decided (%)",
           "val/a_t_auroc_text_decided": "AUROC of a_t (text- vs image-decided)",
           "val/w_text_auroc_text_decided": "AUROC of the text expert's weight"}


def specialised(metrics: dict, image_experts: tuple[int, ...] = (1, 2)) -> bool | None:
    """Did the routing send colour memes and shape memes to *different* image experts (largest mean weight)?"""
    try:
        top = [max(image_experts, key=lambda k: metrics[f"val/w{k}_{aspect}"]) for aspect in ("colour", "shape")]
    except KeyError:
        return None
    return top[0] != top[1]


def run(config: str, seed: int, logs: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "projects.drdf", "fit", "--config", f"projects/drdf/configs/{config}.yaml",
           "--seed_everything", str(seed), "--run_name", f"study_{config}_s{seed}", "--logger", "csv", *extra]
    env = {**os.environ, "CV_PAPERS_LOGS": str(logs), "PROGRESS_REFRESH": "0", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((logs / "drdf" / f"study_{config}_s{seed}" / "summary.json").read_text())["metrics"]
    weights = {k: round(v, 3) for k, v in metrics.items() if k.startswith("val/w") and k[5:6].isdigit()}
    return {"config": config, "seed": seed, "wall_s": round(time.perf_counter() - start, 1),
            **{m: metrics.get(m) for m in (*PERCENT, *SCORES)}, "specialised": specialised(metrics),
            "weights": weights}


def table(results: list[dict], configs: list[str]) -> str:
    cols = [*PERCENT, *SCORES]
    lines = ["| config | " + " | ".join(COLUMNS[c] for c in cols) + " | colour / shape to different experts | runs |",
             "|---|" + "---|" * (len(cols) + 2)]
    for c in configs:
        rs = [r for r in results if r["config"] == c]
        cells = [cell([r[m] for r in rs if r[m] is not None], 100 if m in PERCENT else 1, 2 if m in PERCENT else 3)
                 for m in cols]
        spec = [r["specialised"] for r in rs if r["specialised"] is not None]
        cells.append(f"{sum(spec)} of {len(spec)}" if spec else "-")
        lines.append(f"| {c} | {' | '.join(cells)} | {len(rs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--logs", default=str(REPO / "logs"))
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="extra CLI overrides after --")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    logs = Path(args.logs)
    out = logs / "drdf" / "study.json"
    results = []
    for seed in args.seeds:
        for config in args.configs:
            results.append(run(config, seed, logs, extra))
            print(json.dumps(results[-1]), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
    text = table(results, args.configs)
    print(text)
    if extra or args.configs != DEFAULT_CONFIGS:      # the committed file keeps the rows of the claim
        print(f"other configs or arguments than the study's: the rows stay in {out}, results/study.json is unchanged")
        return
    write_results("drdf", "study", {"command": " ".join(["python -m projects.drdf.study", *(argv or sys.argv[1:])]),
                                    "rows": results, "table": text, "claim": claim(results)})


def claim(results: list[dict]) -> dict:
    """The ``claim`` block ``make claims`` renders (shared/claims.py): dev accuracy %, routing mechanism."""
    def values(config: str, key: str, scale: float = 100) -> list[float]:
        return [scale * r[key] for r in results if r["config"] == config and r[key] is not None]

    names = {"toy_single_text": "text expert alone", "toy_single_image": "image expert alone",
             "toy_ensemble": "uniform ensemble", "toy": "DRDF"}
    series = {name: values(config, "val/acc") for config, name in names.items() if values(config, "val/acc")}
    return {"paper": "DRDF (arXiv 2107.09909)",
            "statement": "Weighing the experts per sample with a text + image router (and the MWF layer) beats a "
                         "uniform ensemble of the same experts and each expert alone.",
            "unit": "dev accuracy %", "series": series,
            "comparisons": [{"method": "DRDF", "baseline": b}   # the control with the same experts first
                            for b in ("uniform ensemble", "text expert alone", "image expert alone") if b in series],
            "mechanism": {"router's a_t separates text- from image-decided memes": {
                "values": values("toy", "val/a_t_auroc_text_decided"), "unit": "AUROC x 100"},
                "text expert's weight separates them": {"values": values("toy", "val/w_text_auroc_text_decided"),
                                                         "unit": "AUROC x 100"}}}



def toy_expectation() -> Expectation | None:
    """``configs/toy.yaml`` at seed s is this study's ``toy`` row (the same command); dev accuracy beside the
    uniform ensemble of the same experts (``toy_ensemble``)."""
    result = committed("drdf", "study")
    if result is None:
        return None
    def pick(config: str) -> dict[int, float]:
        return {r["seed"]: 100 * r["val/acc"] for r in result["rows"] if r["config"] == config}
    return Expectation("dev accuracy", "%", True, pick("toy"), "uniform ensemble",
                       list(pick("toy_ensemble").values()), f"results/study.json ({result['command']})",
                       lambda m: 100 * m["val/acc"], cpu_threads=1)


if __name__ == "__main__":
    main()
