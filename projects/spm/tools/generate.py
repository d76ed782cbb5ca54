"""``python -m projects.spm generate``: text-to-image generation with any number of SPMs and Facilitated Transport.

    python -m projects.spm generate --base_model projects/spm/toy_model --spm circle.safetensors red.safetensors \
        --prompts "a red circle" "a blue star" --seeds 0 1 2 --out outputs/gen
    python -m projects.spm generate --base_model DIR --spm snoopy.safetensors --prompts_csv coco_30k.csv --out D

Every sample gets its own gammas (one per SPM, paper Eqs. 10-11 via :mod:`projects.spm.transport`), so a batch of
mixed prompts runs in one pass (:class:`~projects.spm.composition.SPMComposition`). With ``--no-ft`` the gammas are
the fixed ``--spm_multiplier`` values (official ``--spm_multiplier``) and are merged into the UNet weights once.
Sample i's initial noise depends only on its own seed, so an image does not depend on the batch size or on which
rank made it. Writes ``<out>/images/<index>_<slug>_<seed>.png``, ``<out>/manifest.csv`` (file, prompt, seed,
size, guidance, concept, one ``gamma_<spm>`` column per SPM), ``<out>/grid.png`` and ``<out>/generate.json``;
logs the grid to wandb (offline unless logged in; ``--logger none`` skips it) and prints each prompt's gammas.
Several GPUs: ``--devices N`` (Lightning Fabric, DDP) splits the samples across ranks.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import json
import logging
import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.fabric import Fabric
from PIL import Image
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from projects.spm.composition import SPMComposition
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import SAMPLERS, denoise, make_scheduler
from projects.spm.tools.protocol import TASKS, apply_official_protocol
from projects.spm.transport import METRICS, facilitated_gammas
from shared.console import wandb_is_online
from shared.data.images import read_utf8
from shared.errors import run_with_clear_errors

logger = logging.getLogger(__name__)

# The 80 CLIP ImageNet prompt templates (Radford et al. 2021), used by the object protocol (docs/papers/spm.md §5.2:
# 80 templates x 10 images per concept, CLIP score against the bare concept name).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
TEMPLATES = {"imagenet80": IMAGENET_TEMPLATES}

# Column names of the official benchmark CSVs (coco_30k: evaluation_seed/width/height; i2p: sd_seed,
# sd_guidance_scale, sd_image_width/height; artists: evaluation_seed) and ours.
CSV_ALIASES: dict[str, tuple[str, ...]] = {
    "seed": ("evaluation_seed", "sd_seed", "seed"),
    "width": ("width", "sd_image_width"),
    "height": ("height", "sd_image_height"),
    "guidance": ("guidance", "sd_guidance_scale", "evaluation_guidance"),
    "concept": ("concept",),
}
MANIFEST_COLUMNS = ("index", "file", "prompt", "seed", "width", "height", "guidance", "concept")


@dataclass(frozen=True)
class Job:
    """One image to generate."""

    index: int
    prompt: str
    seed: int
    width: int
    height: int
    guidance: float
    concept: str = ""

    @property
    def file(self) -> str:
        return f"images/{self.index:05d}_{slug(self.prompt)}_{self.seed}.png"


def slug(text: str, max_len: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len].strip("_") or "prompt"


# ---------------------------------------------------------------------- prompts -> jobs
def read_prompt_csv(path: str | Path) -> list[dict]:
    """Rows of a prompts CSV as dicts with keys prompt and (when present) seed, width, height, guidance, concept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts CSV {path} does not exist")
    with io.StringIO(read_utf8(path, "prompts CSV"), newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if not columns:
            raise ValueError(f"prompts CSV {path} is empty (expected a header line with a 'prompt' column, then one "
                             "row per prompt)")
        if "prompt" not in columns:
            raise ValueError(f"prompts CSV {path}: no 'prompt' column (columns: {columns}); expected 'prompt' and "
                             f"optionally {', '.join(a for names in CSV_ALIASES.values() for a in names)}")
        found = {key: next((a for a in names if a in columns), None) for key, names in CSV_ALIASES.items()}
        ignored = [c for c in columns if c != "prompt" and c not in found.values()]
        if ignored:
            logger.warning("prompts CSV %s: ignoring column(s) %s (read: %s)", path, ignored,
                           ["prompt", *(c for c in found.values() if c)])
        rows = []
        for raw in reader:
            raw = {(k or "").strip(): v for k, v in raw.items()}
            row = {"prompt": (raw.get("prompt") or "").strip()}
            for key, column in found.items():
                value = (raw.get(column) or "").strip() if column else ""
                if not value:
                    continue
                if key == "concept":
                    row[key] = value
                    continue
                try:
                    row[key] = csv_number(key, value)
                except ValueError as err:
                    raise ValueError(f"prompts CSV {path}, line {reader.line_num}, column {column!r}: {value!r} is "
                                     f"not {err}") from None
            rows.append(row)
    if not rows:
        raise ValueError(f"prompts CSV {path} has a header but no rows (expected one row per prompt)")
    return rows


def csv_number(key: str, value: str) -> int | float:
    """A CSV cell as the number column ``key`` (seed, width, height, guidance) holds; else a ValueError saying
    what was expected. Integral floats ("42.0", as pandas writes a column with gaps) are integers."""
    expected = {"seed": "a seed (an integer from 0 to 2**63 - 1)", "guidance": "a guidance scale (a finite number)"}
    expected = expected.get(key, "a size in pixels (a positive integer)")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(expected) from None
    if key == "guidance" and math.isfinite(number):
        return number
    if key != "guidance" and number.is_integer() and (0 <= number < 2**63 if key == "seed" else number >= 1):
        return int(value) if value.isdigit() else int(number)
    raise ValueError(expected)


def build_jobs(args: argparse.Namespace, native_size: int, multiple: int) -> list[Job]:
    """Expand prompts (inline or CSV rows, optionally templated) x seeds into jobs with their sizes.

    Seeds: a CSV row's own seed s gives s, s+1, ... (``--images_per_prompt``); otherwise ``--seeds`` or
    ``--seed``, ``--seed`` + 1, ... Sizes are rounded down to a multiple of ``multiple`` (the VAE factor).
    """
    if args.prompts_csv:
        rows = read_prompt_csv(args.prompts_csv)
    else:
        rows = [{"prompt": p} for p in args.prompts]
    if args.templates:
        templates = TEMPLATES[args.templates]
        rows = [{**row, "prompt": t.format(row["prompt"]), "concept": row.get("concept", row["prompt"])}
                for row in rows for t in templates]
    jobs = []
    for row in rows:
        width = int(row.get("width", args.width or native_size))
        height = int(row.get("height", args.height or native_size))
        w, h = width // multiple * multiple, height // multiple * multiple
        if w <= 0 or h <= 0:
            raise ValueError(f"image size {width}x{height} (prompt {row['prompt']!r}) is smaller than the model's "
                             f"latent factor {multiple}")
        if "seed" in row:
            seeds = [row["seed"] + k for k in range(args.images_per_prompt)]
        elif args.seeds:
            seeds = list(args.seeds)
        else:
            seeds = [args.seed + k for k in range(args.images_per_prompt)]
        guidance = float(row.get("guidance", args.guidance) if args.row_guidance else args.guidance)
        for s in seeds:
            jobs.append(Job(len(jobs), row["prompt"], int(s), w, h, guidance, row.get("concept", "")))
    return jobs


def make_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Group jobs of equal size (in index order within a size), then cut each group into batches."""
    groups: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.height, job.width), []).append(job)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def initial_noise(shape: tuple[int, ...], seeds: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """x_T for each sample from its own CPU generator (as diffusers pipelines do with a CPU generator), and the
    generators (continued, for stochastic samplers). ``shape`` is one sample's latent shape [1, C, h, w]."""
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return torch.cat([torch.randn(shape, generator=g) for g in gens]), gens


# ---------------------------------------------------------------------- outputs
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> [N, H, W, 3] uint8 (CPU)."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def make_grid(paths: list[Path], columns: int | None = None, min_cell: int = 64):
    """A grid PIL image of the given PNGs (cells of the largest size; small images upscaled, nearest)."""
    images = [Image.open(p).convert("RGB") for p in paths]
    cw, ch = max(im.width for im in images), max(im.height for im in images)
    zoom = max(1, min_cell // max(cw, ch))
    cw, ch = cw * zoom, ch * zoom
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * (cw + 2), rows * (ch + 2)), "white")
    for i, im in enumerate(images):
        if zoom > 1:
            im = im.resize((im.width * zoom, im.height * zoom), Image.NEAREST)
        grid.paste(im, ((i % columns) * (cw + 2), (i // columns) * (ch + 2)))
    return grid


def gamma_columns(spm_paths: list[str]) -> list[str]:
    """``gamma_<file stem>`` per SPM (made unique)."""
    names: list[str] = []
    for path in spm_paths:
        base = f"gamma_{slug(Path(path).stem, 60)}"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def print_gammas(rows: list[dict], columns: list[str], concepts: list[list[str]], limit: int = 50) -> None:
    """Each prompt's gammas: a rich table on a terminal, plain ``gamma`` lines otherwise (logs, pipes)."""
    seen: dict[str, list[str]] = {}
    for row in rows:
        seen.setdefault(row["prompt"], [row[c] for c in columns])
    items = list(seen.items())
    heads = [" | ".join(c) or col for c, col in zip(concepts, columns, strict=True)]
    if sys.stdout.isatty():
        table = Table(title="Facilitated Transport: gamma per prompt and SPM")
        table.add_column("prompt", overflow="fold")
        for head in heads:
            table.add_column(head, justify="right")
        for prompt, values in items[:limit]:
            table.add_row(prompt, *values)
        Console().print(table)
    else:
        for prompt, values in items[:limit]:
            print(f"gamma {prompt!r}: " + ", ".join(f"{h}={v}" for h, v in zip(heads, values, strict=True)))
    if len(items) > limit:
        print(f"... and {len(items) - limit} more prompts (all gammas are in manifest.csv)")


def log_to_wandb(out: Path, grid, rows: list[dict], columns: list[str], config: dict, name: str) -> None:
    import wandb  # slow to import; only runs that log to wandb need it

    run = wandb.init(project="cv-papers-spm", name=name, dir=str(out), job_type="generate", config=config,
                     mode=None if wandb_is_online() else "offline", reinit="finish_previous")
    table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows[:1000]])
    run.log({"generate/grid": wandb.Image(grid), "generate/samples": table})
    run.finish()


# ---------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m projects.spm generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_model", required=True, help="diffusers folder (unet/, text_encoder/, tokenizer/, "
                                                         "scheduler/, optional vae/), or a single-file SD 1.x / "
                                                         "2.x / XL checkpoint (.safetensors / .ckpt) with "
                                                         "--base_config")
    p.add_argument("--base_config", default=None,
                   help="with a single-file --base_model: a local diffusers folder of the same family (its configs "
                        "and tokenizers; e.g. stable-diffusion-v1-5)")
    p.add_argument("--spm", nargs="*", default=[], help="SPM .safetensors files (kohya lora_unet_* layout)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", nargs="+")
    src.add_argument("--prompts_csv", help="CSV with a prompt column and optional evaluation_seed/sd_seed/seed, "
                                           "width/sd_image_width, height/sd_image_height, guidance/"
                                           "sd_guidance_scale, concept columns")
    p.add_argument("--templates", choices=sorted(TEMPLATES), help="each prompt is a concept name filled into these "
                                                                   "templates (object protocol: imagenet80)")
    p.add_argument("--sampler", default="ddim", choices=list(SAMPLERS),
                   help="ddim: ours (eta 0); others: diffusers schedulers from the model's scheduler config; "
                        "default: the class the config names (PNDM for SD v1.4, the official evaluation's)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--negative_prompt", default="")
    p.add_argument("--seeds", type=int, nargs="+", help="one image per prompt and seed")
    p.add_argument("--seed", type=int, default=0, help="first seed when --seeds is not given")
    p.add_argument("--images_per_prompt", type=int, default=1)
    p.add_argument("--width", type=int, default=None, help="default: the model's native size")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ft", action=argparse.BooleanOptionalAction, default=True,
                   help="Facilitated Transport (per-prompt gammas); --no-ft: fixed --spm_multiplier gammas")
    p.add_argument("--spm_multiplier", type=float, nargs="+", default=None,
                   help="fixed gammas (one, or one per SPM); implies --no-ft as in the official code")
    p.add_argument("--matching_metric", default="clipcos_tokenuni", choices=METRICS)
    p.add_argument("--facilitate_factor", type=float, default=1.0)
    p.add_argument("--composition", default="linear", choices=("linear", "official"),
                   help="linear: paper Eq. 9; official: the released code's gamma-weighted sums (gamma^2, cross "
                        "terms)")
    p.add_argument("--merge", default="auto", choices=("auto", "on", "off"),
                   help="fold the gammas into the UNet weights. auto: fixed gammas (FT off) once per run, FT gammas "
                        "per batch whose prompts share one gamma row; off: always the per-layer hooks; on: as auto, "
                        "and require fixed gammas")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="auto: float16 on CUDA, float32 otherwise")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", type=int, default=1, help="ranks (GPUs); samples are split across them")
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--logger", default="wandb", choices=("wandb", "none"))
    p.add_argument("--run_name", default=None, help="wandb run name (default: the output folder's name)")
    p.add_argument("--grid_max", type=int, default=64, help="images in grid.png (the first ones)")
    p.add_argument("--row_guidance", action=argparse.BooleanOptionalAction, default=True,
                   help="use a CSV row's guidance column (guidance / sd_guidance_scale / evaluation_guidance); "
                        "--no-row_guidance: --guidance for every row")
    p.add_argument("--protocol", default="ours", choices=("ours", "official"),
                   help="official: the released evaluate_task.py's settings for the task (tools/protocol.py: "
                        "default scheduler, 30 steps, CFG 7.5, seed 2024, its negative prompt, FT with the official "
                        "composition); options given explicitly still win")
    p.add_argument("--task", default=None, choices=TASKS,
                   help="the official evaluator for --protocol official (default: from --templates / the CSV columns)")
    args = p.parse_args(argv)
    if args.spm_multiplier:
        args.ft = False
    args.protocol_line = None
    if args.protocol == "official":
        args.protocol_line = apply_official_protocol(args, {a.dest: a.default for a in p._actions})
    for name in ("steps", "batch_size", "images_per_prompt", "devices"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    seeds = [args.seed, *(args.seeds or [])]
    if min(seeds) < 0:
        p.error(f"--seed / --seeds must be >= 0, got {seeds}")
    return args


def check_inputs(args: argparse.Namespace) -> None:
    """Fail before any model loads: missing base model folder, SPM file or CSV."""
    base = Path(args.base_model)
    if not (base.is_dir() or base.is_file()):
        raise FileNotFoundError(f"--base_model {base} does not exist (expected a diffusers model folder or a "
                                "single-file .safetensors / .ckpt checkpoint)")
    for path in args.spm:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--spm {path} does not exist (expected a .safetensors SPM file)")
    if args.prompts_csv and not Path(args.prompts_csv).is_file():
        raise FileNotFoundError(f"--prompts_csv {args.prompts_csv} does not exist")


def fixed_gammas(args: argparse.Namespace, num: int) -> list[float] | None:
    if args.ft:
        return None
    values = args.spm_multiplier or [1.0]
    if len(values) == 1:
        values = values * num
    if len(values) != num:
        raise ValueError(f"--spm_multiplier gives {len(values)} values for {num} SPMs; expected 1 or {num}")
    return list(values)


def generate(args: argparse.Namespace) -> dict:
    check_inputs(args)
    if args.protocol_line:
        print(args.protocol_line)
    world = args.devices * args.num_nodes
    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
                    strategy="ddp" if world > 1 else "auto")
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    device = fabric.device
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "auto": torch.float16 if device.type == "cuda" else torch.float32}[args.dtype]

    model = DiffusionModel.from_folder(args.base_model, torch_dtype=dtype, base_config=args.base_config,
                                       config_flag="--base_config").to(device)
    comp = SPMComposition.from_files(model.unet, args.spm, mode=args.composition).to(device) if args.spm else None
    if comp is not None:
        comp.merge_uniform = args.merge != "off"
    concepts = comp.concepts if comp is not None else []
    columns = gamma_columns(args.spm)
    fixed = fixed_gammas(args, len(args.spm)) if comp is not None else None
    merge = comp is not None and (args.merge == "on" or (args.merge == "auto" and fixed is not None))
    if merge and fixed is None:
        raise ValueError("--merge on needs fixed gammas (--no-ft or --spm_multiplier): FT gives each prompt its own")
    merged = comp.merged_weights(torch.tensor(fixed) * args.facilitate_factor) if merge else None

    native = model.unet.config.sample_size * model.latent_scale
    jobs = build_jobs(args, native, model.latent_scale)
    mine = jobs[rank::world]
    batches = make_batches(mine, args.batch_size)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    uncond = model.encode([args.negative_prompt])  # SDXL: + pooled (the time ids follow from the latent size)
    sampler = args.sampler if args.sampler == "ddim" else make_scheduler(model, args.sampler)

    bar = tqdm(total=len(batches) * args.steps, desc=f"generate (rank {rank})" if world > 1 else "generate",
               unit="step", disable=rank != 0 or None)
    rows: list[dict] = []
    start = time.perf_counter()
    for batch in batches:
        prompts = [j.prompt for j in batch]
        cond = model.encode(prompts)
        noise, gens = initial_noise(model.latent_shape(1, batch[0].height, batch[0].width), [j.seed for j in batch])
        noise = noise.to(device, dtype)
        guidance = torch.tensor([j.guidance for j in batch])
        if comp is not None:
            gammas = facilitated_gammas(model.text_encoder, model.tokenizer, prompts, concepts,
                                        metric=args.matching_metric, facilitate_factor=args.facilitate_factor,
                                        fixed=fixed, prompt_embeds=cond.text, embed=model.encode_prompts)
            ctx = contextlib.nullcontext() if merge else comp.applied(gammas)
        else:
            gammas, ctx = torch.zeros(len(batch), 0), contextlib.nullcontext()
        with ctx:
            latents = denoise(model, noise, cond, uncond, guidance, args.steps,
                              sampler if isinstance(sampler, str) else copy.deepcopy(sampler),
                              unet_params=merged, generators=gens, callback=lambda i: bar.update(1))
        images = to_uint8(model.decode(latents))
        for job, image, g in zip(batch, images, gammas.cpu().tolist(), strict=True):
            Image.fromarray(image.numpy()).save(out / job.file)
            row = {"index": job.index, "file": job.file, "prompt": job.prompt, "seed": job.seed, "width": job.width,
                   "height": job.height, "guidance": job.guidance, "concept": job.concept}
            row.update({c: f"{v:.4f}" for c, v in zip(columns, g, strict=True)})
            rows.append(row)
    bar.close()
    elapsed = time.perf_counter() - start
    part = out / f"manifest.rank{rank}.csv"
    write_manifest(part, rows, columns)
    fabric.barrier()
    if rank != 0:
        return {}
    all_rows = []
    for r in range(world):
        path = out / f"manifest.rank{r}.csv"
        with path.open(newline="", encoding="utf-8") as f:
            all_rows.extend(csv.DictReader(f))
        path.unlink()
    all_rows.sort(key=lambda row: int(row["index"]))
    write_manifest(out / "manifest.csv", all_rows, columns)
    info = {"base_model": str(args.base_model), "base_config": args.base_config, "spm": list(args.spm),
            "concepts": concepts, "gamma_columns": columns,
            "ft": args.ft, "fixed_gammas": fixed, "matching_metric": args.matching_metric,
            "facilitate_factor": args.facilitate_factor, "composition": args.composition, "merged": merge,
            "sampler": args.sampler, "steps": args.steps, "negative_prompt": args.negative_prompt,
            "protocol": args.protocol, "task": args.task, "row_guidance": args.row_guidance,
            "dtype": str(dtype).removeprefix("torch."), "world_size": world, "images": len(all_rows),
            "rank0_seconds": round(elapsed, 1), "device": str(device)}
    (out / "generate.json").write_text(json.dumps(info, indent=2))
    shown = all_rows[:args.grid_max]
    counts = set(Counter(r["prompt"] for r in shown).values())
    per_row = counts.pop() if len(counts) == 1 else None  # one grid row per prompt when the counts match
    grid = make_grid([out / row["file"] for row in shown], per_row if per_row and 1 < per_row <= 16 else None)
    grid.save(out / "grid.png")
    if comp is not None:
        print_gammas(all_rows, columns, concepts)
    print(f"wrote {len(all_rows)} images to {out / 'images'}, {out / 'manifest.csv'} and {out / 'grid.png'} "
          f"({elapsed:.1f}s on rank 0, {world} rank(s))")
    if args.logger == "wandb":
        log_to_wandb(out, grid, all_rows, list(all_rows[0].keys()), {**vars(args), **info},
                     args.run_name or out.name)
    return info


def write_manifest(path: Path, rows: list[dict], gamma_cols: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*MANIFEST_COLUMNS, *gamma_cols])
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> dict:
    """Entry point; a missing file or a bad input ends the run with its one-line message (``CV_PAPERS_DEBUG=1``:
    the traceback)."""
    logging.basicConfig(level=logging.WARNING)
    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars; ours is enough
    torch.set_float32_matmul_precision("high")
    args = parse_args(argv)
    return run_with_clear_errors(generate, args)


if __name__ == "__main__":
    main()
