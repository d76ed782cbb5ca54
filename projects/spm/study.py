"""The README's toy experiments on the committed toy model, one step at a time (each is resumable: done runs are kept).

    python -m projects.spm.study anchoring   # erase "circle" with anchoring none / official / paper (issue part 1)
    python -m projects.spm.study compose     # 1, 2, 3 SPMs at once; FT on/off; linear vs official composition
    python -m projects.spm.study transfer    # the SPMs on a "derived" toy model (hue-shifted fine-tune), no retraining

Training runs are the normal CLI on ``configs/toy.yaml``; generation and judging are ``python -m projects.spm
generate`` / ``evaluate`` (toy classifier, FID on its features). Everything lands in ``logs/spm/study/``, and each
step prints a markdown table and writes it, with the raw numbers, to ``logs/spm/study/<step>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from projects.spm.data import TOY_COLORS, TOY_SHAPES, toy_caption
from shared.cli import LOGS_DIR

TOY_MODEL = Path(__file__).resolve().parent / "toy_model"
CLASSIFIER = TOY_MODEL / "classifier.safetensors"
STUDY = LOGS_DIR / "spm" / "study"
CONCEPTS = ("circle", "star", "triangle")  # erased cumulatively: 1, 2, 3 SPMs
SEEDS = [str(s) for s in range(10)]         # 36 prompts x 10 seeds = 360 images per setting
PROMPTS = [toy_caption(s, c) for s in TOY_SHAPES for c in TOY_COLORS]


def train_spm(concept: str, anchoring: str = "paper", tag: str = "", overrides: tuple[str, ...] = ()) -> dict:
    """One toy SPM through the CLI (skipped when its run folder already holds the file); returns its summary."""
    name = f"study_{concept}_{tag or anchoring}"
    run = LOGS_DIR / "spm" / name
    if not (run / "summary.json").is_file():
        cmd = [sys.executable, "-m", "projects.spm", "fit", "--config", "projects/spm/configs/toy.yaml",
               "--logger", "csv", "--run_name", name, "--model.target", concept, "--model.anchoring", anchoring,
               "--model.spm_name", name, *overrides]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run / "summary.json").read_text())
    summary["spm_file"] = str(run / f"{name}_last.safetensors")
    return summary


def generate(out: Path, base: Path, spms: list[str], *flags: str) -> Path:
    from projects.spm.generate import main as generate_main

    if not (out / "manifest.csv").is_file():
        generate_main(["--base_model", str(base), "--spm", *spms, "--prompts", *PROMPTS, "--seeds", *SEEDS,
                       "--steps", "20", "--guidance", "5", "--batch_size", "360", "--out", str(out),
                       "--logger", "none", *flags])
    return out


def judge(images: Path, reference: Path, concepts: list[str]) -> dict:
    from projects.spm.evaluate import main as evaluate_main

    m = evaluate_main(["--images", str(images), "--reference", str(reference), "--classifier", str(CLASSIFIER),
                       "--concepts", *concepts, "--logger", "none"])["metrics"]
    rates = [m[f"toy/target_rate/{c}"] for c in concepts]
    return {"target_rate": sum(rates) / len(rates), "target_rates": rates, "nontarget_acc": m["toy/nontarget_acc"],
            "nontarget_fid": m.get("fid/reference/nontarget"), "all_fid": m["fid/reference/all"]}


def write(step: str, rows: list[dict], header: str, lines: list[str]) -> None:
    text = "\n".join([header, "|" + "---|" * (header.count("|") - 1), *lines])
    print(text)
    STUDY.mkdir(parents=True, exist_ok=True)
    (STUDY / f"{step}.json").write_text(json.dumps({"rows": rows, "table": text}, indent=1))


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# Part 1 rows: (label, anchoring mode, run tag, CLI overrides of toy.yaml).
BATCH16 = ("--model.batch_size", "16")
LAMBDA3 = ("--model.anchor_strength", "3")
UNIFORM_UNCOND = ("--model.anchor_alpha", "0", "--model.anchor_uncond", "true")
ANCHORING_ROWS = [
    ("none", "none", "none", ()),
    ("official", "official", "official", ()),
    ("paper", "paper", "paper", ()),
    ("paper, lambda 3", "paper", "paper_l3", LAMBDA3),
    ("paper, lambda 3, alpha 0 + \"\" anchor", "paper", "paper_l3_a0u", LAMBDA3 + UNIFORM_UNCOND),
    ("paper, 16 latents/step", "paper", "paper_b16", BATCH16),
    ("paper, lambda 3, 16 latents/step", "paper", "paper_l3_b16", LAMBDA3 + BATCH16),
    ("paper, lambda 3, alpha 0 + \"\" anchor, 16 latents/step", "paper", "paper_l3_a0u_b16",
     LAMBDA3 + UNIFORM_UNCOND + BATCH16),
    ("same, x_t rolled out by the frozen model", "paper", "paper_l3_a0u_b16_frozen",
     LAMBDA3 + UNIFORM_UNCOND + BATCH16 + ("--model.rollout_membrane", "false")),
]


def anchoring() -> None:
    """Part 1: erase "circle" with each anchoring mode and variant; the numbers are the toy.yaml validation
    (50 images per prompt): the bare word "circle", three "a <colour> circle" phrases, five non-target phrases."""
    rows = []
    for label, mode, tag, overrides in ANCHORING_ROWS:
        m = train_spm("circle", mode, tag, overrides)["metrics"]
        m = {k.removeprefix("val/"): v for k, v in m.items() if k.startswith("val/")}
        phrases = [k.split("/", 1)[1] for k in m if k.startswith("target_rate/") and k != "target_rate/circle"]
        row = {"setting": label, **m}
        for suffix in ("_before", ""):
            row[f"phrase_rate{suffix}"] = sum(m[f"target_rate{suffix}/{p}"] for p in phrases) / len(phrases)
        rows.append(row)
    lines = [f"| {r['setting']} | {fmt(r['target_rate_before/circle'])} | {fmt(r['target_rate/circle'])} | "
             f"{fmt(r['phrase_rate_before'])} | {fmt(r['phrase_rate'])} | {fmt(r['nontarget_acc_before'])} | "
             f"{fmt(r['nontarget_acc'])} |" for r in rows]
    write("anchoring", rows, "| setting | \"circle\" rate before | after | \"a <colour> circle\" rate before | after | "
          "non-target acc before | after |", lines)


def compose() -> None:
    """Part 2: SPMs for circle, star, triangle (paper anchoring), applied 1, 2, 3 at a time."""
    spms = [train_spm(c)["spm_file"] for c in CONCEPTS]
    original = generate(STUDY / "gen_original", TOY_MODEL, [])
    rows = []
    for n in (1, 2, 3):
        for ft in (True, False):
            for mode in ("linear", "official"):
                out = STUDY / f"gen_{n}spm_{'ft' if ft else 'noft'}_{mode}"
                flags = ["--composition", mode] + ([] if ft else ["--spm_multiplier", "1"])
                generate(out, TOY_MODEL, spms[:n], *flags)
                rows.append({"spms": n, "ft": ft, "composition": mode, **judge(out, original, list(CONCEPTS[:n]))})
    base = {n: judge(original, original, list(CONCEPTS[:n])) for n in (1, 2, 3)}
    lines = [f"| {r['spms']} ({', '.join(CONCEPTS[:r['spms']])}) | {'on' if r['ft'] else 'off (gamma 1)'} | "
             f"{r['composition']} | {fmt(base[r['spms']]['target_rate'])} | {fmt(r['target_rate'])} | "
             f"{fmt(base[r['spms']]['nontarget_acc'])} | {fmt(r['nontarget_acc'])} | {fmt(r['nontarget_fid'], 2)} |"
             for r in rows]
    write("compose", rows, "| SPMs erased | FT | composition | target rate original | with SPMs | "
          "non-target acc original | with SPMs | non-target FID drift |", lines)


def transfer(hue_shift: float = 30.0, steps: int = 200) -> None:
    """The SPMs trained on the toy base, applied unchanged to a derived model (gammas from its own text encoder)."""
    from projects.spm.toy_base import derive_toy_model

    derived = STUDY / "derived_model"
    if not (derived / "toy_base.json").is_file():
        derive_toy_model(TOY_MODEL, derived, steps=steps, hue_shift=hue_shift)
    spms = [train_spm(c)["spm_file"] for c in CONCEPTS]
    rows = []
    for model, folder in (("toy base", TOY_MODEL), (f"derived (hue +{hue_shift:g} deg, {steps} steps)", derived)):
        tag = "base" if folder == TOY_MODEL else "derived"
        original = generate(STUDY / f"gen_{tag}_original", folder, [])
        for n in (1, 3):
            out = generate(STUDY / f"gen_{tag}_{n}spm_ft_linear", folder, spms[:n])
            rows.append({"model": model, "spms": n, **judge(out, original, list(CONCEPTS[:n])),
                         "original": judge(original, original, list(CONCEPTS[:n]))})
    lines = [f"| {r['model']} | {', '.join(CONCEPTS[:r['spms']])} | {fmt(r['original']['target_rate'])} | "
             f"{fmt(r['target_rate'])} | {fmt(r['original']['nontarget_acc'])} | {fmt(r['nontarget_acc'])} | "
             f"{fmt(r['nontarget_fid'], 2)} |" for r in rows]
    write("transfer", rows, "| model | SPMs erased | target rate without SPMs | with SPMs | non-target acc without | "
          "with | non-target FID drift |", lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("anchoring", "compose", "transfer"))
    args = p.parse_args()
    {"anchoring": anchoring, "compose": compose, "transfer": transfer}[args.step]()


if __name__ == "__main__":
    main()
