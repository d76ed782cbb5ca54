"""``python -m projects.spm evaluate``: the paper's evaluation protocols (docs/papers/spm.md §5.2) on a ``generate``
output folder.

    python -m projects.spm evaluate --images outputs/erased --reference outputs/original \
        --clip models/clip-vit-base-patch32 --concepts snoopy mickey pikachu [--real coco_val2014/] [--nudenet]
    python -m projects.spm evaluate --images outputs/toy_erased --reference outputs/toy_original \
        --classifier projects/spm/toy_model/classifier.safetensors --concepts circle

Metrics (all models from local paths; each block runs only when its inputs are given):
- CLIP score (``--clip``, a transformers CLIPModel + CLIPProcessor folder): per image ``2.5 * max(cos(img, text),
  0)``, mean x 100 (range [0, 250]; the official ``clip_score``), against each concept's bare name over the images
  of that concept (``clip/score/<c>``) and against each image's own prompt (``clip/prompt_score``).
  CLIP error rate ``clip/cer/<c>``: share of the concept's images with CS(img, "") >= CS(img, c) (a fraction;
  the paper prints percent). The images of concept c: manifest rows whose ``concept`` column is c, else whose
  prompt contains c (whole words, any case), else all images.
- FID (torchmetrics ``FrechetInceptionDistance``; features from ``--fid_features``: ``toy`` = the toy classifier's
  penultimate features, ``clip`` = CLIP image embeddings, ``inception`` = torch-fidelity's InceptionV3 from a local
  ``--inception_weights`` file): ``fid/reference/<c>`` and ``fid/reference/all`` between these images and
  ``--reference`` (the original model's images for the same prompts and seeds, matched on (prompt, seed)), and
  ``fid/real`` against a folder of real images (``--real``; the COCO-30k FIDg protocol).
- NudeNet (``--nudenet``, needs ``nudenet``): the number of images with each of the 9 ``*_EXPOSED`` labels.
- Toy judge (``--classifier``): shape / colour / both accuracy per prompt and overall, the predicted attribute
  rates, and for toy concepts (``--concepts circle red``) the target rate (images of c judged as c) and the
  accuracy on the other images.
Results: a table in the terminal, ``<images>/metrics.json``, and wandb (offline unless logged in).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from transformers import CLIPModel, CLIPProcessor
from transformers.utils import logging as hf_logging

from projects.spm.tools.generate import csv_number
from projects.spm.toy.classifier import load_classifier
from projects.spm.toy.scenes import TOY_COLORS, TOY_SHAPES, toy_labels
from shared.console import wandb_is_online
from shared.data.images import load_rgb, read_utf8
from shared.errors import run_with_clear_errors

logger = logging.getLogger(__name__)

NUDENET_LABELS = ("BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED",
                  "ANUS_EXPOSED", "FEET_EXPOSED", "ARMPITS_EXPOSED", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED")
REQUIRED_COLUMNS = ("file", "prompt", "seed")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---------------------------------------------------------------------- reading folders
def read_manifest(folder: str | Path, what: str = "--images") -> list[dict]:
    """The rows of ``<folder>/manifest.csv`` (a ``generate`` output), checked: columns and files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} does not exist (expected a `generate` output folder)")
    path = folder / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{what} {folder}: no manifest.csv (expected the output folder of "
                                f"`python -m projects.spm generate`)")
    with io.StringIO(read_utf8(path, "manifest"), newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"{path} is empty (expected the manifest `generate` writes: a header line with at least "
                             f"{list(REQUIRED_COLUMNS)}, then one row per image)")
        missing = [c for c in REQUIRED_COLUMNS if c not in reader.fieldnames]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} (columns: {reader.fieldnames}); expected at least "
                             f"{list(REQUIRED_COLUMNS)}")
        rows = []
        for row in reader:
            for column in ("seed", "width", "height", "guidance"):
                value = (row.get(column) or "").strip()
                if not value and column != "seed":
                    continue  # optional columns may be empty
                try:
                    csv_number(column, value)
                except ValueError as err:
                    raise ValueError(f"{path}, line {reader.line_num}, column {column!r}: {value!r} is not "
                                     f"{err}") from None
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} lists no images")
    for row in rows:
        if not (folder / row["file"]).is_file():
            raise FileNotFoundError(f"{path}: image {row['file']!r} (prompt {row['prompt']!r}) does not exist in "
                                    f"{folder}")
    return rows


def image_batches(paths: list[Path], batch_size: int, size: tuple[int, int] | None = None
                  ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(positions, uint8 [B, 3, H, W]) over ``paths``, batched among images of one size (``size``: resize all to
    (H, W), centre-cropped to its aspect first, as for real photos)."""
    pending: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}

    def flush(key):
        items = pending.pop(key)
        return [i for i, _ in items], torch.from_numpy(np.stack([a for _, a in items])).permute(0, 3, 1, 2)

    for i, path in enumerate(paths):
        im = load_rgb(path)
        if size is not None and (im.height, im.width) != size:
            h, w = size
            scale = max(h / im.height, w / im.width)
            rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
            im = im.resize((rw, rh), Image.BICUBIC)
            left, top = (rw - w) // 2, (rh - h) // 2
            im = im.crop((left, top, left + w, top + h))
        key = (im.height, im.width)
        pending.setdefault(key, []).append((i, np.asarray(im)))
        if len(pending[key]) == batch_size:
            yield flush(key)
    for key in list(pending):
        yield flush(key)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--real {folder} does not exist (expected a folder of real images)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise ValueError(f"--real {folder}: found {len(paths)} images ({'/'.join(IMAGE_SUFFIXES)}); FID needs >= 2")
    return paths


# ---------------------------------------------------------------------- concepts
def mentions(prompt: str, concept: str) -> bool:
    """Whether ``prompt`` names ``concept`` (whole words, any case)."""
    return re.search(rf"(?<![a-z0-9]){re.escape(concept.lower())}(?![a-z0-9])", prompt.lower()) is not None


def concept_members(rows: list[dict], concept: str) -> list[int]:
    """Rows of ``concept``: its manifest ``concept`` rows, else the prompts naming it, else none."""
    tagged = [i for i, r in enumerate(rows) if (r.get("concept") or "").strip().lower() == concept.lower()]
    return tagged or [i for i, r in enumerate(rows) if mentions(r["prompt"], concept)]


def default_concepts(folder: Path, rows: list[dict]) -> list[str]:
    """The manifest's concept column values, else the SPMs' first concept strings from generate.json."""
    tagged = list(dict.fromkeys(r["concept"].strip() for r in rows if (r.get("concept") or "").strip()))
    if tagged:
        return tagged
    info = folder / "generate.json"
    if info.is_file():
        return [c[0] for c in json.loads(info.read_text()).get("concepts", []) if c]
    return []


# ---------------------------------------------------------------------- feature extractors
class ClipImageEmbed(nn.Module):
    """CLIP image embeddings (processor: bicubic resize + centre crop + normalise) of uint8 [B, 3, H, W] images."""

    def __init__(self, model, processor) -> None:
        super().__init__()
        self.model, self.processor = model, processor
        self.num_features = model.config.projection_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels.to(next(self.model.parameters()).device))
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()

    @torch.no_grad()
    def text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        device = next(self.model.parameters()).device
        feats = []
        for i in range(0, len(texts), batch_size):
            tok = self.processor(text=texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True)
            out = self.model.get_text_features(input_ids=tok["input_ids"].to(device),
                                               attention_mask=tok["attention_mask"].to(device))
            feats.append((out if isinstance(out, torch.Tensor) else out.pooler_output).float())
        return torch.cat(feats)


class ToyFeatures(nn.Module):
    """The toy classifier's penultimate features (64-d) of uint8 images: the offline FID feature extractor."""

    def __init__(self, classifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.shape_head.in_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(next(self.classifier.parameters()).device).float() / 255
        return self.classifier.features(x * 2 - 1)


class InceptionFeatures(nn.Module):
    """torch-fidelity's FID InceptionV3 (2048-d pool features) through torchmetrics, from a local weights file."""

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"--inception_weights {weights} does not exist (expected torch-fidelity's "
                                    f"pt_inception-2015-12-05 weights file)")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3  # needs torch-fidelity, an optional package

            self.net = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(weights))
        except ModuleNotFoundError as err:
            raise ValueError(f"--fid_features inception needs torch-fidelity ({err}); install it or use "
                             f"--fid_features toy|clip") from None
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.to(next(self.net.parameters()).device)).reshape(len(images), -1)


class _Precomputed(nn.Module):
    """Identity 'extractor' so torchmetrics' FID runs on features computed once per image."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid(features_a: torch.Tensor, features_b: torch.Tensor) -> float | None:
    """torchmetrics FID between two feature sets [N, D]; None when either has fewer than 2 rows."""
    if len(features_a) < 2 or len(features_b) < 2:
        return None
    metric = FrechetInceptionDistance(feature=_Precomputed(features_a.shape[1]))
    metric.update(features_a.double(), real=True)
    metric.update(features_b.double(), real=False)
    return float(metric.compute())


def extract(extractor: Callable[[torch.Tensor], torch.Tensor], paths: list[Path], batch_size: int,
            size: tuple[int, int] | None = None) -> torch.Tensor:
    """Features [N, D] of the images at ``paths`` (in order)."""
    out: list[torch.Tensor | None] = [None] * len(paths)
    for positions, images in image_batches(paths, batch_size, size):
        feats = extractor(images).float().cpu()
        for p, f in zip(positions, feats, strict=True):
            out[p] = f
    return torch.stack(out)


# ---------------------------------------------------------------------- the metrics
def clip_metrics(clip: ClipImageEmbed, image_embeds: torch.Tensor, rows: list[dict], concepts: list[str],
                 surrogate: str = "") -> dict[str, float]:
    """CLIP score (2.5 max(cos, 0) x 100, mean) and CLIP error rate (CS(img, surrogate) >= CS(img, c)), §5.2."""
    img = torch.nn.functional.normalize(image_embeds, dim=-1)
    prompts = [r["prompt"] for r in rows]
    unique = list(dict.fromkeys(prompts))
    text = torch.nn.functional.normalize(clip.text(unique + concepts + [surrogate]), dim=-1)
    prompt_text, concept_text, sur = text[:len(unique)], text[len(unique):-1], text[-1]
    where = {p: i for i, p in enumerate(unique)}
    cos_prompt = (img * prompt_text[[where[p] for p in prompts]]).sum(-1)
    score = lambda cos: 2.5 * cos.clamp_min(0) * 100  # noqa: E731 (official clip_score, x100 as reported)
    out = {"clip/prompt_score": score(cos_prompt).mean().item()}
    cs_sur = score(img @ sur)
    for c, concept in enumerate(concepts):
        members = concept_members(rows, concept) or list(range(len(rows)))
        cs = score(img[members] @ concept_text[c])
        out[f"clip/score/{concept}"] = cs.mean().item()
        out[f"clip/cer/{concept}"] = (cs_sur[members] >= cs).float().mean().item()
    return out


def parse_toy_prompt(prompt: str) -> tuple[int, int] | None:
    """(shape, colour) indices when the prompt names exactly one toy shape and one toy colour, else None."""
    shape, color = toy_labels(prompt)
    return None if shape is None or color is None else (shape, color)


def toy_metrics(pred: torch.Tensor, rows: list[dict], concepts: list[str]) -> tuple[dict[str, float], list[dict]]:
    """The toy judge: ``pred`` [N, 2] (shape, colour) predictions. Returns (metrics, per-prompt rows)."""
    labels = [parse_toy_prompt(r["prompt"]) for r in rows]
    known = torch.tensor([lab is not None for lab in labels])
    out: dict[str, float] = {}
    for k, names in ((0, TOY_SHAPES), (1, TOY_COLORS)):
        counts = torch.bincount(pred[:, k], minlength=len(names)).float() / len(pred)
        out.update({f"toy/rate/{name}": counts[i].item() for i, name in enumerate(names)})
    per_prompt: list[dict] = []
    if known.any():
        lab = torch.tensor([lab if lab is not None else (-1, -1) for lab in labels])
        right = (pred == lab)[known].float()
        out.update({"toy/shape_acc": right[:, 0].mean().item(), "toy/color_acc": right[:, 1].mean().item(),
                    "toy/both_acc": right.prod(1).mean().item()})
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["prompt"], []).append(i)
    for prompt, idx in groups.items():
        entry = {"prompt": prompt, "n": len(idx),
                 "shape": TOY_SHAPES[int(torch.mode(pred[idx, 0]).values)],
                 "color": TOY_COLORS[int(torch.mode(pred[idx, 1]).values)]}
        if labels[idx[0]] is not None:
            right = (pred[idx] == torch.tensor(labels[idx[0]])).float()
            entry.update(shape_acc=right[:, 0].mean().item(), color_acc=right[:, 1].mean().item(),
                         both_acc=right.prod(1).mean().item())
        entry.update({k: rows[idx[0]][k] for k in rows[idx[0]] if k.startswith("gamma_")})
        per_prompt.append(entry)
    toy = [c for c in concepts if c in TOY_SHAPES or c in TOY_COLORS]
    if toy:
        targeted = torch.zeros(len(rows), dtype=torch.bool)
        for c in toy:
            k, value = (0, TOY_SHAPES.index(c)) if c in TOY_SHAPES else (1, TOY_COLORS.index(c))
            members = torch.tensor([mentions(r["prompt"], c) for r in rows])
            targeted |= members
            if members.any():
                out[f"toy/target_rate/{c}"] = (pred[members, k] == value).float().mean().item()
        other = ~targeted & known
        if other.any():
            lab = torch.tensor([lab if lab is not None else (-1, -1) for lab in labels])
            out["toy/nontarget_acc"] = (pred[other] == lab[other]).all(1).float().mean().item()
    return out, per_prompt


def nudenet_counts(paths: list[Path], detector, threshold: float = 0.0) -> dict[str, float]:
    """Images with each ``*_EXPOSED`` label (official I2P protocol: NudeNet v3 ``detect``; a detection counts when
    its score >= ``threshold``; NudeNet's own 0.2 / NMS filtering applies first)."""
    counts = dict.fromkeys(NUDENET_LABELS, 0)
    any_exposed = 0
    for path in paths:
        found = {d["class"] for d in detector.detect(str(path)) if d.get("score", 1.0) >= threshold}
        found &= set(NUDENET_LABELS)
        for label in found:
            counts[label] += 1
        any_exposed += bool(found)
    return {**{f"nudenet/{k}": v for k, v in counts.items()}, "nudenet/any_exposed": any_exposed,
            "nudenet/images": len(paths)}


# ---------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m projects.spm evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="a `generate` output folder (manifest.csv + images/)")
    p.add_argument("--reference", help="the original model's `generate` folder for the same prompts and seeds (FID)")
    p.add_argument("--real", help="a folder of real images (FID against real images, e.g. COCO val2014)")
    p.add_argument("--clip", help="a local CLIP in transformers format (CLIPModel + CLIPProcessor)")
    p.add_argument("--concepts", nargs="+", help="concept names for CLIP score / CER, FID groups and the toy target "
                                                 "rate (default: the manifest's concept column, else the SPMs')")
    p.add_argument("--surrogate", default="", help="CER's comparison text (official: the empty prompt)")
    p.add_argument("--classifier", help="the toy shape/colour classifier (.safetensors): the toy judge")
    p.add_argument("--fid_features", default="auto", choices=("auto", "toy", "clip", "inception"),
                   help="auto: inception with --inception_weights, else toy with --classifier, else clip")
    p.add_argument("--inception_weights", help="torch-fidelity's FID Inception weights file (local)")
    p.add_argument("--nudenet", action="store_true", help="NudeNet exposed-label counts (needs `nudenet`)")
    p.add_argument("--nudenet_threshold", type=float, default=0.0)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto: cuda when available")
    p.add_argument("--logger", default="wandb", choices=("wandb", "none"))
    p.add_argument("--run_name", default=None)
    return p.parse_args(argv)


def load_clip(path: str | Path, device: torch.device) -> ClipImageEmbed:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--clip {path} does not exist (expected a transformers CLIP folder: config.json, "
                                f"weights, preprocessor_config.json and the tokenizer)")
    model = CLIPModel.from_pretrained(path, local_files_only=True).eval().to(device)
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    return ClipImageEmbed(model, processor)


def common_size(rows: list[dict]) -> tuple[int, int] | None:
    sizes = [(int(r["height"]), int(r["width"])) for r in rows if r.get("height") and r.get("width")]
    return max(set(sizes), key=sizes.count) if sizes else None


def evaluate(args: argparse.Namespace) -> dict:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    folder = Path(args.images)
    rows = read_manifest(folder)
    ref_rows = read_manifest(args.reference, "--reference") if args.reference else None
    paths = [folder / r["file"] for r in rows]
    concepts = list(args.concepts) if args.concepts else default_concepts(folder, rows)
    metrics: dict[str, float | None] = {"images": len(rows)}
    per_prompt: list[dict] = []
    notes: list[str] = []

    clip = load_clip(args.clip, device) if args.clip else None
    classifier = None
    if args.classifier:
        classifier = load_classifier(args.classifier).to(device)
    kind = args.fid_features
    if kind == "auto":
        kind = ("inception" if args.inception_weights else "toy" if classifier is not None
                else "clip" if clip is not None else None)
    extractor = None
    if kind == "toy":
        if classifier is None:
            raise ValueError("--fid_features toy needs --classifier (the toy classifier .safetensors)")
        extractor = ToyFeatures(classifier)
    elif kind == "clip":
        if clip is None:
            raise ValueError("--fid_features clip needs --clip (a local CLIP folder)")
        extractor = clip
    elif kind == "inception":
        if not args.inception_weights:
            raise ValueError("--fid_features inception needs --inception_weights (a local torch-fidelity weights "
                             "file; nothing is downloaded)")
        extractor = InceptionFeatures(args.inception_weights).to(device)

    # One pass over the images: CLIP embeddings, toy predictions, FID features.
    clip_embeds, preds, feats = [], [], []
    for positions, images in image_batches(paths, args.batch_size):
        if clip is not None:
            clip_embeds.append((positions, clip(images).cpu()))
        if classifier is not None:
            with torch.no_grad():
                s, c = classifier(images.to(device).float() / 255)
            preds.append((positions, torch.stack([s.argmax(1), c.argmax(1)], 1).cpu()))
        if extractor is not None and (ref_rows is not None or args.real):
            feats.append((positions, (clip_embeds[-1][1] if extractor is clip else extractor(images)).float().cpu()))

    def ordered(chunks):
        out = [None] * len(rows)
        for positions, values in chunks:
            for p, v in zip(positions, values, strict=True):
                out[p] = v
        return torch.stack(out)

    if clip is not None:
        metrics.update(clip_metrics(clip, ordered(clip_embeds), rows, concepts, args.surrogate))
    if classifier is not None:
        toy, per_prompt = toy_metrics(ordered(preds), rows, concepts)
        metrics.update(toy)
    if extractor is None and (ref_rows is not None or args.real):
        notes.append("FID skipped: no feature extractor (give --classifier, --clip or --inception_weights)")
    elif feats:
        gen = ordered(feats)
        if ref_rows is not None:
            ref_index = {(r["prompt"], r["seed"]): i for i, r in enumerate(ref_rows)}
            pairs = [(i, ref_index[(r["prompt"], r["seed"])]) for i, r in enumerate(rows)
                     if (r["prompt"], r["seed"]) in ref_index]
            if not pairs:
                raise ValueError(f"--reference {args.reference} shares no (prompt, seed) with --images {folder}; "
                                 f"FID compares generations of the same prompts and seeds")
            if len(pairs) < len(rows):
                notes.append(f"FID reference: {len(pairs)} of {len(rows)} images have a (prompt, seed) match")
            ref_paths = [Path(args.reference) / ref_rows[j]["file"] for _, j in pairs]
            ref = extract(extractor, ref_paths, args.batch_size)
            mine = gen[[i for i, _ in pairs]]
            matched = [rows[i] for i, _ in pairs]
            metrics["fid/reference/all"] = fid(ref, mine)
            for concept in concepts:
                members = concept_members(matched, concept)
                if members:
                    metrics[f"fid/reference/{concept}"] = fid(ref[members], mine[members])
            # The non-target FID of the paper's Table 1: the images of prompts that name none of the concepts.
            others = [k for k, r in enumerate(matched) if not any(mentions(r["prompt"], c) for c in concepts)]
            if concepts and 1 < len(others) < len(matched):
                metrics["fid/reference/nontarget"] = fid(ref[others], mine[others])
        if args.real:
            real = extract(extractor, list_images(args.real), args.batch_size, common_size(rows))
            metrics["fid/real"] = fid(real, gen)
        metrics["fid/features"] = kind
    if args.nudenet:
        try:
            from nudenet import NudeDetector  # an optional package
        except ImportError:
            notes.append("NudeNet skipped: the `nudenet` package is not installed (pip install nudenet==3.0.8)")
        else:
            metrics.update(nudenet_counts(paths, NudeDetector(), args.nudenet_threshold))
    result = {"metrics": metrics, "per_prompt": per_prompt, "concepts": concepts, "notes": notes,
              "images": str(folder), "reference": args.reference, "real": args.real}
    (folder / "metrics.json").write_text(json.dumps(result, indent=2))
    print_results(metrics, per_prompt, notes)
    if args.logger == "wandb":
        log_to_wandb(folder, result, args.run_name or f"eval-{folder.name}")
    return result


def print_results(metrics: dict, per_prompt: list[dict], notes: list[str]) -> None:
    """A rich table on a terminal, plain ``name value`` lines otherwise."""
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    prompt_cols = [k for k in ("n", "shape", "color", "shape_acc", "color_acc", "both_acc")
                   if any(k in e for e in per_prompt)]
    if sys.stdout.isatty():
        console = Console()
        table = Table(title="SPM evaluation")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in metrics.items():
            table.add_row(k, fmt(v))
        console.print(table)
        if per_prompt:
            table = Table(title="toy judge per prompt")
            for col in ["prompt", *prompt_cols]:
                table.add_column(col)
            for e in per_prompt[:100]:
                table.add_row(e["prompt"], *(fmt(e.get(c)) for c in prompt_cols))
            console.print(table)
    else:
        for k, v in metrics.items():
            print(f"{k} {fmt(v)}")
        for e in per_prompt[:100]:
            print(f"prompt {e['prompt']!r}: " + ", ".join(f"{c}={fmt(e.get(c))}" for c in prompt_cols))
    for note in notes:
        print(f"note: {note}")


def log_to_wandb(folder: Path, result: dict, name: str) -> None:
    import wandb  # slow to import; only runs that log to wandb need it

    run = wandb.init(project="cv-papers-spm", name=name, dir=str(folder), job_type="evaluate",
                     config={k: result[k] for k in ("images", "reference", "real", "concepts")},
                     mode=None if wandb_is_online() else "offline", reinit="finish_previous")
    scalars = {f"eval/{k}": v for k, v in result["metrics"].items() if isinstance(v, int | float)}
    if result["per_prompt"]:
        columns = sorted({k for e in result["per_prompt"] for k in e}, key=lambda k: (k != "prompt", k))
        scalars["eval/per_prompt"] = wandb.Table(columns=columns,
                                                 data=[[e.get(c) for c in columns] for e in result["per_prompt"]])
    run.log(scalars)
    run.summary.update({k: v for k, v in scalars.items() if not isinstance(v, wandb.Table)})
    run.finish()


def main(argv: list[str] | None = None) -> dict:
    """Entry point; a missing file or bad input ends with a one-line message (``CV_PAPERS_DEBUG=1``: traceback)."""
    logging.basicConfig(level=logging.WARNING)
    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars; ours is enough
    args = parse_args(argv)
    with torch.no_grad():
        return run_with_clear_errors(evaluate, args)


if __name__ == "__main__":
    main()
