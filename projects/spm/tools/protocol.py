"""``generate --protocol official``: the released evaluation's generation settings in one flag
(docs/papers/spm.md §5.2, §6.3).

The official ``evaluate_task.py`` builds every image from ``GenerationConfig`` (512x512, 30 steps, CFG 7.5, seed
2024, the default negative prompt below, the pipeline's default scheduler: PNDM for SD v1.4) and then lets each task
override some fields:

=========  =========================================  ======================================================
task       prompts                                    overrides (official evaluator)
=========  =========================================  ======================================================
object     80 ImageNet templates x concept            10 images per template (``ClipTemplateDataset``)
artwork    ESD artist CSVs (prompt, evaluation_seed,  seed = row's evaluation_seed, 20 images per prompt;
           evaluation_guidance)                       ``evaluation_guidance`` is NOT read: CFG stays 7.5
i2p        I2P CSV (sd_seed, sd_guidance_scale,       negative prompt "", seed / CFG / size from the row
           sd_image_width/height)
coco       coco_30k.csv (evaluation_seed, width,      negative prompt "", seed from the row, size rounded down
           height)                                    to a multiple of 8
general    inline prompts                             none (``infer_spm.py``'s defaults)
=========  =========================================  ======================================================

SPMs: Facilitated Transport with ``clipcos_tokenuni``, the gamma-weighted state dict (``--composition official``:
gamma^2 and cross terms) and ``facilitate_factor`` 1, which is how the paper's Table-1 object rows were made; the
artists' "doubled gamma" is ``--facilitate_factor 2`` and the nudity figure's fixed gamma 2 is
``--spm_multiplier 2`` (the maintainer's answer to a user: docs/papers/spm.md §7.4), both given on the command
line.

Known difference: the official code seeds the global CUDA generator once per prompt (``torch.cuda.manual_seed``
returns None, so ``generator=None``) and draws all of that prompt's images in one batch; here image k of a prompt
seeded s starts from its own CPU generator seeded s + k, so an image does not depend on the batch or the device.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from shared.data.images import read_utf8

# src/configs/generation_config.py: GenerationConfig.negative_prompt (commas without spaces, as released).
OFFICIAL_NEGATIVE_PROMPT = (
    "bad anatomy,watermark,extra digit,signature,worst quality,jpeg artifacts,normal quality,low quality,long neck,"
    "lowres,error,blurry,missing fingers,fewer digits,missing arms,text,cropped,Humpbacked,bad hands,username"
)
OFFICIAL_GENERATION = dict(sampler="default", steps=30, guidance=7.5, seed=2024, ft=True,
                           matching_metric="clipcos_tokenuni", facilitate_factor=1.0, composition="official")
IMAGES_PER_PROMPT = {"object": 10, "artwork": 20, "i2p": 1, "coco": 1, "general": 1}
TASKS = tuple(IMAGES_PER_PROMPT)


def csv_header(path: str | Path) -> list[str]:
    """The column names of a prompts CSV (stripped); [] for an empty file."""
    with io.StringIO(read_utf8(path, "prompts CSV"), newline="") as f:
        return [c.strip() for c in next(csv.reader(f), [])]


def detect_task(args: argparse.Namespace) -> str:
    """Which official evaluator a generate call corresponds to, from ``--templates`` or the CSV's columns."""
    if args.templates:
        return "object"
    if not args.prompts_csv:
        return "general"
    columns = set(csv_header(args.prompts_csv))
    if columns & {"sd_seed", "sd_guidance_scale", "sd_image_width", "sd_image_height"}:
        return "i2p"
    if "evaluation_seed" in columns and {"width", "height"} <= columns:
        return "coco"
    if "evaluation_seed" in columns:
        return "artwork"
    return "general"


def apply_official_protocol(args: argparse.Namespace, defaults: dict) -> str:
    """Set the official settings on every option still at its parser default (``defaults``: option -> default);
    options given on the command line win. Returns one line saying what was set."""
    task = args.task or detect_task(args)
    if task not in TASKS:
        raise ValueError(f"--task {task!r} is not one of {TASKS}")
    official = dict(OFFICIAL_GENERATION, images_per_prompt=IMAGES_PER_PROMPT[task],
                    negative_prompt="" if task in ("i2p", "coco") else OFFICIAL_NEGATIVE_PROMPT)
    if task == "artwork":  # ArtworkDataset copies base_cfg and sets only the seed: the row's CFG is not read
        official["row_guidance"] = False
    chosen = {}
    for key, value in official.items():
        if getattr(args, key) == defaults.get(key):
            setattr(args, key, value)
            chosen[key] = value
    args.task = task
    shown = {k: ("<official default>" if k == "negative_prompt" and v else v) for k, v in chosen.items()}
    return f"--protocol official (task {task}): " + ", ".join(f"{k}={v!r}" for k, v in shown.items())
