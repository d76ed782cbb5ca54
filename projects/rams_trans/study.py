"""The README's toy study: ViT baseline (1 scale) vs RAMS-Trans (2 scales), from the pretrained toy ViT and from
scratch, over seeds at the same step budget, with the DPPM mechanism measured on every RAMS-Trans run.

    python -m projects.rams_trans.study [--seeds 0 1 2] [--steps 600] [--inits pretrained scratch] [-- overrides]

Each run is the normal CLI on ``configs/toy.yaml`` (``--model.net.num_scales 1`` for the baseline; ``scratch`` is
the earlier from-scratch setting: random init, AdamW 1e-3, weight decay 0.05), one at a time; final validation
top-1 comes from its ``summary.json``, the part coverage of the scale-1 DPPM box from ``mechanism.py`` on its
``last.ckpt``. Prints a markdown table (mean ± std over seeds) and writes it with every run's numbers to
``projects/rams_trans/results/study.json`` (what ``make claims`` reads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from projects.rams_trans.mechanism import measure_checkpoint
from shared.stats import cell
from shared.study import run_fit, write_results

CONFIG = "projects/rams_trans/configs/toy.yaml"
VARIANTS = {"vit": ["--model.net.num_scales", "1", "--model.net.eta", "[]"], "rams": []}
INITS = {"pretrained": [],
         "scratch": ["--model.net.pretrained", "false", "--model.optim.name", "adamw", "--model.optim.lr", "0.001",
                     "--model.optim.weight_decay", "0.05"]}
HEADS = ("global", "local", "fused")
MECHANISM = ("part_in_box", "centre_in_box", "box_area")


def run(init: str, variant: str, seed: int, steps: int, extra: list[str]) -> dict:
    name = f"study_{init}_{variant}_s{seed}"
    s = run_fit("rams_trans", CONFIG, name, seed, ["--trainer.max_steps", str(steps), "--trainer.val_check_interval",
                                                    str(steps), *INITS[init], *VARIANTS[variant], *extra])
    row = {"init": init, "variant": variant, "seed": seed, "steps": s["global_step"], "wall_s": s["wall_s"],
           **{h: s["metrics"][f"val/{h}_top1"] for h in HEADS}}
    if variant == "rams":
        row.update(measure_checkpoint(Path(s["run_dir"]) / "checkpoints" / "last.ckpt"))
    return row


def table(rows: list[dict]) -> str:
    out = ["| init | model | prediction | top-1 % | DPPM box holds the part % | part centre in box % | "
           "box area % | seeds |", "|---|---|---|---|---|---|---|---|"]
    for init in INITS:
        for variant, heads in (("vit", ("global",)), ("rams", HEADS)):
            rs = [r for r in rows if r["init"] == init and r["variant"] == variant]
            if not rs:
                continue
            mech = [cell([r[k] for r in rs], 100) if variant == "rams" else "-" for k in MECHANISM]
            for h in heads:
                name = "ViT baseline (1 scale)" if variant == "vit" else "RAMS-Trans (2 scales)"
                pred = "CLS" if variant == "vit" else h
                out.append(f"| {init} | {name} | {pred} | {cell([r[h] for r in rs], 100)} | {' | '.join(mech)} | "
                           f"{len(rs)} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS))
    p.add_argument("extra", nargs="*", help="extra CLI overrides after --")
    args = p.parse_args()
    rows = []
    for init in args.inits:
        for seed in args.seeds:
            for v in args.variants:
                rows.append(run(init, v, seed, args.steps, args.extra))
                print(rows[-1], flush=True)
    text = table(rows)
    print(text)
    write_results("rams_trans", "study", {"command": " ".join(["python -m projects.rams_trans.study", *sys.argv[1:]]),
                                          "rows": rows, "table": text, "claim": claim(rows)})


def claim(rows: list[dict]) -> dict:
    """The ``claim`` block ``make claims`` renders (shared/claims.py): series in top-1 %, DPPM mechanism in %."""
    def values(init: str, variant: str, key: str) -> list[float]:
        return [100 * r[key] for r in rows if r["init"] == init and r["variant"] == variant]

    inits = [i for i in INITS if values(i, "rams", "local")]
    series = {}
    for init in inits:
        series[f"ViT ({init})"] = values(init, "vit", "global")
        series.update({f"RAMS {h} ({init})": values(init, "rams", h) for h in HEADS})
    mechanism = {}
    for init in inits:
        mechanism[f"DPPM box holds the part ({init})"] = {"values": values(init, "rams", "part_in_box"),
                                                          "unit": "% of test images", "aim": 80}
        mechanism[f"DPPM box area ({init})"] = {"values": values(init, "rams", "box_area"), "unit": "% of image"}
    head = inits[0]
    return {"paper": "RAMS-Trans (Hu et al., ACM MM 2021)",
            "statement": "Cropping and amplifying the region the ViT's own attention selects (DPPM) improves "
                         "fine-grained top-1 over the plain ViT.",
            "unit": "top-1 %", "series": {k: v for k, v in series.items() if v},
            # the paper reports the local (amplified) prediction (README, flag `report`)
            "comparisons": [{"method": f"RAMS local ({head})", "baseline": f"ViT ({head})"}],
            "mechanism": mechanism}


if __name__ == "__main__":
    main()
