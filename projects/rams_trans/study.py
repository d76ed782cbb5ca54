"""The README's toy study: ViT baseline (1 scale) vs RAMS-Trans (2 scales), from the pretrained toy ViT and from
scratch, over seeds at the same step budget, with the DPPM mechanism measured on every RAMS-Trans run.

    python -m projects.rams_trans.study [--grid 8|16] [--seeds 0 1 2] [--steps 600] [--inits pretrained scratch]

Each run is the normal CLI on ``configs/toy.yaml`` (``--grid 16``: ``configs/toy_grid16.yaml``, the same images
through 4 px patches) with ``--model.net.num_scales 1`` for the baseline; ``scratch`` is the from-scratch setting
(random init, AdamW 1e-3, weight decay 0.05), one run at a time; final validation top-1 comes from its
``summary.json``, the part coverage of the scale-1 DPPM box from ``mechanism.py`` on its ``last.ckpt``. Prints a
markdown table (mean ± std over seeds) and writes it with every run's numbers to
``projects/rams_trans/results/study.json`` (``study_grid16.json``), what ``make claims`` reads; the committed
rows this run did not redo (another init, say) are kept.

At the 16x16 grid the pre-registered ablation ``rams_cls_row`` (``patch_score: cls_row``: the CLS row of the
rollout instead of its column mean) runs too, from the pretrained ViT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from projects.rams_trans.mechanism import measure_checkpoint
from shared.expected import Expectation
from shared.stats import cell
from shared.study import committed, keep_committed_rows, run_fit, with_option, write_results

GRIDS = {8: ("projects/rams_trans/configs/toy.yaml", "study", "8x8 grid (64 px, patch 8)"),
         16: ("projects/rams_trans/configs/toy_grid16.yaml", "study_grid16", "16x16 grid (64 px, patch 4)")}
VARIANTS = {"vit": ["--model.net.num_scales", "1", "--model.net.eta", "[]"], "rams": [],
            "rams_cls_row": ["--model.net.patch_score", "cls_row"]}
NAMES = {"vit": "ViT baseline (1 scale)", "rams": "RAMS-Trans (2 scales)",
         "rams_cls_row": "RAMS-Trans, patch_score cls_row"}
INITS = {"pretrained": [],
         "scratch": ["--model.net.pretrained", "false", "--model.optim.name", "adamw", "--model.optim.lr", "0.001",
                     "--model.optim.weight_decay", "0.05"]}
HEADS = ("global", "local", "fused")
MECHANISM = ("part_in_box", "centre_in_box", "box_area")


def run(grid: int, init: str, variant: str, seed: int, steps: int, extra: list[str]) -> dict:
    config, study, _ = GRIDS[grid]
    name = f"{study}_{init}_{variant}_s{seed}"
    s = run_fit("rams_trans", config, name, seed, ["--trainer.max_steps", str(steps), "--trainer.val_check_interval",
                                                    str(steps), *INITS[init], *VARIANTS[variant], *extra])
    row = {"init": init, "variant": variant, "seed": seed, "steps": s["global_step"], "wall_s": s["wall_s"],
           **{h: s["metrics"][f"val/{h}_top1"] for h in HEADS}}
    if variant != "vit":
        row.update(measure_checkpoint(Path(s["run_dir"]) / "checkpoints" / "last.ckpt"))
    return row


def table(rows: list[dict]) -> str:
    out = ["| init | model | prediction | top-1 % | DPPM box holds the part % | part centre in box % | "
           "box area % | seeds |", "|---|---|---|---|---|---|---|---|"]
    for init in INITS:
        for variant in VARIANTS:
            rs = [r for r in rows if r["init"] == init and r["variant"] == variant]
            if not rs:
                continue
            mech = [cell([r[k] for r in rs], 100) if variant != "vit" else "-" for k in MECHANISM]
            for h in ("global",) if variant == "vit" else HEADS:
                pred = "CLS" if variant == "vit" else h
                out.append(f"| {init} | {NAMES[variant]} | {pred} | {cell([r[h] for r in rs], 100)} | "
                           f"{' | '.join(mech)} | {len(rs)} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=8, choices=list(GRIDS), help="patch grid of the 64 px toy input")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default: vit and rams, and rams_cls_row (pretrained) at the 16x16 grid")
    p.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS))
    p.add_argument("extra", nargs="*", help="extra CLI overrides after --")
    args = p.parse_args()
    rows = []
    for init in args.inits:
        for seed in args.seeds:
            for v in args.variants or default_variants(args.grid, init):
                rows.append(run(args.grid, init, v, seed, args.steps, args.extra))
                print(rows[-1], flush=True)
    _, study, setting = GRIDS[args.grid]
    rows = keep_committed_rows("rams_trans", study, rows)
    text = table(rows)
    print(text)
    inits = [i for i in INITS if any(r["init"] == i for r in rows)]
    argv = with_option(sys.argv[1:], "--inits", inits, list(INITS))
    write_results("rams_trans", study, {"command": " ".join(["python -m projects.rams_trans.study", *argv]),
                                        "rows": rows, "table": text, "claim": claim(rows, setting)})


def default_variants(grid: int, init: str) -> list[str]:
    return ["vit", "rams", "rams_cls_row"] if grid == 16 and init == "pretrained" else ["vit", "rams"]


def claim(rows: list[dict], setting: str = GRIDS[8][2]) -> dict:
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
        if values(init, "rams_cls_row", "local"):          # the pre-registered ablation (16x16 grid)
            series[f"RAMS local, cls_row ({init})"] = values(init, "rams_cls_row", "local")
            mechanism[f"DPPM box holds the part, cls_row ({init})"] = {
                "values": values(init, "rams_cls_row", "part_in_box"), "unit": "% of test images", "aim": 80}
    head = inits[0]
    return {"paper": "RAMS-Trans (Hu et al., ACM MM 2021)", "setting": setting,
            "statement": "Cropping and amplifying the region the ViT's own attention selects (DPPM) improves "
                         "fine-grained top-1 over the plain ViT.",
            "unit": "top-1 %", "series": {k: v for k, v in series.items() if v},
            # the paper reports the local (amplified) prediction (README, flag `report`)
            "comparisons": [{"method": f"RAMS local ({head})", "baseline": f"ViT ({head})"}],
            "mechanism": mechanism}


def toy_expectation() -> Expectation | None:
    """``configs/toy.yaml`` at seed s is this study's pretrained RAMS-Trans row at the 8x8 grid (the same
    arguments); its reported head is the local one (``model.report``), beside the ViT row."""
    result = committed("rams_trans", "study")
    if result is None:
        return None
    def pick(variant: str, head: str) -> dict[int, float]:
        return {r["seed"]: 100 * r[head] for r in result["rows"]
                if r["init"] == "pretrained" and r["variant"] == variant}
    return Expectation("local top-1", "%", True, pick("rams", "local"), "ViT (1 scale)",
                       list(pick("vit", "global").values()), f"results/study.json ({result['command']})",
                       lambda m: 100 * m["val/local_top1"])


if __name__ == "__main__":
    main()
