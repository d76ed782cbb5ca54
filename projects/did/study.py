"""Toy study: ViT baseline, compute-matched ViT baseline and DiD, from pretrained and from scratch, over seeds.

``python -m projects.did.study [--seeds 0 1 2] [--inits pretrained scratch] [--variants baseline
baseline_matched did did_relu] [--config projects/did/configs/toy.yaml] [ARGS...]`` runs ``fit`` through the CLI
for every (seed, init, variant) (CSV logger, run folders ``logs/did/<study>_<init>_<variant>_s<seed>``), measures
the discovery mechanism on each run's ``last.ckpt`` (``projects.did.mechanism``), prints a markdown table (mean +-
std over seeds) and writes it with the per-run rows and the command to ``projects/did/results/<study>.json``
(keeping the committed rows this run did not redo, e.g. another init's):
``study`` for ``configs/toy.yaml``, ``study_grid16`` for ``configs/toy_grid16.yaml`` (the same images through 4 px
patches, a 16x16 grid). Extra arguments go to every run (e.g. ``--trainer.max_steps 400``).

* ``baseline``: ``--model.net.local_views false``, the config's steps.
* ``baseline_matched``: the baseline with (1 + N) x the steps and the validation interval (N = ``model.net.top_n``):
  DiD's backbone sees 1 + N images per sample and step. The LR schedule follows, since ``DiDModule`` sizes it
  from ``trainer.estimated_stepping_batches`` = ``max_steps`` (no ``max_epochs`` in the toy config).
* ``did``: the config as it is.
* ``did_relu``: the pre-registered ablation, ``--model.net.class_map_activation relu`` (the class maps rectified
  before the product with the rollout; the official code multiplies the raw maps). By default it runs at the
  16x16 grid, from the pretrained ViT.
* init ``pretrained``: the config's ``model.net.pretrained``; ``scratch``: ``--model.net.pretrained false``.

The mechanism figures are measured for the baselines too: their boxes are what discovery would pick from their
own maps (see ``projects.did.mechanism``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import yaml

from projects.did.mechanism import measure_checkpoint
from shared.cli import REPO_ROOT
from shared.expected import Expectation
from shared.stats import cell
from shared.study import committed, keep_committed_rows, run_fit, with_option, write_results

VARIANTS = ("baseline", "baseline_matched", "did", "did_relu")
INITS = ("pretrained", "scratch")
BRANCHES = ("global", "local", "fused")
KEPT_METRICS = ("mAP", "CF1", "OF1")
MECHANISM = ("instance_hit", "instance_hit_same_class", "absent_box_frac", "box_area")
LABELS = {"baseline": "ViT baseline", "baseline_matched": "ViT baseline, (1+N)x steps", "did": "DiD",
          "did_relu": "DiD, class maps rectified"}


def arg_value(args: list[str], *keys: str) -> str | None:
    """The last value given to any of ``keys`` in ``args`` (``--key v`` or ``--key=v``), else None."""
    value = None
    for i, a in enumerate(args):
        if a in keys and i + 1 < len(args):
            value = args[i + 1]
        elif a.split("=", 1)[0] in keys and "=" in a:
            value = a.split("=", 1)[1]
    return value


def effective(config: dict, extra: list[str], dotted: str, default=None):
    """``dotted`` (e.g. ``trainer.max_steps``) as the run will see it: the extra arguments, else the config.

    A model argument ``model.net.<arg>`` lives under ``model.net.init_args`` in the config file; on the command
    line both ``--model.net.<arg>`` and ``--model.net.init_args.<arg>`` set it."""
    path = dotted.split(".")
    if path[:2] == ["model", "net"]:
        path = ["model", "net", "init_args", *path[2:]]
    given = arg_value(extra, f"--{dotted}", "--" + ".".join(path))
    if given is not None:
        return yaml.safe_load(given)
    node = config
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return default if node is None else node


def step_factor(config: dict, extra: list[str]) -> int:
    """1 + N: the images DiD's backbone sees per sample and step (N = ``model.net.top_n``, default 4)."""
    return 1 + int(effective(config, extra, "model.net.top_n", 4))


def run_overrides(init: str, variant: str, config: dict, extra: list[str]) -> list[str]:
    """The arguments of one run after the config: ``extra`` first, then the init's and the variant's (they win)."""
    args = list(extra)
    if init == "scratch":
        args += ["--model.net.pretrained", "false"]
    if variant in ("baseline", "baseline_matched"):
        args += ["--model.net.local_views", "false"]
    if variant == "did_relu":
        args += ["--model.net.class_map_activation", "relu"]
    if variant == "baseline_matched":
        k = step_factor(config, extra)
        steps = effective(config, extra, "trainer.max_steps")
        if not isinstance(steps, int) or steps <= 0:
            raise ValueError(f"baseline_matched scales trainer.max_steps, which is {steps!r} in the config")
        args += ["--trainer.max_steps", str(k * steps)]
        interval = effective(config, extra, "trainer.val_check_interval")
        if isinstance(interval, int) and not isinstance(interval, bool):   # a float is a fraction of an epoch
            args += ["--trainer.val_check_interval", str(k * interval)]
    return args


def study_name(config_path: str) -> str:
    """``study`` for ``toy.yaml``, ``study_<suffix>`` for ``toy_<suffix>.yaml`` (the result file and run names)."""
    stem = Path(config_path).stem
    return "study" + stem.removeprefix("toy")


def setting(config: dict, extra: list[str]) -> str:
    """The geometry a config runs at, e.g. ``8x8 grid (64 px, patch 8)``."""
    size, patch = effective(config, extra, "data.img_size"), effective(config, extra, "model.net.patch_size")
    return f"{size // patch}x{size // patch} grid ({size} px, patch {patch})"


def run_row(config_path: str, config: dict, init: str, variant: str, seed: int, extra: list[str]) -> dict:
    """One fit + the mechanism figures of its last checkpoint, as a compact result row."""
    name = f"{study_name(config_path)}_{init}_{variant}_s{seed}"
    summary = run_fit("did", config_path, name, seed, run_overrides(init, variant, config, extra))
    metrics = summary["metrics"]
    row = {"init": init, "variant": variant, "seed": seed, "run": name, "global_step": summary["global_step"],
           "wall_s": summary["wall_s"]}
    row.update({f"{b}/{m}": metrics[f"val/{b}/{m}"] for b in BRANCHES for m in KEPT_METRICS
                if f"val/{b}/{m}" in metrics})
    row["mechanism"] = measure_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "last.ckpt")
    return row


def table(rows: list[dict]) -> str:
    """Markdown: one line per (init, variant), mean +- std over seeds; mechanism figures in percent."""
    head = ["init", "model", "steps", *(f"{b} mAP" for b in BRANCHES), "instance hit %", "same-class hit %",
            "absent-class boxes %", "box area %", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for init in INITS:
        for variant in VARIANTS:
            group = [r for r in rows if r["init"] == init and r["variant"] == variant]
            if not group:
                continue
            steps = sorted({r["global_step"] for r in group})
            cells = [init, LABELS[variant], "/".join(map(str, steps))]
            cells += [cell([r[f"{b}/mAP"] for r in group if f"{b}/mAP" in r]) for b in BRANCHES]
            cells += [cell([r["mechanism"][k] for r in group], scale=100) for k in MECHANISM]
            lines.append("| " + " | ".join([*cells, str(len(group))]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default="projects/did/configs/toy.yaml")
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                        help="default: baseline, baseline_matched, did; and did_relu from pretrained at 16x16")
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    args, extra = parser.parse_known_args(argv)
    config_file = Path(args.config) if Path(args.config).exists() else REPO_ROOT / args.config
    config = yaml.safe_load(config_file.read_text()) or {}
    pretrained = effective(config, extra, "model.net.pretrained", False)
    if "pretrained" in args.inits and not pretrained:
        print(f"note: {args.config} has model.net.pretrained={pretrained!r}: the 'pretrained' runs start from scratch",
              flush=True)
    grid16 = setting(config, extra).startswith("16x16")
    rows = []
    for seed in args.seeds:
        for init in args.inits:
            for variant in args.variants or [*VARIANTS[:3], *(["did_relu"] if grid16 and init == "pretrained" else [])]:
                rows.append(run_row(args.config, config, init, variant, seed, extra))
                print(json.dumps(rows[-1]), flush=True)
    rows = keep_committed_rows("did", study_name(args.config), rows)
    text = table(rows)
    print(text)
    inits = [i for i in INITS if any(r["init"] == i for r in rows)]
    write_results("did", study_name(args.config), {
        "command": shlex.join(["python", "-m", "projects.did.study", *with_option(argv, "--inits", inits, INITS)]),
        "config": args.config, "seeds": sorted({r["seed"] for r in rows}), "inits": inits,
        "variants": sorted({r["variant"] for r in rows}),
        "extra_args": extra, "pretrained": pretrained, "step_factor": step_factor(config, extra), "table": text,
        "rows": rows, "claim": claim(rows, setting(config, extra))})


def claim(rows: list[dict], setting: str = "8x8 grid (64 px, patch 8)") -> dict:
    """The ``claim`` block ``make claims`` renders (shared/claims.py): mAP series, discovery mechanism in %."""
    def values(init: str, variant: str, key: str) -> list[float]:
        return [r[key] if key in r else 100 * r["mechanism"][key] for r in rows
                if r["init"] == init and r["variant"] == variant]

    inits = [i for i in INITS if values(i, "did", "fused/mAP")]
    series, mechanism = {}, {}
    for init in inits:
        series[f"ViT ({init})"] = values(init, "baseline", "global/mAP")
        series[f"ViT, (1+N)x steps ({init})"] = values(init, "baseline_matched", "global/mAP")
        series.update({f"DiD {b} ({init})": values(init, "did", f"{b}/mAP") for b in BRANCHES})
        mechanism[f"instances hit, IoU >= 0.5 ({init})"] = {"values": values(init, "did", "instance_hit"),
                                                            "unit": "% of instances", "aim": 50}
        mechanism[f"boxes on absent classes ({init})"] = {"values": values(init, "did", "absent_box_frac"),
                                                          "unit": "% of boxes"}
        if values(init, "did_relu", "fused/mAP"):               # the pre-registered ablation (16x16 grid)
            series[f"DiD fused, class maps rectified ({init})"] = values(init, "did_relu", "fused/mAP")
            mechanism[f"instances hit, class maps rectified ({init})"] = {
                "values": values(init, "did_relu", "instance_hit"), "unit": "% of instances", "aim": 50}
    head = inits[0]
    return {"paper": "DiD (Hu et al., ICME 2022)", "setting": setting,
            "statement": "Discovering instances from the ViT's own attention and classifying local views of them "
                         "improves multi-label mAP over the ViT baseline, also at matched compute.",
            "unit": "mAP %", "series": {k: v for k, v in series.items() if v},
            "comparisons": [{"method": f"DiD fused ({head})", "baseline": b}
                            for b in (f"ViT ({head})", f"ViT, (1+N)x steps ({head})") if series.get(b)],
            "mechanism": mechanism,
            "note": "Boxes on absent classes cannot go below the share forced by images with fewer than N classes: "
                    f"{statistics.mean(values(head, 'did', 'absent_box_floor')):.1f} % here."}


def toy_expectation() -> Expectation | None:
    """``configs/toy.yaml`` at seed s is this study's pretrained DiD row at the 8x8 grid (the config as it is);
    the fused mAP beside the ViT baseline's (its matched-compute row is in the README)."""
    result = committed("did", "study")
    if result is None:
        return None
    def pick(variant: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in result["rows"] if r["init"] == "pretrained" and r["variant"] == variant}
    return Expectation("fused mAP", "%", True, pick("did", "fused/mAP"), "ViT",
                       list(pick("baseline", "global/mAP").values()), f"results/study.json ({result['command']})",
                       lambda m: m["val/fused/mAP"], cpu_threads=1)


if __name__ == "__main__":
    main()
